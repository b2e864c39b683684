// The stores of pieces (piece_store.hpp). The stream's ring: the sink gets the prefix in order and
// the hasher every byte, while the download goes on; no room is reused before the hasher has read
// it, nor before a borrower of the lent bytes gave them back. The RAM store: every byte lands at
// its offset and is hashed once, in order, whether it came through a block, straight into the image
// while the hasher was behind, or in a piece ahead.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <future>
#include <string>
#include <vector>

#include "agent/fetch/piece_store.hpp"
#include "tests/unit/random_bytes.hpp"

namespace byoi {
namespace {

constexpr uint64_t kMiB = 1 << 20;

struct RecordingSink : ByteSink {
  Status Start(std::optional<uint64_t> total) override {
    started_with = total;
    return Status::Ok();
  }
  Status Write(std::span<const uint8_t> bytes) override {
    got.insert(got.end(), bytes.begin(), bytes.end());
    return Status::Ok();
  }
  std::optional<uint64_t> started_with;
  std::vector<uint8_t> got;
};

std::string Sha256(std::span<const uint8_t> data) {
  auto h = Hasher::Create(HashAlgo::kSha256);
  h->Update(data);
  return *h->FinalHex();
}

// The download's use of the ring: as much as RoomAt allows, in pieces of `piece` bytes, the
// prefix advanced after each, a flush when the window is full.
TEST(RingStore, RoomIsReusedOnlyOnceTheHasherReadIt) {
  const std::vector<uint8_t> body = RandomBytes(64 * kMiB, 11);
  const uint64_t window = 2 * kMiB;  // two blocks: a block the hasher has not read is near
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto hasher = StreamHasher::Create(algos, /*threaded=*/true);
  ASSERT_TRUE(hasher.ok());
  RecordingSink sink;
  auto store = RingStore::Create(window, sink, **hasher, nullptr);
  ASSERT_TRUE(store.ok());
  RingStore& ring = **store;
  uint64_t pos = 0;
  uint64_t limit = ring.limit();
  while (pos < body.size()) {
    uint64_t room = ring.RoomAt(pos);
    if (room == 0) {
      ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/true).ok());
      room = ring.RoomAt(pos);
      ASSERT_EQ(room, window);  // flushed: every byte given and hashed
    }
    const uint64_t n = std::min<uint64_t>({room, 300'000, body.size() - pos});
    ASSERT_TRUE(ring.Write(pos, std::span(body).subspan(pos, n)).ok());
    pos += n;
    ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/false).ok());
    // The room never shrinks and never passes what was given to the sink.
    EXPECT_GE(ring.limit(), limit);
    limit = ring.limit();
    EXPECT_LE(limit, ring.taken() + window);
  }
  ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/true).ok());
  EXPECT_EQ(sink.started_with, body.size());
  EXPECT_TRUE(sink.got == body);
  auto digests = (*hasher)->Finish();
  ASSERT_TRUE(digests.ok());
  EXPECT_EQ((*digests)[0].hex, Sha256(body));
}

// A stage after the sink that keeps the lent bytes (the stream writer writing them to the disk):
// takes a loan on each block it is given, and gives the oldest back (after checking that its bytes
// are still the body's) once it holds more than `keep`.
struct BorrowingSink : ByteSink {
  BorrowingSink(Loans& loans, const std::vector<uint8_t>& body, size_t keep)
      : loans(loans), body(body), keep(keep) {}
  Status Start(std::optional<uint64_t>) override { return Status::Ok(); }
  Status Write(std::span<const uint8_t> bytes) override {
    EXPECT_TRUE(loans.Lends(bytes.data(), bytes.size()));
    held.push_back({loans.Borrow(), bytes, given});
    given += bytes.size();
    while (held.size() > keep) GiveBackOldest();
    return Status::Ok();
  }
  void GiveBackOldest() {
    const Held h = held.front();
    held.pop_front();
    EXPECT_TRUE(std::equal(h.bytes.begin(), h.bytes.end(), body.begin() + h.offset))
        << "the ring reused the room of bytes still lent, at " << h.offset;
    loans.Return(h.id);
  }
  struct Held {
    uint64_t id;
    std::span<const uint8_t> bytes;
    uint64_t offset;
  };
  Loans& loans;
  const std::vector<uint8_t>& body;
  const size_t keep;
  std::deque<Held> held;
  uint64_t given = 0;
};

TEST(RingStore, RoomIsReusedOnlyOnceEveryBorrowerGaveItBack) {
  const std::vector<uint8_t> body = RandomBytes(48 * kMiB, 13);
  const uint64_t window = 8 * kMiB;
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto hasher = StreamHasher::Create(algos, /*threaded=*/true);
  ASSERT_TRUE(hasher.ok());
  Loans loans;
  BorrowingSink sink(loans, body, 3);
  auto store = RingStore::Create(window, sink, **hasher, &loans);
  ASSERT_TRUE(store.ok());
  RingStore& ring = **store;
  uint64_t pos = 0;
  while (pos < body.size()) {
    if (ring.RoomAt(pos) == 0) {
      ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/true).ok());
    }
    const uint64_t n = std::min<uint64_t>({ring.RoomAt(pos), 300'000, body.size() - pos});
    ASSERT_GT(n, 0u);
    ASSERT_TRUE(ring.Write(pos, std::span(body).subspan(pos, n)).ok());
    pos += n;
    ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/false).ok());
    // The blocks still held are not free: the room ends a window after the oldest of them, at
    // the latest.
    if (!sink.held.empty()) {
      EXPECT_LE(ring.limit(), sink.held.front().offset + window);
    }
  }
  ASSERT_TRUE(ring.Advance(pos, body.size(), /*flush=*/true).ok());
  EXPECT_EQ(sink.given, body.size());
  while (!sink.held.empty()) sink.GiveBackOldest();
  EXPECT_EQ(ring.limit(), body.size() + window);
}

// A full window whose oldest block is still lent: the flush waits for that block, and only that
// block, to come back.
TEST(RingStore, AFullWindowWaitsForTheOldestLoan) {
  const std::vector<uint8_t> body = RandomBytes(4 * kMiB, 14);
  const uint64_t window = 4 * kMiB;
  auto hasher = StreamHasher::Create({}, /*threaded=*/true);
  ASSERT_TRUE(hasher.ok());
  Loans loans;
  BorrowingSink sink(loans, body, 100);  // keeps every block
  auto store = RingStore::Create(window, sink, **hasher, &loans);
  ASSERT_TRUE(store.ok());
  RingStore& ring = **store;
  ASSERT_TRUE(ring.Write(0, body).ok());
  ASSERT_TRUE(ring.Advance(body.size(), body.size(), /*flush=*/false).ok());
  ASSERT_EQ(sink.held.size(), 4u);
  EXPECT_EQ(ring.RoomAt(body.size()), 0u);
  std::future<Status> flushed = std::async(
      std::launch::async, [&] { return ring.Advance(body.size(), body.size(), /*flush=*/true); });
  EXPECT_EQ(flushed.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
      << "the flush did not wait for the lent block";
  sink.GiveBackOldest();
  ASSERT_TRUE(flushed.get().ok());
  EXPECT_EQ(ring.RoomAt(body.size()), kMiB);  // the three blocks still lent stay taken
  while (!sink.held.empty()) sink.GiveBackOldest();
}

// Four connections' use of the RAM store: the first unfinished piece extends the prefix while the
// pieces after it arrive ahead; each time the first one ends, the prefix jumps over the pieces
// that arrived whole (the hasher reads those from the image) and the next one goes on at once,
// often while the hasher is still behind.
TEST(RamStore, EveryByteLandsAndIsHashedOnceInOrderWhateverTheHasherLags) {
  const std::vector<uint8_t> body = RandomBytes(96 * kMiB, 12);
  const uint64_t piece = 8 * kMiB;
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto hasher = StreamHasher::Create(algos, /*threaded=*/true);
  ASSERT_TRUE(hasher.ok());
  auto image = ImageBuffer::Create(body.size());
  ASSERT_TRUE(image.ok());
  {
    RamStore store(*image, **hasher);
    for (uint64_t round = 0; round < body.size(); round += 4 * piece) {
      // The three pieces ahead first, whole; then the first one, in uneven slices, the prefix
      // advanced after each.
      for (uint64_t ahead = round + piece; ahead < round + 4 * piece; ahead += piece) {
        ASSERT_TRUE(store.Write(ahead, std::span(body).subspan(ahead, piece)).ok());
      }
      for (uint64_t pos = round; pos < round + piece;) {
        const uint64_t n = std::min<uint64_t>(77'777, round + piece - pos);
        ASSERT_TRUE(store.Write(pos, std::span(body).subspan(pos, n)).ok());
        pos += n;
        ASSERT_TRUE(store.Advance(pos, body.size(), /*flush=*/false).ok());
      }
      ASSERT_TRUE(store.Advance(round + 4 * piece, body.size(), /*flush=*/false).ok());
    }
    ASSERT_TRUE(store.Advance(body.size(), body.size(), /*flush=*/true).ok());
    EXPECT_EQ(store.taken(), body.size());
  }
  ASSERT_EQ(image->size(), body.size());
  EXPECT_TRUE(std::equal(body.begin(), body.end(), image->data()));
  auto digests = (*hasher)->Finish();
  ASSERT_TRUE(digests.ok());
  EXPECT_EQ((*digests)[0].hex, Sha256(body));
}

}  // namespace
}  // namespace byoi
