// The qcow2 reader and the virtual reader on images built byte by byte: every refusal, every kind
// of L2 entry, extents, and the exact-one-cluster rule of compressed clusters.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "agent/image/open_image.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/raw_source.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"
#include "tests/unit/be_bytes.hpp"

namespace byoi {
namespace {

constexpr uint64_t kCopied = 1ull << 63;

// Cluster 0: header; cluster 1: L1; clusters 2..: L2 tables; then data clusters.
class Builder {
 public:
  Builder(uint32_t version, uint32_t cluster_bits, uint64_t size, bool extended = false)
      : cs_(1ull << cluster_bits), extended_(extended) {
    uint64_t entry = extended ? 16 : 8;
    coverage_ = cs_ * (cs_ / entry);
    l1_entries_ = (size + coverage_ - 1) / coverage_;
    bytes.assign(cs_ * (2 + l1_entries_), 0);
    Put32(bytes, 0, 0x514649fb);
    Put32(bytes, 4, version);
    Put32(bytes, 20, cluster_bits);
    Put64(bytes, 24, size);
    Put32(bytes, 36, static_cast<uint32_t>(l1_entries_));
    Put64(bytes, 40, cs_);
    Put64(bytes, 48, 0);  // the refcount table: never read, but qemu wants one cluster of it
    Put32(bytes, 56, 1);
    if (version == 3) {
      Put64(bytes, 72, extended ? 16 : 0);
      Put32(bytes, 96, 4);
      Put32(bytes, 100, 104);
    }
    for (uint64_t i = 0; i < l1_entries_; ++i) Put64(bytes, cs_ + 8 * i, (cs_ * (2 + i)) | kCopied);
  }

  // Appends one cluster of `fill` bytes; returns its host offset.
  uint64_t AddCluster(uint8_t fill) {
    uint64_t at = bytes.size();
    bytes.resize(at + cs_, fill);
    return at;
  }
  // Appends raw bytes (compressed streams); returns their offset.
  uint64_t AddBytes(const std::vector<uint8_t>& b) {
    uint64_t at = bytes.size();
    bytes.insert(bytes.end(), b.begin(), b.end());
    return at;
  }
  void SetL2(uint64_t vcluster, uint64_t entry, uint64_t bitmap = 0) {
    uint64_t per = coverage_ / cs_;
    uint64_t table = cs_ * (2 + vcluster / per);
    uint64_t size = extended_ ? 16 : 8;
    Put64(bytes, table + size * (vcluster % per), entry);
    if (extended_) Put64(bytes, table + size * (vcluster % per) + 8, bitmap);
  }
  uint64_t l1_offset() const { return cs_; }
  uint64_t cs() const { return cs_; }

  std::vector<uint8_t> bytes;

 private:
  uint64_t cs_;
  bool extended_;
  uint64_t coverage_ = 0;
  uint64_t l1_entries_ = 0;
};

std::vector<uint8_t> ReadVirtual(const ImageLayout& layout) {
  std::vector<uint8_t> out(layout.virtual_size());
  VirtualReader r(layout);
  EXPECT_TRUE(r.Read(0, out).ok());
  return out;
}

// The extents of [offset, offset + length), as ForEachExtent visits them.
std::vector<Extent> Extents(const ImageLayout& layout, uint64_t offset, uint64_t length) {
  std::vector<Extent> v;
  Status s = layout.ForEachExtent(offset, length, [&](const Extent& e) {
    v.push_back(e);
    return Status::Ok();
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return v;
}
std::vector<Extent> Extents(const ImageLayout& layout) {
  return Extents(layout, 0, layout.virtual_size());
}

void ExpectCovers(const ImageLayout& layout) {
  uint64_t pos = 0;
  for (const auto& e : Extents(layout)) {
    EXPECT_EQ(e.offset, pos);
    EXPECT_GT(e.length, 0u);
    pos += e.length;
  }
  EXPECT_EQ(pos, layout.virtual_size());
}

TEST(Qcow2Reader, DataZeroAndUnallocatedClusters) {
  Builder b(3, 16, 4 << 20);
  uint64_t a = b.AddCluster(0xaa);
  uint64_t c = b.AddCluster(0xcc);
  b.SetL2(0, a | kCopied);
  b.SetL2(1, c | kCopied);             // contiguous with cluster 0 in the file: one merged extent
  b.SetL2(3, b.AddCluster(0x77) | 1);  // zero cluster with an allocation: reads as zeros
  b.SetL2(4, 1);                       // zero cluster without allocation
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ExpectCovers(img->layout);
  EXPECT_EQ(Extents(img->layout).size(), 2u);
  EXPECT_EQ(img->info.data_bytes, 2u * 65536);
  EXPECT_EQ(img->info.zero_bytes, 2u * 65536);
  EXPECT_EQ(img->info.unallocated_bytes, (4u << 20) - 4 * 65536);
  auto v = ReadVirtual(img->layout);
  EXPECT_EQ(v[0], 0xaa);
  EXPECT_EQ(v[65536], 0xcc);
  EXPECT_EQ(v[3 * 65536], 0);
  EXPECT_EQ(v[4 * 65536 + 5], 0);
}

// qemu-img reads what lies past the end of the file as zeros; a short upload would install as a
// disk with holes, so the reader refuses it.
TEST(Qcow2Reader, DataPastTheEndOfTheFileIsRefusedAsTruncated) {
  {
    Builder b(3, 16, 1 << 20);
    uint64_t a = b.AddCluster(0x11);
    b.SetL2(0, a | kCopied);
    b.SetL2(1, b.AddCluster(0x22) | kCopied);
    b.bytes.resize(b.bytes.size() - 1);  // the file ends one byte inside the last cluster
    auto img = ReadQcow2(b.bytes);
    ASSERT_FALSE(img.ok());
    EXPECT_EQ(img.status().code(), Code::kInvalid);
    EXPECT_NE(img.status().detail().find(fmt::format(
                  "image is truncated: the cluster at virtual 0x10000 maps to {:#x}, past the end "
                  "of the file ({} bytes)",
                  a + 65536, b.bytes.size())),
              std::string::npos)
        << img.status().detail();
  }
  {
    Builder b(3, 16, 1 << 20);
    b.SetL2(3, (b.bytes.size() + (64 << 20)) | kCopied);  // entirely past the end
    auto img = ReadQcow2(b.bytes);
    ASSERT_FALSE(img.ok());
    EXPECT_NE(img.status().detail().find("image is truncated: the cluster at virtual 0x30000"),
              std::string::npos)
        << img.status().detail();
  }
  {
    // An allocated subcluster past the end counts; an unallocated one does not.
    Builder b(3, 16, 1 << 20, /*extended=*/true);
    uint64_t a = b.AddCluster(0x33);
    b.bytes.resize(a + 4096);  // subclusters 0 and 1 (2 KiB each) are in the file
    b.SetL2(0, a | kCopied, 0b0011);
    ASSERT_TRUE(ReadQcow2(b.bytes).ok());
    b.SetL2(0, a | kCopied, 0b0111);
    auto img = ReadQcow2(b.bytes);
    ASSERT_FALSE(img.ok());
    EXPECT_NE(
        img.status().detail().find(fmt::format("the cluster at virtual 0x0 maps to {:#x}", a)),
        std::string::npos)
        << img.status().detail();
  }
}

TEST(Qcow2Reader, ZeroClustersWithAnAllocationPastTheEndAreNotTruncation) {
  // A ZERO_ALLOC cluster's host bytes are never read.
  Builder b(3, 16, 1 << 20);
  b.SetL2(0, (b.bytes.size() + (64 << 20)) | 1);
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  EXPECT_EQ(img->info.zero_bytes, 65536u);
}

TEST(Qcow2Reader, VirtualSizeRoundedDownToSectors) {
  Builder b(3, 16, (1 << 20) + 700);
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->layout.virtual_size(), (1u << 20) + 512);
  ExpectCovers(img->layout);
}

TEST(Qcow2Reader, EmptyImage) {
  Builder b(3, 16, 0);
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->layout.virtual_size(), 0u);
  EXPECT_TRUE(Extents(img->layout).empty());
}

TEST(Qcow2Reader, ExtendedL2Subclusters) {
  Builder b(3, 16, 1 << 20, /*extended=*/true);
  uint64_t a = b.AddCluster(0x5a);
  // Subcluster 0 allocated, 1 zero, 2 unallocated, 3 allocated (2 KiB each).
  b.SetL2(0, a | kCopied, 0b1001 | (0b0010ull << 32));
  b.SetL2(1, 0, 0xffffffffull << 32);  // all zero, no allocation
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  ExpectCovers(img->layout);
  auto v = ReadVirtual(img->layout);
  EXPECT_EQ(v[0], 0x5a);
  EXPECT_EQ(v[2048], 0);
  EXPECT_EQ(v[4096], 0);
  EXPECT_EQ(v[6144], 0x5a);
  EXPECT_EQ(v[8192], 0);
  EXPECT_EQ(img->info.data_bytes, 4096u);
  EXPECT_EQ(img->info.zero_bytes, 2048u + 65536);
}

std::vector<uint8_t> Deflate(const std::vector<uint8_t>& plain) {
  auto* c = libdeflate_alloc_compressor(6);
  std::vector<uint8_t> out(plain.size() + 1024);
  out.resize(libdeflate_deflate_compress(c, plain.data(), plain.size(), out.data(), out.size()));
  libdeflate_free_compressor(c);
  return out;
}

std::vector<uint8_t> Zstd(const std::vector<uint8_t>& plain) {
  std::vector<uint8_t> out(ZSTD_compressBound(plain.size()));
  out.resize(ZSTD_compress(out.data(), out.size(), plain.data(), plain.size(), 3));
  return out;
}

// A descriptor for `length` compressed bytes at `host` in an image with `cluster_bits`.
uint64_t Descriptor(uint32_t cluster_bits, uint64_t host, uint64_t length) {
  uint32_t shift = 62 - (cluster_bits - 8);
  uint64_t sectors = (host + length + 511) / 512 - host / 512;
  return (1ull << 62) | ((sectors - 1) << shift) | host;
}

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 / 1000);
  return v;
}

struct CompressedCase {
  const char* name;
  bool zstd;
  size_t plain;  // bytes actually compressed (one cluster = 65536)
  bool ok;
};

class Qcow2Compressed : public ::testing::TestWithParam<CompressedCase> {};

TEST_P(Qcow2Compressed, MustInflateToExactlyOneCluster) {
  const auto& p = GetParam();
  Builder b(3, 16, 1 << 20);
  if (p.zstd) {
    Put64(b.bytes, 72, 8);  // compression type bit
    Put32(b.bytes, 100, 112);
    b.bytes[104] = 1;
  }
  auto plain = Pattern(p.plain);
  auto stream = p.zstd ? Zstd(plain) : Deflate(plain);
  // An odd offset, and garbage after the stream up to its last sector, as qemu writes them.
  b.AddBytes(std::vector<uint8_t>(123, 0));
  uint64_t host = b.AddBytes(stream);
  b.AddBytes(std::vector<uint8_t>(600, 0xee));
  b.SetL2(2, Descriptor(16, host, stream.size()));
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  EXPECT_EQ(img->info.compressed_bytes, 65536u);
  std::vector<uint8_t> out(65536);
  VirtualReader r(img->layout);
  Status s = r.Read(2 * 65536, out);
  EXPECT_EQ(s.ok(), p.ok) << s.ToString();
  if (p.ok) {
    EXPECT_TRUE(out == plain);
  } else {
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_NE(s.detail().find("compressed cluster at virtual offset 0x20000"), std::string::npos);
  }
  // A partial read through the cluster cache gives the same bytes.
  if (p.ok) {
    std::vector<uint8_t> part(100);
    ASSERT_TRUE(r.Read(2 * 65536 + 5000, part).ok());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), plain.begin() + 5000));
  }
}

INSTANTIATE_TEST_SUITE_P(Streams, Qcow2Compressed,
                         ::testing::Values(CompressedCase{"DeflateExact", false, 65536, true},
                                           CompressedCase{"DeflateShort", false, 65000, false},
                                           CompressedCase{"DeflateLong", false, 70000, false},
                                           CompressedCase{"ZstdExact", true, 65536, true},
                                           CompressedCase{"ZstdShort", true, 65000, false},
                                           CompressedCase{"ZstdLong", true, 70000, false}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Qcow2Reader, CorruptDeflateStream) {
  Builder b(2, 16, 1 << 20);
  std::vector<uint8_t> junk(300, 0xff);
  uint64_t host = b.AddBytes(junk);
  b.SetL2(0, Descriptor(16, host, junk.size()));
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok());
  std::vector<uint8_t> out(4096);
  VirtualReader r(img->layout);
  EXPECT_EQ(r.Read(0, out).code(), Code::kInvalid);
}

// Refusals: a header or table patched, the expected code and a phrase of the detail.
struct Refusal {
  const char* name;
  void (*patch)(Builder&);
  Code code;
  const char* detail;
};

class Qcow2Refusal : public ::testing::TestWithParam<Refusal> {};

TEST_P(Qcow2Refusal, IsRefusedWithReason) {
  Builder b(3, 16, 4 << 20);
  b.SetL2(0, b.AddCluster(1) | kCopied);
  GetParam().patch(b);
  auto img = ReadQcow2(b.bytes);
  ASSERT_FALSE(img.ok());
  EXPECT_EQ(img.status().code(), GetParam().code) << img.status().ToString();
  EXPECT_NE(img.status().detail().find(GetParam().detail), std::string::npos)
      << img.status().detail();
}

INSTANTIATE_TEST_SUITE_P(
    Crafted, Qcow2Refusal,
    ::testing::Values(
        Refusal{"BadMagic", [](Builder& b) { b.bytes[0] = 'X'; }, Code::kInvalid, "no qcow2 magic"},
        Refusal{"Truncated", [](Builder& b) { b.bytes.resize(50); }, Code::kInvalid, "too small"},
        Refusal{"Version1", [](Builder& b) { Put32(b.bytes, 4, 1); }, Code::kUnsupported,
                "qcow2 version 1"},
        Refusal{"Version4", [](Builder& b) { Put32(b.bytes, 4, 4); }, Code::kUnsupported,
                "qcow2 version 4"},
        Refusal{"ClusterBits8", [](Builder& b) { Put32(b.bytes, 20, 8); }, Code::kUnsupported,
                "cluster_bits 8"},
        Refusal{"ClusterBits22", [](Builder& b) { Put32(b.bytes, 20, 22); }, Code::kUnsupported,
                "cluster_bits 22"},
        Refusal{"BackingFile", [](Builder& b) { Put64(b.bytes, 8, 512); }, Code::kUnsupported,
                "backing file"},
        Refusal{"DataFile", [](Builder& b) { Put64(b.bytes, 72, 4); }, Code::kUnsupported,
                "external data file"},
        Refusal{"Aes", [](Builder& b) { Put32(b.bytes, 32, 1); }, Code::kUnsupported,
                "encrypted (AES)"},
        Refusal{"Luks", [](Builder& b) { Put32(b.bytes, 32, 2); }, Code::kUnsupported,
                "encrypted (LUKS)"},
        Refusal{"UnknownIncompatible", [](Builder& b) { Put64(b.bytes, 72, 1ull << 40); },
                Code::kUnsupported, "unknown incompatible features 0x10000000000"},
        Refusal{"RefcountOrder7", [](Builder& b) { Put32(b.bytes, 96, 7); }, Code::kInvalid,
                "refcount_order 7"},
        Refusal{"HeaderLengthShort", [](Builder& b) { Put32(b.bytes, 100, 96); }, Code::kInvalid,
                "header_length 96"},
        Refusal{"L1Over32MiB", [](Builder& b) { Put32(b.bytes, 36, (4 << 20) + 1); },
                Code::kInvalid, "larger than 32 MiB"},
        Refusal{"L1TooSmall", [](Builder& b) { Put64(b.bytes, 24, 1ull << 40); }, Code::kInvalid,
                "too small"},
        Refusal{"L1Unaligned", [](Builder& b) { Put64(b.bytes, 40, b.l1_offset() + 8); },
                Code::kInvalid, "not aligned"},
        Refusal{"L1Outside", [](Builder& b) { Put64(b.bytes, 40, 1ull << 40); }, Code::kInvalid,
                "outside the image"},
        Refusal{"L2Unaligned", [](Builder& b) { Put64(b.bytes, b.l1_offset(), 2 * b.cs() + 512); },
                Code::kInvalid, "L2 table at 0x20200 (L1 index 0) is not aligned"},
        Refusal{"L2Outside", [](Builder& b) { Put64(b.bytes, b.l1_offset(), 1ull << 40); },
                Code::kInvalid, "outside the image"},
        Refusal{"DataUnaligned", [](Builder& b) { b.SetL2(1, 3 * b.cs() + 4096); }, Code::kInvalid,
                "cluster offset not aligned"},
        Refusal{"ZeroAllocUnaligned", [](Builder& b) { b.SetL2(1, 3 * b.cs() + 4096 + 1); },
                Code::kInvalid, "zero cluster offset not aligned"},
        Refusal{"CompressedOutside",
                [](Builder& b) { b.SetL2(1, Descriptor(16, 1ull << 40, 100)); }, Code::kInvalid,
                "image is truncated: the compressed cluster at virtual 0x10000 maps to "
                "0x10000000000, past the end of the file"},
        Refusal{"CompressionTypeUnknown",
                [](Builder& b) {
                  Put64(b.bytes, 72, 8);
                  Put32(b.bytes, 100, 112);
                  b.bytes[104] = 9;
                },
                Code::kUnsupported, "compression type 9"},
        Refusal{"CompressionTypeWithoutBit",
                [](Builder& b) {
                  Put32(b.bytes, 100, 112);
                  b.bytes[104] = 1;
                },
                Code::kInvalid, "without the compression type bit"},
        Refusal{"ExtensionTooLong",
                [](Builder& b) {
                  Put32(b.bytes, 104, 0x12345678);
                  Put32(b.bytes, 108, 1 << 20);
                },
                Code::kInvalid, "passes the first cluster"},
        Refusal{"ExtendedL2SmallClusters",
                [](Builder& b) {
                  Put64(b.bytes, 72, 16);
                  Put32(b.bytes, 20, 13);
                },
                Code::kInvalid, "extended L2"},
        // What qemu-img checks at open though a reader never needs it (QEMU qcow2_do_open).
        Refusal{"RefcountTableAbsent", [](Builder& b) { Put32(b.bytes, 56, 0); }, Code::kInvalid,
                "image has no refcount table (refcount_table_clusters is 0)"},
        Refusal{"RefcountTableOver8MiB", [](Builder& b) { Put32(b.bytes, 56, 129); },
                Code::kInvalid, "refcount table of 129 clusters is larger than 8 MiB"},
        Refusal{"RefcountTableUnaligned", [](Builder& b) { Put64(b.bytes, 48, 512); },
                Code::kInvalid, "refcount table offset 0x200 is not aligned"},
        Refusal{"RefcountTablePast2To63",
                [](Builder& b) { Put64(b.bytes, 48, 0x7fffffffffff0000); }, Code::kInvalid,
                "refcount table at 0x7fffffffffff0000 ends past 2^63"},
        Refusal{"SnapshotTableUnalignedEvenEmpty", [](Builder& b) { Put64(b.bytes, 64, 8); },
                Code::kInvalid, "snapshot table offset 0x8 is not aligned"},
        Refusal{"SnapshotTablePast2To63",
                [](Builder& b) {
                  Put32(b.bytes, 60, 2000);  // 80000 bytes of entries at least
                  Put64(b.bytes, 64, 0x7fffffffffff0000);
                },
                Code::kInvalid, "snapshot table at 0x7fffffffffff0000 ends past 2^63"},
        Refusal{"SnapshotExtraData",
                [](Builder& b) {
                  uint64_t table = b.AddCluster(0);
                  Put32(b.bytes, 60, 2);
                  Put64(b.bytes, 64, table);
                  b.bytes[table + 13] = 3;  // entry 0: a 3-byte ID, 1024 bytes of extra data
                  Put32(b.bytes, table + 36, 1024);
                  Put32(b.bytes, table + 1072 + 36, 1025);  // entry 1, 8-byte aligned
                },
                Code::kInvalid,
                "snapshot table entry 1 (at 0x40430) has 1025 bytes of extra data (at most 1024)"},
        Refusal{"SnapshotTableOver64MiB",
                [](Builder& b) {
                  // Names of 64 KiB make the table long (past the file's end it reads as zeros).
                  uint64_t table = b.AddCluster(0);
                  Put32(b.bytes, 60, 1100);
                  Put64(b.bytes, 64, table);
                  constexpr uint64_t kEntry = 40 + 65535 + 1;  // 8-byte aligned
                  b.bytes.resize(table + 1024 * kEntry);
                  for (uint64_t i = 0; i < 1024; ++i) {
                    b.bytes[table + i * kEntry + 14] = 0xff;  // a name of 65535 bytes
                    b.bytes[table + i * kEntry + 15] = 0xff;
                  }
                },
                Code::kInvalid, "snapshot table is larger than 64 MiB at entry 1023"},
        Refusal{"ExtensionHeaderCrossesTheCluster",
                [](Builder& b) { Put32(b.bytes, 100, 65532); }, Code::kInvalid,
                "header extension 0x0 at 0xfffc of 2147483648 bytes passes the first cluster"},
        Refusal{"LongBackingFormat",
                [](Builder& b) {
                  Put32(b.bytes, 104, 0xe2792aca);
                  Put32(b.bytes, 108, 16);
                },
                Code::kInvalid, "backing format extension of 16 bytes (at most 15)"},
        Refusal{"LuksHeaderWithoutLuks",
                [](Builder& b) {
                  Put32(b.bytes, 104, 0x0537be77);
                  Put32(b.bytes, 108, 16);
                },
                Code::kInvalid, "LUKS header extension in an image that is not LUKS-encrypted"},
        Refusal{"DataFileRawWithoutDataFile", [](Builder& b) { Put64(b.bytes, 88, 2); },
                Code::kInvalid, "the data_file_raw bit is set but the image has no external"},
        Refusal{"BitmapsExtensionOfWrongSize",
                [](Builder& b) {
                  Put32(b.bytes, 104, 0x23852875);
                  Put32(b.bytes, 108, 16);
                },
                Code::kInvalid, "bitmaps extension of 16 bytes (24 expected)"},
        Refusal{"BitmapDirectoryPastTheEnd",
                [](Builder& b) {
                  Put64(b.bytes, 88, 1);  // the bitmaps autoclear bit
                  Put32(b.bytes, 104, 0x23852875);
                  Put32(b.bytes, 108, 24);
                  Put32(b.bytes, 112, 1);            // one bitmap
                  Put64(b.bytes, 120, 32);           // a 32-byte directory
                  Put64(b.bytes, 128, 1ull << 40);   // far past the end: reads as zeros
                },
                Code::kInvalid, "bitmap 0 '' is invalid: its table is empty"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Qcow2Reader, BitmapsWithoutTheAutoclearBitAreIgnored) {
  // A program that does not know bitmaps changed the image: qemu ignores the extension then.
  Builder b(3, 16, 1 << 20);
  Put32(b.bytes, 104, 0x23852875);
  Put32(b.bytes, 108, 24);
  Put32(b.bytes, 112, 1);
  Put64(b.bytes, 120, 32);
  Put64(b.bytes, 128, 1ull << 40);
  auto img = ReadQcow2(b.bytes);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
}

TEST(Qcow2Reader, SnapshotTablePastTheEndReadsAsZeros) {
  // As qemu reads it: 65536 empty entries of 40 bytes, no error.
  Builder b(3, 16, 1 << 20);
  Put32(b.bytes, 60, 65536);
  Put64(b.bytes, 64, 1ull << 40);
  auto img = ReadQcow2(b.bytes);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
  EXPECT_EQ(img->info.snapshots, 65536u);
}

TEST(Qcow2Reader, ZeroClusterInVersion2) {
  Builder b(2, 16, 1 << 20);
  b.SetL2(0, 1);
  auto img = ReadQcow2(b.bytes);
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.status().detail().find("zero cluster in a version 2 image"), std::string::npos);
}

TEST(Qcow2Reader, UnknownIncompatibleBitNamedFromFeatureTable) {
  Builder b(3, 16, 1 << 20);
  Put64(b.bytes, 72, 1ull << 9);
  Put32(b.bytes, 104, 0x6803f857);
  Put32(b.bytes, 108, 48);
  b.bytes[112] = 0;
  b.bytes[113] = 9;
  std::memcpy(&b.bytes[114], "time travel", 11);
  auto img = ReadQcow2(b.bytes);
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.status().detail().find("0x200 (time travel)"), std::string::npos)
      << img.status().detail();
}

TEST(Qcow2Reader, L2TableReferencedTwiceIsRefused) {
  Builder b(3, 9, 64 << 10);  // 512-byte clusters: one L2 table covers 32 KiB
  Put64(b.bytes, b.l1_offset() + 8, 2 * b.cs() | kCopied);
  auto img = ReadQcow2(b.bytes);
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.status().detail().find("referenced twice"), std::string::npos);
}

TEST(Qcow2Reader, ExtendedL2InvalidBitmaps) {
  {
    Builder b(3, 16, 1 << 20, true);
    b.SetL2(0, b.AddCluster(1) | kCopied, 1 | (1ull << 32));
    EXPECT_EQ(ReadQcow2(b.bytes).status().code(), Code::kInvalid);
  }
  {
    Builder b(3, 16, 1 << 20, true);
    b.SetL2(0, 0, 1);
    EXPECT_EQ(ReadQcow2(b.bytes).status().code(), Code::kInvalid);
  }
  {
    Builder b(3, 16, 1 << 20, true);
    b.SetL2(0, Descriptor(16, 4096, 100), 1);
    EXPECT_EQ(ReadQcow2(b.bytes).status().code(), Code::kInvalid);
  }
}

TEST(Qcow2Reader, AlternatingSubclustersAreDecodedOnDemand) {
  // Every entry shares one host cluster and alternates data and zero subclusters: 32 extents per
  // 16-byte entry, which the layout produces when visited instead of storing them.
  Builder b(3, 14, 640ull << 20, /*extended=*/true);
  std::vector<uint8_t> fill(16384);
  for (size_t i = 0; i < fill.size(); ++i) fill[i] = static_cast<uint8_t>(i / 512 + 1);
  uint64_t host = b.AddBytes(fill);
  for (uint64_t c = 0; c < 40 * 1024; ++c)
    b.SetL2(c, host | kCopied, 0x55555555ull | (0xaaaaaaaaull << 32));
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  EXPECT_EQ(img->info.data_bytes, 320ull << 20);
  EXPECT_EQ(img->info.zero_bytes, 320ull << 20);
  // Any range, clipped: the last cluster's last subclusters.
  const uint64_t at = (640ull << 20) - 1536 - 100;
  auto extents = Extents(img->layout, at, 1636);
  ASSERT_EQ(extents.size(), 4u);
  EXPECT_EQ(extents[0].kind, Extent::Kind::kData);  // subcluster 28's last 100 bytes
  EXPECT_EQ(extents[0].offset, at);
  EXPECT_EQ(extents[0].length, 100u);
  EXPECT_EQ(extents[0].data, b.bytes.data() + host + 29 * 512 - 100);
  EXPECT_EQ(extents[1].kind, Extent::Kind::kZero);  // subcluster 29
  EXPECT_EQ(extents[1].length, 512u);
  EXPECT_EQ(extents[2].kind, Extent::Kind::kData);  // subcluster 30
  EXPECT_EQ(extents[2].data, b.bytes.data() + host + 30 * 512);
  EXPECT_EQ(extents[3].kind, Extent::Kind::kZero);  // subcluster 31
  EXPECT_EQ(extents[3].offset + extents[3].length, 640ull << 20);
  std::vector<uint8_t> out(4096);
  VirtualReader r(img->layout);
  ASSERT_TRUE(r.Read(5 * 16384, out).ok());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(out[i], (i / 512) % 2 == 0 ? fill[i] : 0) << i;
  }
}

TEST(ImageLayout, MergesNeighboursAndClips) {
  Builder b(3, 16, 4 << 20);
  uint64_t a = b.AddCluster(0xaa);
  uint64_t c = b.AddCluster(0xcc);
  b.SetL2(0, a | kCopied);
  b.SetL2(1, c | kCopied);  // follows cluster 0 in the file: one data extent
  b.SetL2(3, c | kCopied);  // the same host cluster again: not adjacent to cluster 1's
  b.SetL2(4, 1);            // zero, then unallocated: one zero extent
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  auto v = Extents(img->layout, 1000, 5 * 65536);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].kind, Extent::Kind::kData);
  EXPECT_EQ(v[0].offset, 1000u);
  EXPECT_EQ(v[0].length, 2 * 65536u - 1000);
  EXPECT_EQ(v[0].data, b.bytes.data() + a + 1000);
  EXPECT_EQ(v[1].kind, Extent::Kind::kZero);  // cluster 2, unallocated
  EXPECT_EQ(v[1].length, 65536u);
  EXPECT_EQ(v[2].kind, Extent::Kind::kData);
  EXPECT_EQ(v[2].data, b.bytes.data() + c);
  EXPECT_EQ(v[3].kind, Extent::Kind::kZero);  // to the end of the range, inside cluster 5
  EXPECT_EQ(v[3].offset + v[3].length, 1000u + 5 * 65536);
  EXPECT_EQ(
      img->layout.ForEachExtent(4 << 20, 1, [](const Extent&) { return Status::Ok(); }).code(),
      Code::kInvalid);
}

TEST(ImageLayout, AVisitorErrorStopsTheWalk) {
  std::vector<uint8_t> raw(5000, 1);
  ImageLayout layout = RawLayout(raw);
  int calls = 0;
  Status s = layout.ForEachExtent(0, layout.virtual_size(), [&](const Extent&) {
    ++calls;
    return Status::Error(Code::kIo, "enough");
  });
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_EQ(calls, 1);
}

TEST(OpenImage, DetectsQcow2AndRaw) {
  Builder b(3, 16, 1 << 20);
  auto q = OpenImage(b.bytes);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->format, ImageFormat::kQcow2);
  ASSERT_TRUE(q->qcow2.has_value());
  std::vector<uint8_t> raw(5000, 3);
  auto r = OpenImage(raw);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->format, ImageFormat::kRaw);
  EXPECT_EQ(r->layout.virtual_size(), 5120u);  // padded to whole sectors, as qemu-img does
  auto extents = Extents(r->layout);
  ASSERT_EQ(extents.size(), 2u);
  EXPECT_EQ(extents[0].data, raw.data());
  EXPECT_EQ(extents[0].length, 5000u);
  EXPECT_EQ(extents[1].kind, Extent::Kind::kZero);
}

TEST(VirtualReader, RefusesReadsPastTheEnd) {
  std::vector<uint8_t> raw(4096, 1);
  auto r = OpenImage(raw);
  ASSERT_TRUE(r.ok());
  VirtualReader reader(r->layout);
  std::vector<uint8_t> out(10);
  EXPECT_TRUE(reader.Read(4086, out).ok());
  EXPECT_EQ(reader.Read(4087, out).code(), Code::kInvalid);
}

}  // namespace
}  // namespace byoi

namespace byoi {
namespace {

// 64 MiB of virtual disk with every 8th cluster compressed (its own copy of one deflate stream);
// the clusters in `corrupt` get a stream of garbage instead.
std::vector<uint8_t> CompressedDisk(const std::vector<uint64_t>& corrupt) {
  Builder b(3, 16, 64 << 20);
  auto stream = Deflate(Pattern(65536));
  std::vector<uint8_t> junk(stream.size(), 0xff);
  for (uint64_t c = 0; c < 1024; c += 8) {
    bool bad = std::find(corrupt.begin(), corrupt.end(), c) != corrupt.end();
    uint64_t host = b.AddBytes(bad ? junk : stream);
    b.SetL2(c, Descriptor(16, host, stream.size()));
  }
  return b.bytes;
}

TEST(VerifyCompressedClusters, ReportsTheLowestCorruptClusterOnAnyNumberOfThreads) {
  auto bytes = CompressedDisk({1000, 600});
  auto img = ReadQcow2(bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  CancelToken cancel;
  for (unsigned threads : {1u, 2u, 8u, 0u}) {
    Status s = VerifyCompressedClusters(img->layout, threads, cancel);
    EXPECT_EQ(s.code(), Code::kInvalid) << threads;
    EXPECT_EQ(s.detail(), "compressed cluster at virtual offset 0x2580000: corrupt deflate stream")
        << threads;
  }
}

TEST(VerifyCompressedClusters, AcceptsSoundImagesAndStopsWhenCancelled) {
  auto bytes = CompressedDisk({});
  auto img = ReadQcow2(bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  CancelToken cancel;
  EXPECT_TRUE(VerifyCompressedClusters(img->layout, 0, cancel).ok());
  std::vector<uint8_t> raw(5000, 1);
  EXPECT_TRUE(VerifyCompressedClusters(RawLayout(raw), 0, cancel).ok());
  EXPECT_TRUE(VerifyCompressedClusters(ImageLayout(), 0, cancel).ok());
  cancel.Cancel();
  EXPECT_EQ(VerifyCompressedClusters(img->layout, 2, cancel).code(), Code::kCancelled);
}

// Kept clusters: the inflated layout reads as the original, byte for byte, with no compressed
// extent left, a last cluster cut by the disk's end included.
TEST(VerifyCompressedClusters, KeptClustersReadAsTheImageWithoutAnInflate) {
  const uint64_t size = (64 << 20) - 1024;
  Builder b(3, 16, size);
  auto stream = Deflate(Pattern(65536));
  for (uint64_t c : {0, 8, 9, 500, 1023})
    b.SetL2(c, Descriptor(16, b.AddBytes(stream), stream.size()));
  auto img = ReadQcow2(b.bytes);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  std::vector<uint8_t> expected(size);
  Status read = VirtualReader(img->layout).Read(0, expected);
  ASSERT_TRUE(read.ok()) << read.ToString();
  auto kept = ImageBuffer::Create(size);
  ASSERT_TRUE(kept.ok());
  CancelToken cancel;
  ASSERT_TRUE(VerifyCompressedClusters(img->layout, 2, cancel, &*kept).ok());
  ImageLayout inflated = InflatedLayout(std::move(img->layout), std::move(*kept));
  int compressed = 0;
  ASSERT_TRUE(inflated
                  .ForEachExtent(0, size,
                                 [&](const Extent& e) {
                                   compressed += e.kind == Extent::Kind::kCompressed;
                                   return Status::Ok();
                                 })
                  .ok());
  EXPECT_EQ(compressed, 0);
  std::vector<uint8_t> got(size);
  ASSERT_TRUE(VirtualReader(inflated).Read(0, got).ok());
  EXPECT_TRUE(got == expected);
}

}  // namespace
}  // namespace byoi
