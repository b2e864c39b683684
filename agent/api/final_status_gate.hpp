// The last report before a reboot, for a daemon driven only through its HTTP API (docs/api.md):
// with no backend to push the final status to, the client that posted the job learns the outcome
// only by reading it with GET — and the agent reboots milliseconds after `done`. The gate holds
// the job's thread at `done`, before the reboot, until a GET has served that final status or
// `wait` has passed. (With a backend, the poller plays this part: docs/backend.md.)
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "agent/job/job_control.hpp"

namespace byoi {

class FinalStatusGate {
 public:
  explicit FinalStatusGate(std::chrono::milliseconds wait) : wait_(wait) {}

  // A JobControl listener. A job seen `doing` arms the gate; its change to `done` then blocks
  // until Served() or `wait`. A job restored from the state file (never doing here) passes.
  void OnEvent(const JobEvent& event);
  // GET /v1/bringYourOwnImage answered with a status that is no longer doing. Thread-safe.
  void Served();

 private:
  const std::chrono::milliseconds wait_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;   // a job of this process is running
  bool served_ = false;  // its final status has been read
};

}  // namespace byoi
