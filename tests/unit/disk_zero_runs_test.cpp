// Joining runs of zeros into as few zeroing requests as the cap allows, whatever order the pieces
// come in (the writers' tests prove it on devices: tests/integration/*writer_test.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <initializer_list>
#include <utility>
#include <vector>

#include "agent/disk/zero_runs.hpp"

namespace byoi {
namespace {

using Requests = std::vector<ZeroRuns::Request>;
using Holes = std::vector<std::pair<size_t, size_t>>;

// 10-byte blocks; `data` lists the blocks holding a non-zero byte (its last, so a block's first
// byte does not decide).
std::vector<uint8_t> Blocks(size_t blocks, std::initializer_list<size_t> data, size_t tail = 0) {
  std::vector<uint8_t> bytes(blocks * 10 + tail);
  for (size_t b : data) bytes[std::min(bytes.size(), b * 10 + 10) - 1] = 7;
  return bytes;
}

TEST(FindHolesTest, RunsOfZeroBlocksLongEnoughAreHoles) {
  // Zero blocks 1-3 (30 bytes: a hole), 5 (10: too short), 7-9 (to the end).
  EXPECT_EQ(FindHoles(Blocks(10, {0, 4, 6}), 10, 30), (Holes{{10, 40}, {70, 100}}));
  EXPECT_EQ(FindHoles(Blocks(10, {0, 4, 6}), 10, 40), Holes{});
  // A partial last block joins the hole before it; a run at the start is a hole too.
  EXPECT_EQ(FindHoles(Blocks(6, {3}, 5), 10, 20), (Holes{{0, 30}, {40, 65}}));
  // A zero byte run inside a block does not count: blocks are all zeros or data.
  EXPECT_EQ(FindHoles(Blocks(4, {0, 1, 2, 3}), 10, 10), Holes{});
}

TEST(FindHolesTest, ABufferOfZerosIsOneHoleWhateverItsLength) {
  EXPECT_EQ(FindHoles(std::vector<uint8_t>(25), 10, 1000), (Holes{{0, 25}}));
  EXPECT_EQ(FindHoles(std::vector<uint8_t>(), 10, 1000), Holes{});
  EXPECT_EQ(FindHoles(Blocks(3, {2}), 10, 1000), Holes{});
}

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
