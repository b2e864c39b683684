// Joining runs of zeros into as few zeroing requests as the cap allows, whatever order the pieces
// come in (the writers' tests prove it on devices: tests/integration/*writer_test.cpp).
#include <gtest/gtest.h>

#include <vector>

#include "agent/disk/zero_runs.hpp"

namespace byoi {
namespace {

using Requests = std::vector<ZeroRuns::Request>;

TEST(ZeroRunsTest, PiecesThatTouchBecomeOneRequest) {
  ZeroRuns runs(4, 100);
  EXPECT_EQ(runs.Add(10, 20), Requests{});
  EXPECT_EQ(runs.Add(30, 40), Requests{});
  EXPECT_EQ(runs.Add(20, 30), Requests{});  // joins both neighbours
  EXPECT_EQ(runs.Add(0, 10), Requests{});   // before the run
  EXPECT_EQ(runs.Add(60, 70), Requests{});
  EXPECT_EQ(runs.TakeAll(), (Requests{{0, 40}, {60, 10}}));
  EXPECT_EQ(runs.TakeAll(), Requests{});
}

TEST(ZeroRunsTest, WholeRequestsLeaveAsSoonAsARunHoldsThem) {
  ZeroRuns runs(4, 100);
  EXPECT_EQ(runs.Add(0, 60), Requests{});
  EXPECT_EQ(runs.Add(60, 130), (Requests{{0, 100}}));  // the rest goes on growing
  EXPECT_EQ(runs.Add(130, 450), (Requests{{100, 100}, {200, 100}, {300, 100}}));
  EXPECT_EQ(runs.Add(450, 460), Requests{});
  EXPECT_EQ(runs.TakeAll(), (Requests{{400, 60}}));
}

TEST(ZeroRunsTest, TheLowestRunLeavesWholeWhenTooManyWait) {
  ZeroRuns runs(2, 100);
  EXPECT_EQ(runs.Add(50, 60), Requests{});
  EXPECT_EQ(runs.Add(10, 20), Requests{});
  EXPECT_EQ(runs.Add(90, 95), (Requests{{10, 10}}));
  EXPECT_EQ(runs.Add(30, 40), (Requests{{30, 10}}));  // itself the lowest
  EXPECT_EQ(runs.TakeAll(), (Requests{{50, 10}, {90, 5}}));
}

TEST(ZeroRunsTest, OnePendingRunIsAStreamOfPiecesInOrder) {
  ZeroRuns runs(1, 100);
  EXPECT_EQ(runs.Add(0, 40), Requests{});
  EXPECT_EQ(runs.Add(40, 80), Requests{});
  EXPECT_EQ(runs.Add(90, 95), (Requests{{0, 80}}));  // a gap: what was gathered leaves
  EXPECT_EQ(runs.Add(95, 95), Requests{});           // empty
  EXPECT_EQ(runs.TakeAll(), (Requests{{90, 5}}));
}

}  // namespace
}  // namespace byoi
