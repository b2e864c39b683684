// Cancellation and progress: the two things every long-running stage takes from the runner.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "agent/base/status.hpp"

namespace byoi {

// Set by DELETE /v1/bringYourOwnImage (or a signal); long loops poll it at safe points, at least
// every 100 ms of work, so a job stops within 2 s.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  // Status::Ok() or a kCancelled error with the catalogue message.
  Status Check() const;

 private:
  std::atomic<bool> cancelled_{false};
};

// Called by a stage as work advances: bytes done of bytes total (0 when unknown). Must be cheap;
// the status model rate-limits what it publishes.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

inline constexpr const char* kCancelledMessage = "Deployment cancelled.";

}  // namespace byoi
