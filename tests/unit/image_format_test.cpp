#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "agent/base/messages.hpp"
#include "agent/image/format.hpp"
#include "tests/unit/tar_builder.hpp"

namespace byoi {
namespace {

using Bytes = std::vector<uint8_t>;

void Put(Bytes& b, size_t offset, std::string_view s) {
  if (b.size() < offset + s.size()) b.resize(offset + s.size());
  std::memcpy(b.data() + offset, s.data(), s.size());
}
void PutLe32(Bytes& b, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[offset + i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutBe32(Bytes& b, size_t offset, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[offset + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}

Bytes Qcow2(uint32_t version, uint64_t virtual_size) {
  Bytes b(64 << 10, 0);
  Put(b, 0, "QFI\xfb");
  PutBe32(b, 4, version);
  PutBe32(b, 24, static_cast<uint32_t>(virtual_size >> 32));
  PutBe32(b, 28, static_cast<uint32_t>(virtual_size));
  return b;
}

// An MBR with one Linux partition at sector 2048.
Bytes Mbr(size_t size = 1 << 20) {
  Bytes b(size, 0);
  b[446] = 0x80;
  b[446 + 4] = 0x83;
  PutLe32(b, 446 + 8, 2048);
  PutLe32(b, 446 + 12, 100);
  b[510] = 0x55;
  b[511] = 0xAA;
  return b;
}

Bytes Ext(uint32_t compat, uint32_t incompat) {
  Bytes b(64 << 10, 0);
  b[1024 + 56] = 0x53;
  b[1024 + 57] = 0xEF;
  PutLe32(b, 1024 + 92, compat);
  PutLe32(b, 1024 + 96, incompat);
  return b;
}

Bytes With(size_t size, size_t offset, std::string_view magic) {
  Bytes b(size, 0x11);
  Put(b, offset, magic);
  return b;
}

TEST(DetectFormat, Qcow2VirtualSizeIsTheBigEndianHeaderField) {
  FormatInfo info = DetectFormat(Qcow2(3, 0x0000000280000000ull));
  EXPECT_EQ(info.format, ImageFormat::kQcow2);
  EXPECT_EQ(info.name, "qcow2");
  EXPECT_EQ(info.virtual_size, 0x280000000ull);
  EXPECT_EQ(DetectFormat(Qcow2(2, 1 << 30)).virtual_size, 1u << 30);
}

TEST(DetectFormat, QcowVersion1IsAnotherFormat) {
  FormatInfo info = DetectFormat(Qcow2(1, 1 << 20));
  EXPECT_EQ(info.format, ImageFormat::kContainer);
  EXPECT_EQ(info.name, "qcow");
}

TEST(DetectFormat, RawWithMbrOrGpt) {
  FormatInfo mbr = DetectFormat(Mbr());
  EXPECT_EQ(mbr.format, ImageFormat::kRaw);
  EXPECT_EQ(mbr.table, PartitionTableType::kMbr);
  EXPECT_EQ(mbr.virtual_size, 1u << 20);

  Bytes gpt(1 << 20, 0);
  gpt[446 + 4] = 0xEE;  // protective MBR
  PutLe32(gpt, 446 + 8, 1);
  PutLe32(gpt, 446 + 12, 2047);
  gpt[510] = 0x55;
  gpt[511] = 0xAA;
  Put(gpt, 512, "EFI PART");
  EXPECT_EQ(DetectFormat(gpt).table, PartitionTableType::kGpt);

  Bytes gpt4k = With(1 << 20, 4096, "EFI PART");  // 4096-byte sectors, no MBR at all
  EXPECT_EQ(DetectFormat(gpt4k).format, ImageFormat::kRaw);
  EXPECT_EQ(DetectFormat(gpt4k).table, PartitionTableType::kGpt);
}

TEST(DetectFormat, BootSignatureWithoutSaneEntriesIsNoMbr) {
  Bytes b = Mbr();
  b[446 + 16] = 0x42;  // a second entry with garbage status: boot code, not a table
  b[446 + 16 + 4] = 0x07;
  PutLe32(b, 446 + 16 + 8, 1);
  PutLe32(b, 446 + 16 + 12, 1);
  EXPECT_NE(DetectFormat(b).format, ImageFormat::kRaw);

  Bytes empty_table(4096, 0);
  empty_table[510] = 0x55;
  empty_table[511] = 0xAA;
  EXPECT_NE(DetectFormat(empty_table).format, ImageFormat::kRaw);
}

TEST(DetectFormat, HybridIsoIsRaw) {
  Bytes b = Mbr(64 << 10);
  Put(b, 0x8001, "CD001");
  EXPECT_EQ(DetectFormat(b).format, ImageFormat::kRaw);
}

TEST(DetectFormat, NamesWhatIsNotADiskImage) {
  struct Case {
    Bytes bytes;
    const char* name;
    const char* contents;
    ImageFormat format;
  } cases[] = {
      {Bytes{}, "empty", "nothing (the image is empty)", ImageFormat::kOther},
      {Bytes(1 << 20, 0), "zeros", "only zeros at its start", ImageFormat::kOther},
      {With(4096, 0, "\x1f\x8b\x08"), "gzip", "gzip compressed data", ImageFormat::kOther},
      {With(4096, 0,
            std::string_view("\xfd"
                             "7zXZ\0",
                             6)),
       "xz", "xz compressed data", ImageFormat::kOther},
      {With(4096, 0, "\x28\xb5\x2f\xfd"), "zstd", "zstd compressed data", ImageFormat::kOther},
      {With(4096, 0, "BZh9"), "bzip2", "bzip2 compressed data", ImageFormat::kOther},
      {With(4096, 257, "ustar"), "tar", "a tar archive", ImageFormat::kOther},
      {Ext(0, 0x2C2), "ext4", "an ext4 filesystem", ImageFormat::kOther},
      {Ext(0x4, 0x2), "ext3", "an ext3 filesystem", ImageFormat::kOther},
      {Ext(0, 0x2), "ext2", "an ext2 filesystem", ImageFormat::kOther},
      {With(8192, 0, "XFSB"), "xfs", "an XFS filesystem", ImageFormat::kOther},
      {With(0x20000, 0x10040, "_BHRfS_M"), "btrfs", "a Btrfs filesystem", ImageFormat::kOther},
      {With(0x10000, 0x8001, "CD001"), "iso9660", "an ISO 9660 image", ImageFormat::kOther},
      {With(4096, 3, "NTFS    "), "ntfs", "an NTFS filesystem", ImageFormat::kOther},
      {With(4096, 0x52, "FAT32   "), "vfat", "a FAT filesystem", ImageFormat::kOther},
      {With(8192, 4086, "SWAPSPACE2"), "swap", "a Linux swap area", ImageFormat::kOther},
      {With(4096, 0, std::string_view("LUKS\xba\xbe", 6)), "luks", "a LUKS encrypted volume",
       ImageFormat::kOther},
      {With(4096, 0, "hsqs"), "squashfs", "a squashfs filesystem", ImageFormat::kOther},
      {With(4096, 0, "KDMV"), "vmdk", "a VMDK disk image", ImageFormat::kVmdk},
      {With(4096, 0, "# Disk DescriptorFile"), "vmdk", "a VMDK disk image", ImageFormat::kVmdk},
      {With(4096, 0, "# comment\nversion=1\n"), "vmdk", "a VMDK disk image", ImageFormat::kVmdk},
      {With(4096, 0, "COWD"), "vmdk", "a VMDK disk image", ImageFormat::kVmdk},
      {testing::Tar({{"disk.vmdk", "KDMV"}, {"a.ovf", "<Envelope/>"}}), "tar", "a tar archive",
       ImageFormat::kOther},
      {testing::Tar({{"a.ovf", "<Envelope/>"}}), "ova",
       "an OVA (a tar archive led by an OVF descriptor)", ImageFormat::kOva},
      {testing::Tar({{"dir/", "", '5'}, {"dir/A.OVF", "<Envelope/>"}}), "ova",
       "an OVA (a tar archive led by an OVF descriptor)", ImageFormat::kOva},
      {With(4096, 0, "vhdxfile"), "vhdx", "a VHDX disk image", ImageFormat::kContainer},
      {With(4096, 0, "conectix"), "vhd", "a VHD disk image", ImageFormat::kContainer},
      {With(4096, 0x40, "\x7f\x10\xda\xbe"), "vdi", "a VDI disk image", ImageFormat::kContainer},
      {With(4096, 0, "hello"), "unknown", "unknown data", ImageFormat::kOther},
  };
  for (const Case& c : cases) {
    FormatInfo info = DetectFormat(c.bytes);
    EXPECT_EQ(info.name, c.name);
    EXPECT_EQ(info.contents, c.contents) << c.name;
    EXPECT_EQ(info.format, c.format) << c.name;
    EXPECT_EQ(info.virtual_size, 0u) << c.name;
  }
}

TEST(DetectFormat, VmdkCapacityIsTheVirtualSize) {
  Bytes b = With(4096, 0, "KDMV");
  PutLe32(b, 12, 2048);  // capacity: 2048 sectors
  PutLe32(b, 16, 0);
  EXPECT_EQ(DetectFormat(b).virtual_size, 1u << 20);
}

TEST(DetectFormat, TruncatedInputsAreSafe) {
  // Every prefix of every magic-bearing sample: no read past the end (ASan builds check this).
  Bytes samples[] = {Qcow2(3, 1),
                     Mbr(),
                     Ext(0, 0x40),
                     With(0x20000, 0x10040, "_BHRfS_M"),
                     With(0x10000, 0x8001, "CD001"),
                     With(4096, 0, "KDMV"),
                     testing::Tar({{"a.ovf", "<Envelope/>"}})};
  for (const Bytes& s : samples) {
    for (size_t n : {0, 1, 3, 4, 7, 8, 31, 32, 511, 512, 520, 1100, 4096, 0x8005, 0x10047}) {
      if (n > s.size()) continue;
      (void)DetectFormat(std::span<const uint8_t>(s.data(), n));
    }
  }
  EXPECT_EQ(DetectFormat(std::span<const uint8_t>(Qcow2(3, 5).data(), 8)).format,
            ImageFormat::kQcow2);
}

TEST(CheckDeclaredType, Messages) {
  EXPECT_TRUE(CheckDeclaredType(DetectFormat(Qcow2(3, 1 << 20)), ImageType::kQcow2).ok());
  EXPECT_TRUE(CheckDeclaredType(DetectFormat(Mbr()), ImageType::kRaw).ok());

  Status s = CheckDeclaredType(DetectFormat(Mbr()), ImageType::kQcow2);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_EQ(s.message(), "image provided format is raw which does not match expected qcow2 format");
  EXPECT_EQ(s.message(), msg::FormatMismatch("raw", "qcow2"));

  s = CheckDeclaredType(DetectFormat(Qcow2(3, 1 << 20)), ImageType::kRaw);
  EXPECT_EQ(s.message(), "image provided format is qcow2 which does not match expected raw format");

  s = CheckDeclaredType(DetectFormat(With(4096, 0, "KDMV")), ImageType::kRaw);
  EXPECT_EQ(s.message(), "image provided format is vmdk which does not match expected raw format");

  // OVA, both ways, and a bare VMDK where an OVA is expected.
  const Bytes ova = testing::Tar({{"appliance.ovf", "<Envelope/>"}});
  EXPECT_TRUE(CheckDeclaredType(DetectFormat(ova), ImageType::kOva).ok());
  s = CheckDeclaredType(DetectFormat(ova), ImageType::kRaw);
  EXPECT_EQ(s.message(), "image provided format is ova which does not match expected raw format");
  s = CheckDeclaredType(DetectFormat(ova), ImageType::kQcow2);
  EXPECT_EQ(s.message(), "image provided format is ova which does not match expected qcow2 format");
  s = CheckDeclaredType(DetectFormat(Mbr()), ImageType::kOva);
  EXPECT_EQ(s.message(), "image provided format is raw which does not match expected ova format");
  s = CheckDeclaredType(DetectFormat(Qcow2(3, 1 << 20)), ImageType::kOva);
  EXPECT_EQ(s.message(), "image provided format is qcow2 which does not match expected ova format");
  s = CheckDeclaredType(DetectFormat(With(4096, 0, "KDMV")), ImageType::kOva);
  EXPECT_EQ(s.message(), "image provided format is vmdk which does not match expected ova format");

  s = CheckDeclaredType(DetectFormat(With(4096, 0, "\x1f\x8b")), ImageType::kQcow2);
  EXPECT_EQ(s.message(),
            "image provided format is gzip which does not match expected qcow2 format");

  s = CheckDeclaredType(DetectFormat(Ext(0, 0x40)), ImageType::kRaw);
  EXPECT_EQ(s.message(),
            "image provided format is not of type raw because no partition table was found. It "
            "seems to contain: an ext4 filesystem");

  s = CheckDeclaredType(DetectFormat(Bytes{}), ImageType::kRaw);
  EXPECT_EQ(s.message(), msg::NoPartitionTable("nothing (the image is empty)"));
}

}  // namespace
}  // namespace byoi
