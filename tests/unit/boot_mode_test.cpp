#include "agent/boot/boot_mode.hpp"

#include <gtest/gtest.h>

#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::BuildDisk;
using testing::DiskSpec;
using testing::TempDir;

TEST(BootMode, UefiWhenTheEfivarsDirectoryExists) {
  TempDir dir;
  EXPECT_EQ(DetectBootMode(dir.path()), BootMode::kUefi);
  EXPECT_EQ(DetectBootMode(dir / "absent"), BootMode::kLegacy);
  testing::WriteAll(dir / "file", "x");
  EXPECT_EQ(DetectBootMode(dir / "file"), BootMode::kLegacy);
  EXPECT_EQ(BootModeName(BootMode::kUefi), "UEFI");
  EXPECT_EQ(BootModeName(BootMode::kLegacy), "legacy BIOS");
  EXPECT_EQ(LegacySkipReason("/sys/firmware/efi/efivars"),
            "legacy BIOS boot (no /sys/firmware/efi/efivars): the image's own boot code starts it");
}

TEST(BootMode, MbrBootCodeIsAnyNonZeroByteBeforeTheDiskSignature) {
  std::vector<uint8_t> sector(512, 0);
  sector[440] = 0xcd;  // the disk signature is not code
  sector[510] = 0x55;
  EXPECT_FALSE(HasMbrBootCode(sector));
  sector[439] = 0x90;
  EXPECT_TRUE(HasMbrBootCode(sector));
}

TEST(BootMode, LegacyServerWarnsAboutAnImageWithoutBootCode) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDisk(disk, DiskSpec{});  // sfdisk writes a protective MBR without code
  auto warning = BootModeWarning(BootMode::kLegacy, disk);
  ASSERT_TRUE(warning.ok());
  EXPECT_EQ(*warning,
            "this server boots in legacy BIOS mode but the image has no MBR boot code: it will "
            "probably not boot");
  std::string bytes = testing::ReadAll(disk);
  bytes[0] = '\xeb';  // a jump, as GRUB's boot.img starts
  testing::WriteAll(disk, bytes);
  warning = BootModeWarning(BootMode::kLegacy, disk);
  ASSERT_TRUE(warning.ok());
  EXPECT_EQ(*warning, "");
}

TEST(BootMode, UefiServerWarnsAboutAnImageWithoutEsp) {
  TempDir dir;
  std::string with_esp = dir / "esp.img";
  BuildDisk(with_esp, DiskSpec{});
  auto warning = BootModeWarning(BootMode::kUefi, with_esp);
  ASSERT_TRUE(warning.ok());
  EXPECT_EQ(*warning, "");

  std::string without = dir / "linux.img";
  DiskSpec spec;
  spec.esp_type = false;
  BuildDisk(without, spec);
  warning = BootModeWarning(BootMode::kUefi, without);
  ASSERT_TRUE(warning.ok());
  EXPECT_EQ(*warning,
            "this server boots in UEFI mode but the image has no usable EFI system "
            "partition (no EFI system partition on " +
                without + "): it will probably not boot");
}

TEST(BootMode, AnUnreadableDiskIsAnError) {
  EXPECT_EQ(BootModeWarning(BootMode::kLegacy, "/nonexistent").status().code(), Code::kIo);
  EXPECT_EQ(BootModeWarning(BootMode::kUefi, "/nonexistent").status().code(), Code::kIo);
}

}  // namespace
}  // namespace byoi
