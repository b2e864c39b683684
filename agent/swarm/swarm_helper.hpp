// The BitTorrent peer program, byoi-swarm (main.cpp), seen from the agent: where it
// is and how it is started. libtorrent lives in that program only (it says why).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/base/status.hpp"

namespace byoi {

// The helper's path: $BYOI_SWARM_HELPER when set, else byoi-swarm next to the running program,
// else /usr/lib/byoi-agent/byoi-swarm. kNotFound (naming the places tried) when none exists.
Result<std::string> SwarmHelperPath();

// A running helper: its pid, the write end of its stdin, the read end of its stdout. Its stderr
// is ours. The destructor closes stdin (the helper's signal to stop), then waits for it.
struct HelperProcess {
  HelperProcess() = default;
  HelperProcess(HelperProcess&&) = delete;
  ~HelperProcess();
  // Closes stdin and waits for the exit; returns the exit status (-1 if killed or not started).
  int Stop();

  pid_t pid = -1;
  UniqueFd in;
  UniqueFd out;
};

// Starts `argv` (argv[0] an absolute path) with `fds` as its descriptors 3, 4, … in that order
// (borrowed: they stay ours). kIo when it cannot be started.
Status StartHelper(const std::vector<std::string>& argv, const std::vector<int>& fds,
                   HelperProcess& process);

}  // namespace byoi
