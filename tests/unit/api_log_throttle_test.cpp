// LogThrottle: one line per period, counting what it held back.
#include <gtest/gtest.h>

#include <vector>

#include "agent/api/log_throttle.hpp"

namespace byoi {
namespace {

using namespace std::chrono_literals;

TEST(LogThrottleTest, FirstEventIsReportedThenOneLinePerPeriodWithTheCount) {
  LogThrottle throttle(10s);
  LogThrottle::Clock::time_point t0{};
  std::vector<uint64_t> lines;
  // 1000 events over 25 s, one every 25 ms.
  for (int i = 0; i < 1000; ++i) {
    if (uint64_t n = throttle.Record(t0 + i * 25ms)) lines.push_back(n);
  }
  // Lines at 0 s, 10 s and 20 s: the first alone, then the 399 held back plus the one that
  // reports them. Every event is counted once.
  EXPECT_EQ(lines, (std::vector<uint64_t>{1, 400, 400}));
  // The 199 events after the last line are reported with the next one, however late it comes.
  EXPECT_EQ(throttle.Record(t0 + 1h), 200u);
  EXPECT_EQ(throttle.Record(t0 + 1h + 1s), 0u);
}

}  // namespace
}  // namespace byoi
