#include "agent/swarm/swarm_helper.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>

extern char** environ;

namespace byoi {

namespace {
constexpr const char* kInstalledHelper = "/usr/lib/byoi-agent/byoi-swarm";
}

Result<std::string> SwarmHelperPath() {
  std::vector<std::string> tried;
  if (const char* env = std::getenv("BYOI_SWARM_HELPER"); env != nullptr && *env != '\0') {
    if (::access(env, X_OK) == 0) return std::string(env);
    tried.push_back(env);
  }
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    std::string next = (self.parent_path() / "byoi-swarm").string();
    if (::access(next.c_str(), X_OK) == 0) return next;
    tried.push_back(next);
  }
  if (::access(kInstalledHelper, X_OK) == 0) return std::string(kInstalledHelper);
  tried.push_back(kInstalledHelper);
  std::string where;
  for (const std::string& t : tried) where += (where.empty() ? "" : ", ") + t;
  return Status::Error(Code::kNotFound,
                       "the swarm helper byoi-swarm is not installed (tried " + where + ")");
}

HelperProcess::~HelperProcess() { Stop(); }

int HelperProcess::Stop() {
  in.Reset();
  if (pid <= 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  pid = -1;
  out.Reset();
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Status StartHelper(const std::vector<std::string>& argv, const std::vector<int>& fds,
                   HelperProcess& process) {
  int in[2];
  int out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return Status::FromErrno("pipe for the swarm helper", errno);
  UniqueFd in_read(in[0]);
  process.in = UniqueFd(in[1]);
  if (::pipe2(out, O_CLOEXEC) != 0) return Status::FromErrno("pipe for the swarm helper", errno);
  process.out = UniqueFd(out[0]);
  UniqueFd out_write(out[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_read.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 1);
  // dup2 onto 3, 4, …: the copies are not close-on-exec. A source already at its place would
  // keep its flag, so every source is first copied out of the way (above 3 + fds.size()).
  std::vector<UniqueFd> moved;
  for (int fd : fds) {
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3 + static_cast<int>(fds.size()));
    if (copy < 0) {
      posix_spawn_file_actions_destroy(&actions);
      return Status::FromErrno("duplicating a descriptor for the swarm helper", errno);
    }
    moved.emplace_back(copy);
  }
  for (size_t i = 0; i < moved.size(); ++i) {
    posix_spawn_file_actions_adddup2(&actions, moved[i].get(), 3 + static_cast<int>(i));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return Status::FromErrno("starting " + argv[0], rc);
  process.pid = pid;
  return Status::Ok();
}

}  // namespace byoi
