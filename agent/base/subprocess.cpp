#include "agent/base/subprocess.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "agent/base/fd.hpp"

namespace byoi {
namespace {

constexpr size_t kMiB = 1 << 20;

}  // namespace

Status RunProgram(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  std::string* captured) {
  if (argv.empty()) return Status::Error(Code::kInternal, "RunProgram: empty argv");
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno("creating a pipe", errno);
  UniqueFd read_end(pipefd[0]), write_end(pipefd[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  // posix_spawnp searches the PATH of *our* environment; the rescue system's is what we want.
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  write_end.Reset();
  if (rc != 0) return Status::FromErrno("running " + argv[0], rc);

  std::string output;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output.size() < kMiB) output.append(buf, std::min<size_t>(n, kMiB - output.size()));
  }
  if (captured) *captured = output;
  if (output.size() > 4096) output.resize(4096);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::FromErrno("waiting for " + argv[0], errno);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
  std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                      : fmt::format("signal {}", WTERMSIG(status));
  return Status::Error(Code::kIo, fmt::format("{} failed ({}): {}", argv[0], how, output));
}

}  // namespace byoi
