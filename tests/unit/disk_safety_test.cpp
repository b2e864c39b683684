// Safety gates on fake /proc and /sys files: every refusal with its exact catalogue message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "agent/disk/safety.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

void Write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// A scratch tree with /sys/block/sda (8:0) and partitions sda1..sda3 (8:1..8:3), an empty
// mountinfo and an empty swaps table; tests add what they need.
class SafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/byoi-safety-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    paths_.sysfs_root = (root_ / "sys").string();
    paths_.mountinfo = (root_ / "mountinfo").string();
    paths_.swaps = (root_ / "swaps").string();
    fs::path sda = root_ / "sys" / "block" / "sda";
    Write(sda / "dev", "8:0\n");
    fs::create_directories(sda / "holders");
    for (int i = 1; i <= 3; ++i) {
      fs::path p = sda / ("sda" + std::to_string(i));
      Write(p / "partition", std::to_string(i) + "\n");
      Write(p / "dev", "8:" + std::to_string(i) + "\n");
      fs::create_directories(p / "holders");
    }
    Write(root_ / "mountinfo",
          "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
          "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n");
    Write(root_ / "swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
    disk_.name = "sda";
    disk_.path = "/dev/sda";
    disk_.dev = "8:0";
    disk_.size_bytes = 100ull << 30;
  }
  void TearDown() override { fs::remove_all(root_); }

  void AddMount(const std::string& line) {
    std::ofstream(paths_.mountinfo, std::ios::app) << line << "\n";
  }

  void ExpectInUse(const std::string& message) {
    Status s = CheckNotInUse(disk_, paths_);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), Code::kBusy);
    EXPECT_EQ(s.message(), message);
  }

  fs::path root_;
  SystemPaths paths_;
  Disk disk_;
};

TEST_F(SafetyTest, AnUnusedDiskPasses) { EXPECT_TRUE(CheckNotInUse(disk_, paths_).ok()); }

TEST_F(SafetyTest, MountedPartitionIsRefused) {
  AddMount("40 27 8:2 / /boot rw,relatime shared:5 - ext4 /dev/sda2 rw");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda2 is mounted on /boot.");
}

TEST_F(SafetyTest, MountedWholeDiskIsRefused) {
  AddMount("40 27 8:0 / /mnt/raw rw - vfat /dev/sda rw");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda is mounted on /mnt/raw.");
}

TEST_F(SafetyTest, EscapedMountPointIsShownDecoded) {
  AddMount("40 27 8:3 / /mnt/my\\040disk rw - ext4 /dev/sda3 rw");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda3 is mounted on /mnt/my disk.");
}

TEST_F(SafetyTest, BtrfsMountIsFoundByItsSource) {
  // btrfs reports an anonymous device number; the source names the partition.
  AddMount("41 27 0:45 / /srv rw - btrfs /dev/sda3 rw,space_cache");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda3 is mounted on /srv.");
}

TEST_F(SafetyTest, RescueRootOnTheDiskIsRefused) {
  AddMount("50 1 8:1 / / rw - ext4 /dev/sda1 rw");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda1 holds the running system (mounted on /).");
}

TEST_F(SafetyTest, ActiveSwapIsRefused) {
  std::ofstream(paths_.swaps, std::ios::app)
      << "/dev/sda3                               partition\t8388604\t\t0\t\t-2\n";
  ExpectInUse("Disk /dev/sda is in use: /dev/sda3 is an active swap.");
}

TEST_F(SafetyTest, MdHolderOnAPartitionIsRefused) {
  Write(root_ / "sys/block/sda/sda1/holders/md0", "");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda1 is held by md0 (software RAID).");
}

TEST_F(SafetyTest, DeviceMapperHolderIsNamed) {
  Write(root_ / "sys/block/sda/holders/dm-0", "");
  Write(root_ / "sys/block/dm-0/dm/name", "vg0-root\n");
  ExpectInUse("Disk /dev/sda is in use: /dev/sda is held by dm-0 (device-mapper vg0-root).");
}

TEST_F(SafetyTest, UnreadableMountinfoRefusesRatherThanGuesses) {
  paths_.mountinfo = (root_ / "missing").string();
  Status s = CheckNotInUse(disk_, paths_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kIo);
}

TEST_F(SafetyTest, MissingSwapsTableMeansNoSwap) {
  paths_.swaps = (root_ / "no-swaps").string();
  EXPECT_TRUE(CheckNotInUse(disk_, paths_).ok());
}

TEST_F(SafetyTest, RegularFileBackingALoopDeviceIsRefused) {
  fs::path image = root_ / "disk.img";
  Write(image, "x");
  Write(root_ / "sys/block/loop3/loop/backing_file", image.string() + "\n");
  Disk file;
  file.name = "disk.img";
  file.path = image.string();
  file.is_file = true;
  Status s = CheckNotInUse(file, paths_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "Disk " + image.string() + " is in use: " + image.string() + " backs /dev/loop3.");
  fs::remove(root_ / "sys/block/loop3/loop/backing_file");
  EXPECT_TRUE(CheckNotInUse(file, paths_).ok());
}

TEST(Safety, ImageLargerThanDiskIsRefused) {
  Disk d;
  d.path = "/dev/sdb";
  d.size_bytes = 1000;
  EXPECT_TRUE(CheckImageFits(1000, d).ok());
  Status s = CheckImageFits(1001, d);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kTooBig);
  EXPECT_EQ(s.message(),
            "image provided has a size of 1001 bytes which is larger than /dev/sdb of 1000 bytes");
}

TEST(Safety, GptSectorSizeOfAnImage) {
  std::vector<uint8_t> head(8192, 0);
  EXPECT_EQ(GptSectorSize(head), 0u);
  std::memcpy(head.data() + 512, "EFI PART", 8);
  EXPECT_EQ(GptSectorSize(head), 512u);
  std::memcpy(head.data() + 4096, "EFI PART", 8);
  EXPECT_EQ(GptSectorSize(head), 0u);  // both: made for either
  std::memset(head.data() + 512, 0, 8);
  EXPECT_EQ(GptSectorSize(head), 4096u);
  EXPECT_EQ(GptSectorSize(std::span<const uint8_t>(head.data(), 600)), 0u);  // too short to see
}

TEST(Safety, GptForAnotherSectorSizeIsRefused) {
  std::vector<uint8_t> head(8192, 0);
  std::memcpy(head.data() + 512, "EFI PART", 8);
  Disk d;
  d.path = "/dev/nvme0n1";
  d.logical_sector_size = 4096;
  Status s = CheckImageSectorSize(head, d, "qcow2");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_EQ(s.message(), "Can't write qcow2 on disk.");
  EXPECT_EQ(s.detail(),
            "the image's GPT is made for 512-byte sectors but /dev/nvme0n1 has 4096-byte logical "
            "sectors");
  d.logical_sector_size = 512;
  EXPECT_TRUE(CheckImageSectorSize(head, d, "qcow2").ok());
  std::vector<uint8_t> mbr(8192, 0);
  d.logical_sector_size = 4096;
  EXPECT_TRUE(CheckImageSectorSize(mbr, d, "raw").ok());
}

}  // namespace
}  // namespace byoi
