// Human-readable sizes, rates and durations, and the size parser behind --memory-limit.
#include <gtest/gtest.h>

#include "agent/base/units.hpp"

namespace byoi {
namespace {

TEST(Units, HumanBytes) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(512 * kKiB), "512 KiB");
  EXPECT_EQ(HumanBytes(kMiB), "1.0 MiB");
  EXPECT_EQ(HumanBytes(2254857830), "2.1 GiB");
  EXPECT_EQ(HumanBytes(20 * kGiB), "20 GiB");
}

TEST(Units, HumanRateAndDuration) {
  EXPECT_EQ(HumanRate(0), "0 B/s");
  EXPECT_EQ(HumanRate(500), "500 B/s");
  EXPECT_EQ(HumanRate(113e6), "113 MB/s");
  EXPECT_EQ(HumanRate(2.7e9), "2.70 GB/s");
  EXPECT_EQ(HumanDuration(19), "19 s");
  EXPECT_EQ(HumanDuration(185), "3 min 05 s");
  EXPECT_EQ(HumanDuration(3720), "1 h 02 min");
  EXPECT_EQ(HumanDuration(-1), "?");
}

TEST(Units, ParseSize) {
  EXPECT_EQ(ParseSize("1234"), 1234u);
  EXPECT_EQ(ParseSize("64M"), 64 * kMiB);
  EXPECT_EQ(ParseSize("20G"), 20 * kGiB);
  EXPECT_EQ(ParseSize("20g"), 20 * kGiB);
  EXPECT_EQ(ParseSize("1.5GiB"), 3 * kGiB / 2);
  EXPECT_EQ(ParseSize("512k"), 512 * kKiB);
  EXPECT_EQ(ParseSize("2MB"), 2 * kMiB);
  EXPECT_EQ(ParseSize("1T"), 1024 * kGiB);
  for (const char* bad : {"", "G", "-1", "-1G", "1X", "1 G", " 1", "nan", "inf", "1e30", "0x10"}) {
    EXPECT_FALSE(ParseSize(bad)) << bad;
  }
}

}  // namespace
}  // namespace byoi
