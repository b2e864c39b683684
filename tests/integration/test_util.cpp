#include "tests/integration/test_util.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "agent/base/fd.hpp"

extern char** environ;

namespace byoi::testing {

std::string Run(std::vector<std::string> argv) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_addclose(&actions, pipefd[0]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, n);
  ::close(pipefd[0]);
  if (rc != 0) return {};
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {};
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(&v[i], &x, std::min<size_t>(8, n - i));
  }
  return v;
}

std::vector<uint8_t> ReadRange(const std::string& path, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> v(length);
  auto fd = OpenFile(path, O_RDONLY);
  EXPECT_TRUE(fd.ok()) << path;
  if (fd.ok()) {
    Status s = PreadAll(fd->get(), v, offset);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return v;
}

LoopDevice::LoopDevice(const std::string& file, uint32_t sector_size) {
  std::vector<std::string> argv = {"losetup", "-f", "--show"};
  if (sector_size != 512) argv.insert(argv.end(), {"-b", std::to_string(sector_size)});
  argv.push_back(file);
  // Another test may take the free device between -f and the attach: try again.
  for (int i = 0; i < 5 && path_.empty(); ++i) path_ = Run(argv);
  EXPECT_FALSE(path_.empty()) << "losetup " << file;
}

LoopDevice::~LoopDevice() {
  if (!path_.empty()) Run({"losetup", "-d", path_});
}

}  // namespace byoi::testing
