#include "agent/api/log_throttle.hpp"

namespace byoi {

uint64_t LogThrottle::Record(Clock::time_point now) {
  std::lock_guard lock(mu_);
  if (reported_ && now - last_line_ < period_) {
    ++held_;
    return 0;
  }
  reported_ = true;
  last_line_ = now;
  uint64_t n = held_ + 1;
  held_ = 0;
  return n;
}

}  // namespace byoi
