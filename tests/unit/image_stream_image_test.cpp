// Stream mode's image readers on images built byte by byte: the qcow2 stream reader's needs
// bookkeeping (runs merged, bytes that wait for their table, the budget), any split of the input
// giving the same disk, the refusals only stream mode makes, and StreamImage's head callback.
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "agent/base/messages.hpp"
#include "agent/image/qcow2_stream.hpp"
#include "agent/image/stream_image.hpp"
#include "tests/unit/be_bytes.hpp"
#include "tests/unit/memory_sink.hpp"

namespace byoi {
namespace {

using testing::MemorySink;

constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kCs = 512;                    // cluster size of the built images
constexpr uint64_t kCoverage = kCs * (kCs / 8);  // 32 KiB of disk per L2 table

// A version 3 image of 512-byte clusters whose file layout the test chooses: cluster 0 holds the
// header, then clusters are appended in the order the test calls Add*.
class Layout {
 public:
  explicit Layout(uint64_t size) : size_(size), l1_entries_((size + kCoverage - 1) / kCoverage) {
    bytes.assign(kCs, 0);
    Put32(bytes, 0, 0x514649fb);
    Put32(bytes, 4, 3);
    Put32(bytes, 20, 9);
    Put64(bytes, 24, size);
    Put32(bytes, 36, static_cast<uint32_t>(l1_entries_));
    Put32(bytes, 56, 1);  // one refcount table cluster (never read)
    Put32(bytes, 96, 4);
    Put32(bytes, 100, 104);
    expected.assign(size, 0);
  }
  uint64_t AddL1() {
    l1_ = Append(std::vector<uint8_t>(kCs, 0));
    Put64(bytes, 40, l1_);
    return l1_;
  }
  // An L2 table for L1 index `i` (its entries filled by MapData).
  uint64_t AddL2(uint64_t i) {
    const uint64_t at = Append(std::vector<uint8_t>(kCs, 0));
    Put64(bytes, l1_ + 8 * i, at | kCopied);
    return at;
  }
  // A data cluster of `fill` mapped at virtual cluster `v` through the L2 table at `l2`.
  uint64_t AddData(uint64_t l2, uint64_t v, uint8_t fill) {
    const uint64_t at = Append(std::vector<uint8_t>(kCs, fill));
    MapData(l2, v, at);
    std::fill_n(expected.begin() + v * kCs, kCs, fill);
    return at;
  }
  // Virtual cluster `v` as random bytes, deflated into two sectors (cluster_bits 9: at most two);
  // returns where they are. MapCompressed maps it.
  uint64_t AppendCompressed(uint64_t v, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> cluster(kCs), packed(2 * kCs, 0);
    for (auto& b : cluster) b = static_cast<uint8_t>(rng());
    libdeflate_compressor* c = libdeflate_alloc_compressor(6);
    const size_t n = libdeflate_deflate_compress(c, cluster.data(), kCs, packed.data(), 2 * kCs);
    libdeflate_free_compressor(c);
    EXPECT_GT(n, kCs);
    std::copy(cluster.begin(), cluster.end(), expected.begin() + v * kCs);
    return Append(packed);
  }
  void MapCompressed(uint64_t l2, uint64_t v, uint64_t host) {
    Put64(bytes, l2 + 8 * (v % (kCs / 8)), host | (1ull << 62) | (1ull << 61));
  }
  void MapData(uint64_t l2, uint64_t v, uint64_t host) {
    Put64(bytes, l2 + 8 * (v % (kCs / 8)), host | kCopied);
  }
  uint64_t Append(const std::vector<uint8_t>& cluster) {
    const uint64_t at = bytes.size();
    bytes.insert(bytes.end(), cluster.begin(), cluster.end());
    return at;
  }

  std::vector<uint8_t> bytes;
  std::vector<uint8_t> expected;

 private:
  uint64_t size_;
  uint64_t l1_entries_;
  uint64_t l1_ = 0;
};

struct Outcome {
  Status status;
  uint64_t peak = 0;
  Qcow2Info info;
};

// Feeds `image` to a reader in pieces of the sizes `split` gives, with or without its total.
template <typename Split>
Outcome Feed(const std::vector<uint8_t>& image, MemorySink& sink, Split split, bool total = true,
             uint64_t budget = 64 << 20, int* header_calls = nullptr) {
  Qcow2StreamOptions options;
  options.memory_budget = budget;
  options.threads = 2;
  Qcow2StreamReader reader(sink, options, [&](const Qcow2Info&) {
    if (header_calls) ++*header_calls;
    return sink.calls == 0 ? Status::Ok() : Status::Error(Code::kInternal, "sink used first");
  });
  Outcome out;
  out.status = reader.Start(total ? std::optional<uint64_t>(image.size()) : std::nullopt);
  for (size_t at = 0; out.status.ok() && at < image.size();) {
    const size_t n = std::min<size_t>(split(), image.size() - at);
    out.status = reader.Write({image.data() + at, n});
    at += n;
  }
  if (out.status.ok()) {
    auto size = reader.Finish();
    out.status = size.ok() ? Status::Ok() : size.status();
  }
  out.peak = reader.memory_peak();
  out.info = reader.info();
  return out;
}

Outcome RunWhole(const std::vector<uint8_t>& image, MemorySink& sink, uint64_t budget = 64 << 20) {
  return Feed(
      image, sink, [&] { return image.size(); }, true, budget);
}

TEST(Qcow2StreamReader, ContiguousClustersMakeOneNeedPerRun) {
  // 64 data clusters mapped in order to 64 consecutive host clusters after their table.
  Layout l(64 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  for (uint64_t v = 0; v < 64; ++v) l.AddData(l2, v, static_cast<uint8_t>(v + 1));
  MemorySink sink(64 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_EQ(sink.disk, l.expected);
  EXPECT_TRUE(sink.Complete());
  EXPECT_EQ(o.info.data_bytes, 64 * kCs);
  EXPECT_EQ(o.info.l2_tables, 1u);
  // The first cluster (held, then waiting until every table is seen), the L1 entries and their
  // sorted copy, one L2 table, one need: nothing per cluster (64 needs would be 6 KiB).
  EXPECT_LE(o.peak, 3 * kCs + 8 + 16 + 4 * Qcow2StreamReader::kNodeCost);
}

TEST(Qcow2StreamReader, ScatteredClustersCostOneNeedEach) {
  // The same disk with its clusters stored in reverse: no two needs merge.
  Layout l(64 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  for (uint64_t v = 64; v-- > 0;) l.AddData(l2, v, static_cast<uint8_t>(v + 1));
  MemorySink sink(64 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_EQ(sink.disk, l.expected);
  EXPECT_GE(o.peak, 64 * Qcow2StreamReader::kNodeCost);
  EXPECT_LT(o.peak, 64 * Qcow2StreamReader::kNodeCost + 4 * kCs);
}

// Data clusters, then the L2 table that maps them (the L1 first): the data waits in memory.
Layout DataBeforeTable(uint64_t clusters) {
  Layout l(clusters * kCs);
  l.AddL1();
  std::vector<uint64_t> hosts;
  std::vector<uint8_t> cluster(kCs);
  for (uint64_t v = 0; v < clusters; ++v) {
    std::fill(cluster.begin(), cluster.end(), static_cast<uint8_t>(0x30 + v));
    hosts.push_back(l.Append(cluster));
    std::fill_n(l.expected.begin() + v * kCs, kCs, static_cast<uint8_t>(0x30 + v));
  }
  const uint64_t l2 = l.AddL2(0);
  for (uint64_t v = 0; v < clusters; ++v) l.MapData(l2, v, hosts[v]);
  return l;
}

TEST(Qcow2StreamReader, BytesWaitForTheirTableAndCountAgainstTheBudget) {
  Layout l = DataBeforeTable(32);
  MemorySink sink(32 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_EQ(sink.disk, l.expected);
  EXPECT_GE(o.peak, 32 * kCs);  // the 32 clusters waited

  MemorySink small(32 * kCs);
  o = RunWhole(l.bytes, small, 8 * kCs);
  EXPECT_EQ(o.status.code(), Code::kTooBig);
  EXPECT_EQ(o.status.message(), msg::TooBigForMemory("qcow2"));
  EXPECT_NE(o.status.detail().find("memory budget of 4096 bytes"), std::string::npos);
}

TEST(Qcow2StreamReader, AnySplitOfTheInputGivesTheSameDisk) {
  Layout a = DataBeforeTable(40);
  Layout b(100 * kCoverage / 2);  // several L2 tables, some L1 entries 0
  b.AddL1();
  for (uint64_t i : {2, 0, 1}) {
    const uint64_t l2 = b.AddL2(i);
    for (uint64_t v = i * 64 + 3; v < i * 64 + 60; v += 7) {
      b.AddData(l2, v, static_cast<uint8_t>(v));
    }
  }
  std::mt19937 rng(7);
  for (const Layout* l : {&a, &b}) {
    for (int round = 0; round < 20; ++round) {
      MemorySink sink(l->expected.size());
      const size_t max = round == 0 ? 1 : 1 + rng() % 3000;
      Outcome o = Feed(
          l->bytes, sink, [&] { return 1 + rng() % max; }, round % 2 == 0);
      ASSERT_TRUE(o.status.ok()) << o.status.ToString();
      ASSERT_EQ(sink.disk, l->expected) << "round " << round;
      ASSERT_TRUE(sink.Complete());
    }
  }
}

TEST(Qcow2StreamReader, HostClusterMappedTwiceIsRefused) {
  Layout l(4 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  const uint64_t host = l.AddData(l2, 0, 1);
  l.MapData(l2, 2, host);
  MemorySink sink(4 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  EXPECT_EQ(o.status.code(), Code::kInvalid);
  EXPECT_NE(o.status.detail().find("mapped twice"), std::string::npos) << o.status.detail();
}

TEST(Qcow2StreamReader, CompressedClusterMappedTwiceAfterItsTableFillsBoth) {
  // Both mappings wait for the same bytes, which feed both as they pass.
  Layout l(4 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  const uint64_t host = l.AppendCompressed(0, 7);
  l.MapCompressed(l2, 0, host);
  l.MapCompressed(l2, 2, host);
  std::copy_n(l.expected.begin(), kCs, l.expected.begin() + 2 * kCs);
  MemorySink sink(4 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_EQ(sink.disk, l.expected);
}

TEST(Qcow2StreamReader, CompressedClustersBeforeTheirTableInflate) {
  // Streams, then the table: their bytes wait, the disk is the same for any split.
  Layout l(4 * kCs);
  l.AddL1();
  const uint64_t a = l.AppendCompressed(3, 1), b = l.AppendCompressed(1, 2);
  const uint64_t l2 = l.AddL2(0);
  l.MapCompressed(l2, 3, a);
  l.MapCompressed(l2, 1, b);
  for (size_t piece : {100, 512, 4096}) {
    MemorySink sink(4 * kCs);
    Outcome o = Feed(
        l.bytes, sink, [&] { return piece; }, true);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
    EXPECT_EQ(sink.disk, l.expected) << "pieces of " << piece;
    EXPECT_EQ(o.info.compressed_bytes, 2 * kCs);
  }
}

TEST(Qcow2StreamReader, CompressedClusterMappedTwiceBeforeItsTableIsRefused) {
  // The bytes pass before any table maps them: the first mapping takes them.
  Layout l(4 * kCs);
  l.AddL1();
  const uint64_t host = l.AppendCompressed(0, 7);
  const uint64_t l2 = l.AddL2(0);
  l.MapCompressed(l2, 0, host);
  l.MapCompressed(l2, 2, host);
  MemorySink sink(4 * kCs);
  Outcome o = RunWhole(l.bytes, sink);
  EXPECT_EQ(o.status.code(), Code::kInvalid);
  EXPECT_EQ(o.status.detail(),
            fmt::format("the compressed cluster at virtual 0x400 maps to {:#x}, whose bytes were "
                        "already used by another mapping",
                        host));
}

TEST(Qcow2StreamReader, TruncatedDataIsRefusedWithTheRamReadersWords) {
  Layout l(4 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  l.AddData(l2, 0, 1);
  const uint64_t host = l.AddData(l2, 3, 2);
  l.bytes.resize(host + 100);
  const std::string want = fmt::format(
      "image is truncated: the cluster at virtual 0x600 maps to {:#x}, past the end "
      "of the file ({} bytes)",
      host, host + 100);
  for (bool total : {true, false}) {
    MemorySink sink(4 * kCs);
    Outcome o = Feed(
        l.bytes, sink, [] { return 256; }, total);
    EXPECT_EQ(o.status.code(), Code::kInvalid);
    EXPECT_EQ(o.status.detail(), want) << "total known: " << total;
  }
}

TEST(Qcow2StreamReader, HeaderRefusalsComeBeforeTheCallbackAndTheSink) {
  Layout l(4 * kCs);
  l.AddL1();
  Put32(l.bytes, 32, 1);  // AES
  MemorySink sink(4 * kCs);
  int calls = 0;
  Outcome o = Feed(
      l.bytes, sink, [] { return 100; }, true, 64 << 20, &calls);
  EXPECT_EQ(o.status.code(), Code::kUnsupported);
  EXPECT_EQ(o.status.detail(), "image is encrypted (AES)");
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(sink.calls, 0);
}

TEST(StreamImage, HeadCallbackSeesTheQcow2HeaderBeforeTheSink) {
  Layout l(64 * kCs);
  l.AddL1();
  const uint64_t l2 = l.AddL2(0);
  l.AddData(l2, 5, 9);
  MemorySink sink(64 * kCs);
  StreamHead seen;
  int calls = 0;
  StreamImage image(sink, {}, [&](const StreamHead& head) {
    ++calls;
    seen = head;
    EXPECT_EQ(sink.calls, 0);
    return Status::Ok();
  });
  ASSERT_TRUE(image.Start(l.bytes.size()).ok());
  ASSERT_TRUE(image.Write(l.bytes).ok());
  auto size = image.Finish();
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, 64 * kCs);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen.format.format, ImageFormat::kQcow2);
  EXPECT_EQ(seen.container, Compressor::kNone);
  EXPECT_EQ(seen.virtual_size, 64 * kCs);
  ASSERT_TRUE(seen.qcow2.has_value());
  EXPECT_EQ(seen.qcow2->cluster_size, kCs);
  EXPECT_EQ(sink.disk, l.expected);
}

TEST(StreamImage, HeadCallbackErrorStopsItUnchanged) {
  std::vector<uint8_t> raw(10000, 7);
  MemorySink sink(10240);
  StreamImage image(sink, {}, [](const StreamHead&) {
    return Status::Error(Code::kTooBig, "too big", "the message");
  });
  ASSERT_TRUE(image.Start(raw.size()).ok());
  Status s = image.Write(raw);
  if (s.ok()) s = image.Finish().status();
  EXPECT_EQ(s.code(), Code::kTooBig);
  EXPECT_EQ(s.message(), "the message");
  EXPECT_EQ(sink.calls, 0);
  EXPECT_EQ(image.Write(raw).message(), "the message");  // and stays stopped
}

TEST(StreamImage, RawSizeIsKnownFromStartUnlessCompressed) {
  std::vector<uint8_t> raw(200000);
  std::iota(raw.begin(), raw.end(), 0);
  std::vector<uint8_t> zst(ZSTD_compressBound(raw.size()));
  zst.resize(ZSTD_compress(zst.data(), zst.size(), raw.data(), raw.size(), 3));
  for (bool compressed : {false, true}) {
    const std::vector<uint8_t>& file = compressed ? zst : raw;
    MemorySink sink(200192);  // rounded up to whole sectors
    StreamHead seen;
    StreamImage image(sink, {}, [&](const StreamHead& head) {
      seen = head;
      return Status::Ok();
    });
    ASSERT_TRUE(image.Start(file.size()).ok());
    for (size_t at = 0; at < file.size(); at += 999) {
      ASSERT_TRUE(image.Write({file.data() + at, std::min<size_t>(999, file.size() - at)}).ok());
    }
    auto size = image.Finish();
    ASSERT_TRUE(size.ok()) << size.status().ToString();
    EXPECT_EQ(*size, 200192u);
    EXPECT_EQ(seen.container, compressed ? Compressor::kZstd : Compressor::kNone);
    EXPECT_EQ(seen.virtual_size, compressed ? std::nullopt : std::optional<uint64_t>(200192));
    EXPECT_TRUE(std::equal(raw.begin(), raw.end(), sink.disk.begin()));
    EXPECT_TRUE(std::all_of(sink.disk.begin() + raw.size(), sink.disk.end(),
                            [](uint8_t b) { return b == 0; }));
    EXPECT_TRUE(sink.Complete());
  }
}

TEST(StreamImage, TruncatedCompressedFileIsRefused) {
  std::vector<uint8_t> raw(300000, 5);
  std::vector<uint8_t> zst(ZSTD_compressBound(raw.size()));
  zst.resize(ZSTD_compress(zst.data(), zst.size(), raw.data(), raw.size(), 3));
  zst.resize(zst.size() - 3);
  MemorySink sink(300032);
  StreamImage image(sink, {}, nullptr);
  ASSERT_TRUE(image.Start(zst.size()).ok());
  Status s = image.Write(zst);
  if (s.ok()) s = image.Finish().status();
  EXPECT_EQ(s.code(), Code::kInvalid) << s.ToString();
}

}  // namespace
}  // namespace byoi
