// PiecePlan and PieceSize (agent/fetch/piece_plan.hpp): which bytes the connections of a download
// ask for, and the prefix that may be hashed and handed on.
#include <gtest/gtest.h>

#include "agent/fetch/piece_plan.hpp"

namespace byoi {
namespace {

constexpr uint64_t kMiB = 1 << 20;
using Clock = PiecePlan::Clock;

TEST(PieceSize, Table) {
  struct Case {
    uint64_t rest;
    int connections;
    uint64_t window;
    uint64_t size;
  } cases[] = {
      {2048 * kMiB, 1, 0, 2048 * kMiB},  // one connection: one request for the rest
      {0, 1, 0, 1},
      {2048 * kMiB, 4, 0, 64 * kMiB},           // 4 per connection would be 128 MiB: capped
      {512 * kMiB, 4, 0, 32 * kMiB},            // 4 per connection
      {20 * kMiB, 4, 0, 4 * kMiB},              // at least 4 MiB
      {2048 * kMiB, 4, 64 * kMiB, 8 * kMiB},    // window / (2 × 4)
      {2048 * kMiB, 16, 64 * kMiB, 2 * kMiB},   // window / (2 × 16)
      {2048 * kMiB, 16, 8 * kMiB, 1 * kMiB},    // at least 1 MiB
      {2048 * kMiB, 1, 8 * kMiB, 2048 * kMiB},  // one connection is always at the front
  };
  for (const Case& c : cases) {
    EXPECT_EQ(PieceSize(c.rest, c.connections, c.window), c.size)
        << c.rest << " " << c.connections << " " << c.window;
  }
}

TEST(PiecePlan, FirstPieceAloneUntilTheLengthIsKnown) {
  PiecePlan plan;
  plan.Reset(4 * kMiB);
  const auto now = Clock::now();
  Piece* first = plan.Take(now, ~uint64_t{0});
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->start, 0u);
  EXPECT_EQ(first->end, 4 * kMiB);
  EXPECT_EQ(plan.Take(now, ~uint64_t{0}), nullptr);  // nothing more before the length

  plan.SetTotal(10 * kMiB, 4 * kMiB);
  Piece* second = plan.Take(now, ~uint64_t{0});
  Piece* third = plan.Take(now, ~uint64_t{0});
  ASSERT_NE(second, nullptr);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(second->start, 4 * kMiB);
  EXPECT_EQ(second->end, 8 * kMiB);
  EXPECT_EQ(third->start, 8 * kMiB);
  EXPECT_EQ(third->end, 10 * kMiB);  // cut at the length
  EXPECT_EQ(plan.Take(now, ~uint64_t{0}), nullptr);
  EXPECT_EQ(plan.prefix(), 0u);

  // Later pieces arrive first: the prefix waits for the first.
  plan.Received(*third, 2 * kMiB);
  EXPECT_TRUE(plan.Release(*third));
  plan.Received(*second, kMiB);
  EXPECT_EQ(plan.prefix(), 0u);
  EXPECT_EQ(plan.received(), 3 * kMiB);
  EXPECT_TRUE(plan.IsFirst(*first));
  EXPECT_FALSE(plan.IsFirst(*second));
  plan.Received(*first, 4 * kMiB);
  EXPECT_TRUE(plan.Release(*first));
  EXPECT_TRUE(plan.IsFirst(*second));
  EXPECT_EQ(plan.prefix(), 5 * kMiB);
  EXPECT_FALSE(plan.complete());
  plan.Received(*second, 3 * kMiB);
  EXPECT_TRUE(plan.Release(*second));
  EXPECT_EQ(plan.prefix(), 10 * kMiB);
  EXPECT_TRUE(plan.complete());
}

TEST(PiecePlan, SmallImageIsTheFirstPieceOnly) {
  PiecePlan plan;
  plan.Reset(4 * kMiB);
  Piece* first = plan.Take(Clock::now(), ~uint64_t{0});
  plan.SetTotal(3 * kMiB, 4 * kMiB);
  EXPECT_EQ(first->end, 3 * kMiB);
  EXPECT_EQ(plan.Take(Clock::now(), ~uint64_t{0}), nullptr);
  plan.Received(*first, 3 * kMiB);
  EXPECT_TRUE(plan.Release(*first));
  EXPECT_TRUE(plan.complete());
}

TEST(PiecePlan, FailedPieceWaitsForItsBackOffThenComesFirst) {
  PiecePlan plan;
  plan.Reset(kMiB);
  const auto now = Clock::now();
  Piece* first = plan.Take(now, ~uint64_t{0});
  plan.SetTotal(5 * kMiB, kMiB);
  plan.Received(*first, 1000);
  first->not_before = now + std::chrono::seconds(1);
  EXPECT_FALSE(plan.Release(*first));  // not complete: kept, with its bytes
  EXPECT_EQ(plan.NextWake(), now + std::chrono::seconds(1));
  Piece* second = plan.Take(now, ~uint64_t{0});
  EXPECT_EQ(second->start, kMiB);  // the failed one waits
  Piece* again = plan.Take(now + std::chrono::seconds(1), ~uint64_t{0});
  EXPECT_EQ(again, first);  // back first, from where it stopped
  EXPECT_EQ(again->pos, 1000u);
  EXPECT_TRUE(again->active);
}

TEST(PiecePlan, NewPiecesStayWithinTheLimit) {
  PiecePlan plan;
  plan.Reset(kMiB);
  const auto now = Clock::now();
  Piece* first = plan.Take(now, 3 * kMiB);
  plan.SetTotal(10 * kMiB, kMiB);
  EXPECT_NE(plan.Take(now, 3 * kMiB), nullptr);  // [1, 2)
  EXPECT_NE(plan.Take(now, 3 * kMiB), nullptr);  // [2, 3)
  EXPECT_EQ(plan.Take(now, 3 * kMiB), nullptr);  // [3, 4) would pass the limit
  plan.Received(*first, kMiB);
  plan.Release(*first);
  EXPECT_NE(plan.Take(now, 4 * kMiB), nullptr);
}

TEST(PiecePlan, WholeBodyOfUnknownLength) {
  PiecePlan plan;
  plan.Reset(4 * kMiB);
  Piece* p = plan.Take(Clock::now(), ~uint64_t{0});
  plan.ExtendToEnd(*p);  // a 200 to the first request
  EXPECT_EQ(p->end, kUnbounded);
  plan.Received(*p, 5 * kMiB);
  EXPECT_EQ(plan.prefix(), 5 * kMiB);
  plan.StartOver(*p);  // a 200 to its resume
  EXPECT_EQ(plan.received(), 0u);
  EXPECT_EQ(p->high_water, 5 * kMiB);
  plan.Received(*p, 7 * kMiB);
  plan.SetTotal(7 * kMiB, 1);  // the connection closed: that was all
  EXPECT_TRUE(plan.Release(*p));
  EXPECT_TRUE(plan.complete());
  EXPECT_EQ(plan.prefix(), 7 * kMiB);
}

TEST(PiecePlan, EmptyBody) {
  PiecePlan plan;
  plan.Reset(kUnbounded);
  Piece* p = plan.Take(Clock::now(), ~uint64_t{0});
  plan.SetTotal(0, 1);
  EXPECT_TRUE(plan.Release(*p));
  EXPECT_TRUE(plan.complete());
  EXPECT_EQ(plan.prefix(), 0u);
}

}  // namespace
}  // namespace byoi
