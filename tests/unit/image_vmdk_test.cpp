// The VMDK reader on files built here byte by byte (tests/integration/test_ova_conformance.py
// compares it with qemu-img on files qemu-img makes): header checks, markers, the descriptor, the
// layout of each kind of grain, and the last grain cut by the end of the disk.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"
#include "agent/image/vmdk.hpp"
#include "agent/image/vmdk_format.hpp"
#include "tests/unit/vmdk_builder.hpp"

namespace byoi {
namespace {

using testing::Append;
using testing::Bytes;
using testing::Grain;
using testing::Header;
using testing::PutLe;
using testing::Sector;
using testing::StreamFile;
using testing::Zlib;

Bytes ReadAll(const ImageLayout& layout) {
  Bytes out(layout.virtual_size());
  VirtualReader reader(layout);
  Status s = reader.Read(0, out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

TEST(VmdkHeader, RefusesWhatItCannotRead) {
  struct Case {
    const char* name;
    size_t at;
    uint64_t value;
    int width;
    Code code;
    const char* detail;
  } cases[] = {
      {"version 0", 4, 0, 4, Code::kUnsupported, "VMDK version 0"},
      {"version 4", 4, 4, 4, Code::kUnsupported, "VMDK version 4"},
      {"unknown flag", 8, 0x3 | (1u << 20), 4, Code::kUnsupported, "unknown VMDK flags 0x100000"},
      {"newline bytes", 73, 0x0a0d0d0a, 4, Code::kInvalid,
       "the header's newline check bytes are damaged (the file went through a text-mode "
       "transfer)"},
      {"compression 7", 77, 7, 2, Code::kUnsupported, "VMDK compression algorithm 7"},
      {"compressed without markers", 77, 1, 2, Code::kUnsupported,
       "compressed grains without markers"},
      {"markers without compression", 8, 0x20003, 4, Code::kUnsupported,
       "grain markers without compression"},
      {"grain 0", 20, 0, 8, Code::kUnsupported,
       "a grain of 0 sectors (a power of two from 1 to 4096 is expected)"},
      {"grain 8192", 20, 8192, 8, Code::kUnsupported,
       "a grain of 8192 sectors (a power of two from 1 to 4096 is expected)"},
      {"grain 96", 20, 96, 8, Code::kUnsupported,
       "a grain of 96 sectors (a power of two from 1 to 4096 is expected)"},
      {"no table entries", 44, 0, 4, Code::kUnsupported,
       "grain tables of 0 entries (1 to 512 are expected)"},
      {"513 table entries", 44, 513, 4, Code::kUnsupported,
       "grain tables of 513 entries (1 to 512 are expected)"},
      {"capacity", 12, 1ull << 55, 8, Code::kUnsupported,
       "a capacity of 36028797018963968 sectors"},
  };
  for (const Case& c : cases) {
    Bytes h = Header(2048, 128, 512, 2, 128);
    PutLe(h, c.at, c.value, c.width);
    auto r = DecodeVmdkHeader(h);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), c.code) << c.name;
    EXPECT_EQ(r.status().detail(), c.detail) << c.name;
  }
  EXPECT_EQ(DecodeVmdkHeader(Bytes(100, 0)).status().detail(),
            "100 bytes are too few for a VMDK header");
  auto ok = DecodeVmdkHeader(Header(2048, 128, 512, 2, 128));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->grain_bytes(), 65536u);
  EXPECT_FALSE(ok->compressed());
}

TEST(VmdkMarker, DecodesGrainsAndMetadata) {
  Bytes grain;
  PutLe(grain, 0, 384, 8);
  PutLe(grain, 8, 1000, 4);
  auto g = DecodeVmdkMarker(grain);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->type, VmdkMarkerType::kGrain);
  EXPECT_EQ(g->value, 384u);
  EXPECT_EQ(g->size, 1000u);
  EXPECT_EQ(g->header_bytes, 12u);

  Bytes meta(512, 0);
  PutLe(meta, 0, 4, 8);
  PutLe(meta, 12, 1, 4);
  auto m = DecodeVmdkMarker(meta);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->type, VmdkMarkerType::kGrainTable);
  EXPECT_EQ(m->value, 4u);
  EXPECT_EQ(m->header_bytes, 512u);

  PutLe(meta, 12, 9, 4);
  EXPECT_EQ(DecodeVmdkMarker(meta).status().detail(), "a metadata marker of unknown type 9");
  EXPECT_EQ(DecodeVmdkMarker(std::span(meta).first(100)).status().detail(),
            "a metadata marker is cut by the end of the file");
  EXPECT_EQ(DecodeVmdkMarker(std::span(grain).first(11)).status().detail(),
            "a marker is cut by the end of the file");
}

TEST(VmdkDescriptor, ReadsKeysAndExtents) {
  const std::string text =
      "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
      "createType=\"twoGbMaxExtentSparse\"\r\n\n# Extent description\n"
      "RW 4192256 SPARSE \"a-s001.vmdk\"\nRDONLY 100 FLAT \"a-flat.vmdk\" 0\n"
      "ddb.adapterType = \"lsilogic\"\n";
  VmdkDescriptor d = ParseVmdkDescriptor(text + std::string(100, '\0') + "createType=\"x\"");
  EXPECT_EQ(d.create_type, "twoGbMaxExtentSparse");
  EXPECT_EQ(d.parent_cid, "ffffffff");
  EXPECT_EQ(d.parent_hint, "");
  ASSERT_EQ(d.extents.size(), 2u);
  EXPECT_EQ(d.extents[0].access, "RW");
  EXPECT_EQ(d.extents[0].sectors, 4192256u);
  EXPECT_EQ(d.extents[0].type, "SPARSE");
  EXPECT_EQ(d.extents[0].file, "a-s001.vmdk");
  EXPECT_EQ(d.extents[1].type, "FLAT");
  EXPECT_EQ(d.extents[1].file, "a-flat.vmdk");

  auto looks = [](std::string_view s) {
    return LooksLikeVmdkDescriptor(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  };
  EXPECT_TRUE(looks("# Disk DescriptorFile\n"));
  EXPECT_TRUE(looks("# a comment\n   \nversion=2\r\n"));
  EXPECT_FALSE(looks("version=1"));  // QEMU wants the newline too
  EXPECT_FALSE(looks("version=4\n"));
  EXPECT_FALSE(looks("hello\nversion=1\n"));
}

// A monolithicSparse file: capacity 10 sectors, grains of 4 sectors (the last one cut to 2), tables
// of 2 entries: table 0 maps grain 0 and leaves grain 1 unallocated, table 1 maps grain 2.
TEST(VmdkReader, MonolithicSparseLayout) {
  // Sector 0 header, 1 descriptor, 2 directory, 3 table 0, 4 table 1, 8.. grains.
  Bytes file = Header(10, 4, 2, 2, 8);
  Append(file, Sector(0));
  Bytes gd(512, 0);
  PutLe(gd, 0, 3, 4);
  PutLe(gd, 4, 4, 4);
  Append(file, gd);
  Bytes gt0(512, 0);
  PutLe(gt0, 0, 8, 4);  // grain 0 at sector 8; grain 1 unallocated
  Append(file, gt0);
  Bytes gt1(512, 0);
  PutLe(gt1, 0, 12, 4);  // grain 2 at sector 12 (only 2 of its sectors are in the disk)
  Append(file, gt1);
  file.resize(8 * 512, 0);
  Append(file, Bytes(4 * 512, 0xa1));
  Append(file, Bytes(2 * 512, 0xa2));  // the file ends where the disk does

  auto v = ReadVmdk(file);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->info.subformat, "monolithicSparse");
  EXPECT_EQ(v->info.virtual_size, 5120u);
  EXPECT_EQ(v->info.grain_tables, 2u);
  EXPECT_EQ(v->info.data_bytes, 3072u);
  EXPECT_EQ(v->info.unallocated_bytes, 2048u);
  Bytes want(5120, 0);
  std::memset(want.data(), 0xa1, 2048);
  std::memset(want.data() + 4096, 0xa2, 1024);
  EXPECT_EQ(ReadAll(v->layout), want);

  // The same file, one byte short: the last grain passes its end.
  Bytes short_file(file.begin(), file.end() - 1);
  EXPECT_EQ(ReadVmdk(short_file).status().detail(),
            "in the grain table at 0x800 (directory entry 1): entry 0 (0xc): the grain at 0x1800 "
            "maps past the end of the file (7167 bytes)");
}

TEST(VmdkReader, StreamOptimizedLastGrainMayHoldTheWholeGrainOrTheDisksPart) {
  for (size_t inflated : {2048, 4096}) {
    Bytes file = StreamFile(Zlib(inflated, 0xc2));
    auto v = ReadVmdk(file);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->info.subformat, "streamOptimized");
    EXPECT_EQ(v->info.compressed_bytes, 6144u);
    CancelToken cancel;
    EXPECT_TRUE(VerifyCompressedClusters(v->layout, 1, cancel).ok()) << inflated;
    Bytes want(10240, 0);
    std::memset(want.data(), 0xc1, 4096);
    std::memset(want.data() + 8192, 0xc2, 2048);
    EXPECT_EQ(ReadAll(v->layout), want) << inflated;
  }
  // Between the two, or more than a grain: refused.
  for (auto [inflated, why] : {std::pair<size_t, const char*>{3072,
                                                              "inflates to 3072 bytes, less "
                                                              "than a grain"},
                               {2047, "inflates to 2047 bytes, less than a grain"},
                               {4097, "inflates to more than a grain"}}) {
    Bytes file = StreamFile(Zlib(inflated, 0xc2));
    auto v = ReadVmdk(file);
    ASSERT_TRUE(v.ok());
    CancelToken cancel;
    Status s = VerifyCompressedClusters(v->layout, 1, cancel);
    EXPECT_EQ(s.detail(),
              std::string("compressed cluster at virtual offset 0x2000: zlib stream ") + why);
  }
}

TEST(VmdkReader, StreamOptimizedRefusals) {
  EXPECT_EQ(ReadVmdk(StreamFile(Zlib(2048, 1), 8)).status().detail(),
            "in the grain table at 0x600 (directory entry 0): entry 2 (0xa): the grain marker at "
            "0x1400 names sector 8, not 16");
  Bytes huge = StreamFile(Zlib(2048, 1));
  PutLe(huge, 10 * 512 + 8, 9000, 4);  // more than two grains of compressed bytes
  EXPECT_EQ(ReadVmdk(huge).status().detail(),
            "in the grain table at 0x600 (directory entry 0): entry 2 (0xa): the grain at 0x1400 "
            "has 9000 compressed bytes, more than two grains");
  Bytes cut = StreamFile(Zlib(2048, 1));
  PutLe(cut, 10 * 512 + 8, 600, 4);  // passes the end of the file
  EXPECT_EQ(ReadVmdk(cut).status().detail(),
            "in the grain table at 0x600 (directory entry 0): entry 2 (0xa): the compressed grain "
            "at 0x1400 (600 bytes) passes the end of the file");
}

TEST(VmdkReader, ZeroGrainsAndEmptyDisks) {
  Bytes file = Header(8, 4, 2, 2, 4);
  PutLe(file, 8, 0x7, 4);  // with the zero-grain flag
  Append(file, Sector(0));
  Bytes gd(512, 0);
  PutLe(gd, 0, 3, 4);
  Append(file, gd);
  Bytes gt(512, 0);
  PutLe(gt, 0, 1, 4);  // a zero grain
  Append(file, gt);
  auto v = ReadVmdk(file);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->info.zero_bytes, 2048u);
  EXPECT_EQ(v->info.unallocated_bytes, 2048u);
  EXPECT_EQ(ReadAll(v->layout), Bytes(4096, 0));

  auto empty = ReadVmdk(Header(0, 128, 512, 0, 1));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->layout.virtual_size(), 0u);
}

TEST(VmdkReader, RefusesOtherKindsOfVmdk) {
  auto text = [](std::string_view s) { return Bytes(s.begin(), s.end()); };
  auto r =
      ReadVmdk(text("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT "
                    "\"x-flat.vmdk\" 0\n"));
  EXPECT_EQ(r.status().code(), Code::kUnsupported);
  EXPECT_EQ(r.status().detail(),
            "a descriptor-only VMDK (createType \"monolithicFlat\") whose data is in other files: "
            "\"x-flat.vmdk\"");
  Bytes se(512, 0);
  PutLe(se, 0, 0xcafebabe, 8);
  EXPECT_EQ(ReadVmdk(se).status().detail(), "an seSparse VMDK (ESXi's snapshot format)");
  EXPECT_EQ(ReadVmdk(text("COWD....")).status().detail(), "a VMDK3 (COWD) sparse extent");
  EXPECT_EQ(ReadVmdk(text("hello")).status().detail(), "not a VMDK file");

  // A parent disk named in the embedded descriptor.
  Bytes child = Header(8, 4, 2, 2, 4);
  std::string desc = "# Disk DescriptorFile\nparentFileNameHint=\"base.vmdk\"\n";
  Append(child, Bytes(desc.begin(), desc.end()));
  child.resize(4 * 512, 0);
  EXPECT_EQ(ReadVmdk(child).status().detail(),
            "the VMDK has a parent disk (parentFileNameHint \"base.vmdk\")");
}

}  // namespace
}  // namespace byoi
