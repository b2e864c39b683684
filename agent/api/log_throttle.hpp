// At most one log line per period for events an attacker can repeat at will (connections refused
// at the limits, failed logins), so that a flood neither fills the log nor scrolls the serial
// console, while the line still says how many there were.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

namespace byoi {

class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;

  explicit LogThrottle(Clock::duration period) : period_(period) {}

  // Records one event at `now`. Returns how many events the caller reports in one line now: this
  // one plus those held back since the last line; 0 when this one is held back (the next line
  // counts it). The first event, and the first one a whole period after the last line, are
  // reported. Thread-safe.
  uint64_t Record(Clock::time_point now = Clock::now());

 private:
  const Clock::duration period_;
  std::mutex mu_;
  bool reported_ = false;  // a line was reported, at last_line_
  Clock::time_point last_line_;
  uint64_t held_ = 0;
};

}  // namespace byoi
