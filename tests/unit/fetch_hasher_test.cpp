#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/fetch/hasher.hpp"

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

TEST_P(StreamHasherTest, PublishedInPiecesEqualsOneShot) {
  const bool threaded = GetParam();
  std::vector<uint8_t> data = Pattern(9 << 20);  // more than one 4 MiB chunk of the thread
  const HashAlgo algos[] = {HashAlgo::kSha256, HashAlgo::kMd5};
  auto s = StreamHasher::Create(algos, threaded);
  ASSERT_TRUE(s.ok());
  for (size_t end = 0; end < data.size(); end += 777777) (*s)->Publish(data.data(), end);
  (*s)->Publish(data.data(), data.size());
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok());
  ASSERT_EQ(digests->size(), 2u);
  EXPECT_EQ((*digests)[0].algo, HashAlgo::kSha256);
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha256, data));
  EXPECT_EQ((*digests)[1].hex, OneShot(HashAlgo::kMd5, data));
}

TEST_P(StreamHasherTest, RewindStartsOverWithoutOldBytes) {
  const bool threaded = GetParam();
  std::vector<uint8_t> first = Pattern(6 << 20);
  std::vector<uint8_t> second(first.rbegin(), first.rend());
  const HashAlgo algos[] = {HashAlgo::kSha512};
  auto s = StreamHasher::Create(algos, threaded);
  ASSERT_TRUE(s.ok());
  (*s)->Publish(first.data(), first.size());
  (*s)->Rewind();  // the thread may be in the middle of `first`
  (*s)->Publish(second.data(), second.size() / 2);
  (*s)->Publish(second.data(), second.size());
  auto digests = (*s)->Finish();
  ASSERT_TRUE(digests.ok());
  EXPECT_EQ((*digests)[0].hex, OneShot(HashAlgo::kSha512, second));
}

TEST_P(StreamHasherTest, NothingPublishedIsTheEmptyDigest) {
  const HashAlgo algos[] = {HashAlgo::kSha1};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Finish()->at(0).hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
}

TEST_P(StreamHasherTest, FewBytesAreHashedByFinishAgainAfterRewind) {
  // Far fewer bytes than wake the thread: Finish must still hash them, in both rounds.
  std::vector<uint8_t> data = Pattern(1000);
  const HashAlgo algos[] = {HashAlgo::kSha1};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  for (size_t end = 10; end <= 500; end += 10) (*s)->Publish(data.data(), end);
  auto first = (*s)->Finish();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->at(0).hex, OneShot(HashAlgo::kSha1, std::span(data).first(500)));
  (*s)->Rewind();
  (*s)->Publish(data.data(), 999);
  auto second = (*s)->Finish();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->at(0).hex, OneShot(HashAlgo::kSha1, std::span(data).first(999)));
}

TEST_P(StreamHasherTest, DestroyedWhileBytesArePendingDoesNotHang) {
  std::vector<uint8_t> data = Pattern(32 << 20);
  const HashAlgo algos[] = {HashAlgo::kSha256};
  auto s = StreamHasher::Create(algos, GetParam());
  ASSERT_TRUE(s.ok());
  (*s)->Publish(data.data(), data.size());
  s->reset();  // joins the thread; `data` outlives it
}

INSTANTIATE_TEST_SUITE_P(InlineAndThreaded, StreamHasherTest, ::testing::Bool());

}  // namespace
}  // namespace byoi
