#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "agent/fetch/hasher.hpp"
#include "agent/image/image_buffer.hpp"

namespace byoi {
namespace {

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

struct Vector {
  HashAlgo algo;
  const char* abc_hex;  // digest of "abc" (FIPS 180-2 / RFC 1321 test vectors)
};

constexpr Vector kAbc[] = {
    {HashAlgo::kMd5, "900150983cd24fb0d6963f7d28e17f72"},
    {HashAlgo::kSha1, "a9993e364706816aba3e25717850c26c9cd0d89d"},
    {HashAlgo::kSha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {HashAlgo::kSha512,
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3"
     "feebbd454d4423643ce80e2a9ac94fa54ca49f"},
};

TEST(Hasher, KnownVectorsForEveryAlgorithm) {
  for (const Vector& v : kAbc) {
    auto h = Hasher::Create(v.algo);
    ASSERT_TRUE(h.ok()) << HashAlgoName(v.algo);
    h->Update(Bytes("a"));
    h->Update(Bytes(""));
    h->Update(Bytes("bc"));
    auto hex = h->FinalHex();
    ASSERT_TRUE(hex.ok());
    EXPECT_EQ(*hex, v.abc_hex) << HashAlgoName(v.algo);
    EXPECT_EQ(hex->size(), HashHexLength(v.algo));
  }
}

TEST(Hasher, ResetForgetsEarlierBytes) {
  auto h = Hasher::Create(HashAlgo::kSha256);
  ASSERT_TRUE(h.ok());
  h->Update(Bytes("garbage"));
  h->Reset();
  h->Update(Bytes("abc"));
  EXPECT_EQ(*h->FinalHex(), kAbc[2].abc_hex);
  // FinalHex leaves a fresh context: the empty string's digest next.
  EXPECT_EQ(*h->FinalHex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  uint32_t x = 12345;
  for (auto& b : v) {
    x = x * 1103515245 + 12345;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

std::string OneShot(HashAlgo algo, std::span<const uint8_t> data) {
  auto h = Hasher::Create(algo);
  h->Update(data);
  return *h->FinalHex();
}

class StreamHasherTest : public ::testing::TestWithParam<bool> {};

TEST_P(StreamHasherTest, SpansInPiecesEqualOneShot) {
  const bool threaded = GetParam();
  // Pieces both smaller and larger than what is handed to the thread, in odd sizes.
  std::vector<uint8_t> data = Pattern(9 << 20);
  const HashAlgo algos[] = {HashAlgo::kSha256, HashAlgo::kMd5};
  auto s = StreamHasher::Create(algos, threaded);
  ASSERT_TRUE(s.ok());
  size_t pos = 0;
  for (size_t piece : {size_t{1}, size_t{4095}, size_t{70000}, size_t{1} << 20, size_t{777777}}) {
    for (int i = 0; i < 3; ++i) {
      (*s)->Update(std::span(data).subspan(pos, piece));
      (*s)->Wait();
      pos += piece;
    }
  }
  (*s)->Update(std::span(data).subspan(pos));
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok());
  ASSERT_EQ(digests->size(), 2u);
  EXPECT_EQ((*digests)[0].algo, HashAlgo::kSha256);
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha256, data));
  EXPECT_EQ((*digests)[1].hex, OneShot(HashAlgo::kMd5, data));
}

TEST_P(StreamHasherTest, QueuedSpansMayBeReusedOnceTheirTicketIsDone) {
  // What the download does: a ring of blocks, each refilled once its ticket is done.
  std::vector<uint8_t> data = Pattern(6 << 20);
  const size_t block = 1 << 20;
  std::vector<std::vector<uint8_t>> blocks;
  for (size_t pos = 0; pos < data.size(); pos += block) {
    blocks.emplace_back(data.begin() + pos, data.begin() + pos + block);
  }
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  std::vector<uint64_t> tickets;
  for (const auto& b : blocks) tickets.push_back((*s)->Update(b));
  (*s)->WaitFor(tickets[2]);
  for (size_t i = 0; i <= 2; ++i) std::fill(blocks[i].begin(), blocks[i].end(), 0xee);
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok());
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha256, data));
}

TEST_P(StreamHasherTest, FileRangesAndSpansHashInTheOrderGiven) {
  // What the download does: bytes hashed where they arrived, and bytes stored in the image's
  // memfd before the hasher reached them, read back from it; ranges larger and smaller than the
  // hasher's read buffer, one ending inside it.
  std::vector<uint8_t> data = Pattern((5 << 20) + 12345);
  auto image = ImageBuffer::Create(data.size());
  ASSERT_TRUE(image.ok());
  ASSERT_TRUE(image->Append(data).ok());
  const int fd = image->fd();
  const HashAlgo algos[] = {HashAlgo::kSha256, HashAlgo::kSha1};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  (*s)->Update(std::span(data).subspan(0, 100));
  (*s)->UpdateFromFile(fd, 100, (3 << 20) + 7);
  (*s)->Update(std::span(data).subspan((3 << 20) + 107, 1 << 20));
  (*s)->UpdateFromFile(fd, (4 << 20) + 107, 10);
  (*s)->UpdateFromFile(fd, (4 << 20) + 117, data.size() - (4 << 20) - 117);
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok()) << digests.status().ToString();
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha256, data));
  EXPECT_EQ((*digests)[1].hex, OneShot(HashAlgo::kSha1, data));
}

TEST_P(StreamHasherTest, AFileRangeThatCannotBeReadFailsTheFinish) {
  std::vector<uint8_t> data = Pattern(1 << 20);
  auto image = ImageBuffer::Create(data.size());
  ASSERT_TRUE(image.ok());
  ASSERT_TRUE(image->Append(data).ok());
  const int fd = image->fd();
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  // Past the file's end: a read of 0 bytes, as a truncated image buffer would give.
  (*s)->UpdateFromFile(fd, 512 << 10, 1 << 20);
  auto digests = (*s)->Finish();
  ASSERT_FALSE(digests.ok());
  EXPECT_EQ(digests.status().code(), Code::kIo);
  EXPECT_NE(digests.status().detail().find(
                "reading the image to hash it: reading at offset 1048576: unexpected end of file"),
            std::string::npos)
      << digests.status().ToString();
  // The next round starts clean.
  (*s)->Update(data);
  auto again = (*s)->Finish();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].hex, OneShot(HashAlgo::kSha256, data));
}

TEST_P(StreamHasherTest, ResetStartsOverWithoutOldBytes) {
  const bool threaded = GetParam();
  std::vector<uint8_t> first = Pattern(6 << 20);
  std::vector<uint8_t> second(first.rbegin(), first.rend());
  const HashAlgo algos[] = {HashAlgo::kSha512};
  auto s = StreamHasher::Create(algos, threaded);
  ASSERT_TRUE(s.ok());
  (*s)->Update(first);
  (*s)->Reset();  // the thread may be in the middle of `first`
  (*s)->Update(std::span(second).first(second.size() / 2));
  (*s)->Wait();
  (*s)->Update(std::span(second).subspan(second.size() / 2));
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok());
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha512, second));
}

TEST_P(StreamHasherTest, NothingGivenIsTheEmptyDigest) {
  const HashAlgo algos[] = {HashAlgo::kSha1};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Finish()->at(0).hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
}

TEST_P(StreamHasherTest, FinishStartsOver) {
  std::vector<uint8_t> data = Pattern(3 << 20);
  const HashAlgo algos[] = {HashAlgo::kSha1};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  (*s)->Update(data);
  auto first = (*s)->Finish();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->at(0).hex, OneShot(HashAlgo::kSha1, data));
  (*s)->Update(std::span(data).first(999));
  auto second = (*s)->Finish();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->at(0).hex, OneShot(HashAlgo::kSha1, std::span(data).first(999)));
}

TEST_P(StreamHasherTest, DestroyedWhileASpanIsPendingDoesNotHang) {
  std::vector<uint8_t> data = Pattern(32 << 20);
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  (*s)->Update(data);
  s->reset();  // waits for the span and joins the thread; `data` outlives it
}

INSTANTIATE_TEST_SUITE_P(InlineAndThreaded, StreamHasherTest, ::testing::Bool());

}  // namespace
}  // namespace byoi
