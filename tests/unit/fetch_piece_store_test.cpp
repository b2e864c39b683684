// The stores of pieces (piece_store.hpp). The stream's ring: the sink gets the prefix in order and
// the hasher every byte, while the download goes on; no room is reused before the hasher has read
// it. The RAM store: every byte lands at its offset and is hashed once, in order, whether it came
// through a block, straight into the image while the hasher was behind, or in a piece ahead.
#include <gtest/gtest.h>

#include <algorithm>
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
  auto store = RingStore::Create(window, sink, **hasher);
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
