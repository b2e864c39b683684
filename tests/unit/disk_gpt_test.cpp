// GPT relocation and the config-2 partition on regular files (no root): images made with sgdisk
// and sfdisk, grown as if written to a larger disk, checked with sgdisk -v and by reading bytes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/disk/gpt.hpp"
#include "agent/disk/inventory.hpp"
#include "agent/disk/partition_add.hpp"
#include "tests/unit/disk_test_util.hpp"

namespace byoi {
namespace {

using testing::BlkidTag;
using testing::HashFile;
using testing::MakeFile;
using testing::MustRun;
using testing::ReadBytes;
using testing::TempDir;

constexpr uint64_t kMiB = 1 << 20;

uint64_t Le64(const std::string& b, size_t off) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[off + i]);
  return v;
}

// A 40 MiB GPT image with an ESP, a BIOS boot and a root partition with fixed GUIDs and names.
void MakeGptImage(const std::string& path, uint64_t size = 40 * kMiB) {
  MakeFile(path, size);
  MustRun({"sgdisk", "-n1:2048:+8M", "-t1:ef00", "-c1:EFI System",
           "-u1:11111111-2222-3333-4444-555555555555", "-n2:0:+1M", "-t2:ef02", "-c2:bios",
           "-u2:21111111-2222-3333-4444-555555555555", "-n3:0:0", "-t3:8300", "-c3:root fs",
           "-u3:31111111-2222-3333-4444-555555555555", "-U", "41111111-2222-3333-4444-555555555555",
           path});
}

Disk FileDisk(const std::string& path) {
  auto d = DescribeTarget(path);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : Disk{};
}

TEST(DiskGpt, RelocatesTheBackupToTheLastLbaKeepingPartitions) {
  TempDir dir;
  std::string img = dir / "disk.img";
  MakeGptImage(img);
  auto before = ReadPartitions(FileDisk(img));
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->size(), 3u);
  ::truncate(img.c_str(), 200 * kMiB);  // the image written onto a larger disk
  EXPECT_THAT(MustRun({"sgdisk", "-v", img}), ::testing::HasSubstr("Problem"));

  auto r = RelocateBackupGpt(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->gpt);
  EXPECT_TRUE(r->moved);
  EXPECT_THAT(MustRun({"sgdisk", "-v", img}), ::testing::HasSubstr("No problems found."));

  uint64_t last = 200 * kMiB / 512 - 1;
  std::string backup = ReadBytes(img, last * 512, 512);
  ASSERT_EQ(backup.substr(0, 8), "EFI PART");
  EXPECT_EQ(Le64(backup, 24), last);  // MyLBA
  EXPECT_EQ(Le64(backup, 32), 1u);    // AlternateLBA: the primary
  std::string primary = ReadBytes(img, 512, 512);
  EXPECT_EQ(Le64(primary, 32), last);
  EXPECT_EQ(Le64(primary, 48), last - 33);  // LastUsableLBA: before 32 sectors of entries

  ASSERT_EQ(r->partitions.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const Partition& a = (*before)[i];
    const Partition& b = r->partitions[i];
    EXPECT_EQ(a.number, b.number);
    EXPECT_EQ(a.start_sector, b.start_sector);
    EXPECT_EQ(a.size_sectors, b.size_sectors);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.uuid, b.uuid);
    EXPECT_EQ(a.name, b.name);
  }
  EXPECT_EQ(r->partitions[0].uuid, "11111111-2222-3333-4444-555555555555");
  EXPECT_EQ(r->partitions[0].name, "EFI System");
  EXPECT_EQ(r->partitions[0].type, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
  EXPECT_EQ(r->partitions[2].name, "root fs");
  EXPECT_THAT(MustRun({"sgdisk", "-p", img}),
              ::testing::HasSubstr("Disk identifier (GUID): 41111111-2222-3333-4444-555555555555"));

  // Again: nothing to move, nothing written.
  std::string hash = HashFile(img);
  auto again = RelocateBackupGpt(FileDisk(img));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->moved);
  EXPECT_EQ(HashFile(img), hash);
}

TEST(DiskGpt, MbrImagesAreLeftAlone) {
  TempDir dir;
  std::string img = dir / "mbr.img";
  MakeFile(img, 40 * kMiB);
  testing::WriteMbr(img, {{0x83, 2048, 20480, true}, {0x83, 22528, 20480}});
  ::truncate(img.c_str(), 100 * kMiB);
  std::string hash = HashFile(img);
  auto r = RelocateBackupGpt(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->gpt);
  EXPECT_EQ(HashFile(img), hash);
}

void Scribble(const std::string& path, uint64_t offset) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  uint8_t junk[8] = {'X', 'X', 'X', 'X', 'X', 'X', 'X', 'X'};
  ASSERT_TRUE(PwriteAll(fd.get(), junk, offset).ok());
}

TEST(DiskGpt, AMissingBackupIsRebuiltFromThePrimary) {
  TempDir dir;
  std::string img = dir / "nobackup.img";
  MakeGptImage(img);
  Scribble(img, 40 * kMiB - 512);  // the backup header's signature
  ::truncate(img.c_str(), 100 * kMiB);
  auto r = RelocateBackupGpt(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->moved);
  EXPECT_EQ(r->partitions.size(), 3u);
  EXPECT_THAT(MustRun({"sgdisk", "-v", img}), ::testing::HasSubstr("No problems found."));
}

TEST(DiskGpt, NoValidGptHeaderBehindAProtectiveMbrFailsWithTheCatalogueMessage) {
  TempDir dir;
  std::string img = dir / "bad.img";
  MakeGptImage(img);
  Scribble(img, 512);              // primary header signature
  Scribble(img, 40 * kMiB - 512);  // backup header signature
  ::truncate(img.c_str(), 100 * kMiB);
  std::string hash = HashFile(img);
  auto r = RelocateBackupGpt(FileDisk(img));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "Can not move backup GPT data structures to the end of disk.");
  EXPECT_THAT(r.status().detail(),
              ::testing::HasSubstr("has a protective MBR but neither GPT header is valid"));
  EXPECT_EQ(HashFile(img), hash);
}

TEST(DiskGpt, RelocationOfAMissingFileFailsWithTheCatalogueMessage) {
  Disk d;
  d.path = "/nonexistent/disk.img";
  d.is_file = true;
  auto r = RelocateBackupGpt(d);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "Can not move backup GPT data structures to the end of disk.");
  EXPECT_THAT(r.status().detail(), ::testing::HasSubstr("opening /nonexistent/disk.img"));
}

TEST(DiskConfigPartition, GptGetsA64MiBLinuxPartitionNamedConfig2AtTheEnd) {
  TempDir dir;
  std::string img = dir / "disk.img";
  MakeGptImage(img);
  ::truncate(img.c_str(), 200 * kMiB);
  ASSERT_TRUE(RelocateBackupGpt(FileDisk(img)).ok());
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->reused);
  const Partition& p = r->partition;
  EXPECT_EQ(p.number, 4);
  EXPECT_EQ(p.size_bytes(), 64 * kMiB);
  EXPECT_EQ(p.type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
  EXPECT_EQ(p.name, "config-2");
  EXPECT_EQ(p.start_sector % 2048, 0u);
  uint64_t last_usable = 200 * kMiB / 512 - 34;
  EXPECT_LE(p.start_sector + p.size_sectors - 1, last_usable);
  EXPECT_GT(p.start_sector + p.size_sectors - 1 + 2048, last_usable);  // at the end
  EXPECT_THAT(p.uuid, ::testing::MatchesRegex(
                          "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"));
  EXPECT_THAT(MustRun({"sgdisk", "-v", img}), ::testing::HasSubstr("No problems found."));
  std::string info = MustRun({"sgdisk", "-i", "4", img});
  EXPECT_THAT(info, ::testing::HasSubstr("Partition name: 'config-2'"));
  EXPECT_THAT(info, ::testing::HasSubstr("Partition unique GUID: " + p.uuid));

  // A second call finds it: reused, not duplicated, nothing written.
  std::string hash = HashFile(img);
  auto again = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->reused);
  EXPECT_EQ(again->partition.number, 4);
  EXPECT_EQ(HashFile(img), hash);
  auto parts = ReadPartitions(FileDisk(img));
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(parts->size(), 4u);
}

TEST(DiskConfigPartition, EachDiskGetsAFreshPartitionGuid) {
  TempDir dir;
  std::string a = dir / "a.img", b = dir / "b.img";
  for (const std::string& img : {a, b}) {
    MakeGptImage(img);
    ::truncate(img.c_str(), 120 * kMiB);
    ASSERT_TRUE(RelocateBackupGpt(FileDisk(img)).ok());
  }
  auto pa = EnsureConfigDrivePartition(FileDisk(a));
  auto pb = EnsureConfigDrivePartition(FileDisk(b));
  ASSERT_TRUE(pa.ok() && pb.ok());
  EXPECT_NE(pa->partition.uuid, pb->partition.uuid);
}

TEST(DiskConfigPartition, ImageWithItsOwnConfig2PartitionIsReused) {
  TempDir dir;
  std::string img = dir / "disk.img";
  MakeFile(img, 60 * kMiB);
  MustRun({"sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:+8M", "-c2:config-2", "-n3:0:0", img});
  ::truncate(img.c_str(), 200 * kMiB);
  ASSERT_TRUE(RelocateBackupGpt(FileDisk(img)).ok());
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->reused);
  EXPECT_EQ(r->partition.number, 2);
  EXPECT_EQ(ReadPartitions(FileDisk(img))->size(), 3u);
}

TEST(DiskConfigPartition, MbrGetsType0cInAFreePrimarySlot) {
  TempDir dir;
  std::string img = dir / "mbr.img";
  MakeFile(img, 40 * kMiB);
  testing::WriteMbr(img, {{0x83, 2048, 20480, true}, {0x82, 22528, 20480}});
  ::truncate(img.c_str(), 200 * kMiB);
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->partition.number, 3);
  EXPECT_EQ(r->partition.type, "0x0c");
  EXPECT_EQ(r->partition.size_bytes(), 64 * kMiB);
  EXPECT_EQ(r->partition.start_sector + r->partition.size_sectors, 200 * kMiB / 512);
  std::string dump = MustRun({"sfdisk", "-d", img});
  EXPECT_THAT(dump, ::testing::HasSubstr("start=      278528, size=      131072, type=c"));
  EXPECT_THAT(dump,
              ::testing::HasSubstr("start=        2048, size=       20480, type=83, bootable"));
}

TEST(DiskConfigPartition, MbrWithAllFourSlotsUsedIsRefusedAndUntouched) {
  TempDir dir;
  std::string img = dir / "mbr4.img";
  MakeFile(img, 200 * kMiB);
  testing::WriteMbr(
      img, {{0x83, 2048, 20480}, {0x83, 22528, 20480}, {0x83, 43008, 20480}, {0x83, 63488, 20480}});
  std::string hash = HashFile(img);
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "Could not create configdrive on disk.");
  EXPECT_EQ(r.status().code(), Code::kUnsupported);
  EXPECT_THAT(
      r.status().detail(),
      ::testing::HasSubstr("all four primary partition slots of the MBR of " + img + " are used"));
  EXPECT_EQ(HashFile(img), hash);
}

TEST(DiskConfigPartition, NoRoomAtTheEndIsRefusedAndUntouched) {
  TempDir dir;
  std::string img = dir / "full.img";
  MakeGptImage(img, 100 * kMiB);  // root fills the disk: the image is as large as the disk
  std::string hash = HashFile(img);
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "Could not create configdrive on disk.");
  EXPECT_EQ(r.status().code(), Code::kTooBig);
  EXPECT_EQ(HashFile(img), hash);
}

TEST(DiskConfigPartition, ADiskWithoutPartitionTableIsRefused) {
  TempDir dir;
  std::string img = dir / "blank.img";
  MakeFile(img, 100 * kMiB);
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "Could not create configdrive on disk.");
  EXPECT_THAT(r.status().detail(), ::testing::HasSubstr("has no GPT or MBR partition table"));
}

TEST(DiskConfigPartition, MbrPartitionWithAConfig2FileSystemIsReused) {
  TempDir dir;
  std::string img = dir / "mbr.img";
  MakeFile(img, 60 * kMiB);
  testing::WriteMbr(img, {{0x83, 2048, 20480}, {0x0c, 22528, 20480}});
  MustRun({"mkfs.fat", "-n", "CONFIG-2", "--offset", "22528", img, "10240"});
  ASSERT_EQ(BlkidTag(img, 22528ull * 512, "LABEL"), "CONFIG-2");
  ::truncate(img.c_str(), 200 * kMiB);
  auto r = EnsureConfigDrivePartition(FileDisk(img));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->reused);
  EXPECT_EQ(r->partition.number, 2);
}

}  // namespace
}  // namespace byoi
