#include <gtest/gtest.h>

#include "agent/boot/reboot.hpp"
#include "tests/common/recording_power_control.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::BuildDisk;
using testing::DiskSpec;
using testing::TempDir;
using Calls = std::vector<std::string>;

TEST(RebootMode, ParseAndPrint) {
  for (auto m :
       {RebootMode::kNone, RebootMode::kReboot, RebootMode::kPowerOff, RebootMode::kKexec}) {
    auto parsed = ParseRebootMode(RebootModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  for (const char* bad : {"", "Reboot", "halt", "power-off"}) {
    EXPECT_EQ(ParseRebootMode(bad).status().code(), Code::kInvalid) << bad;
  }
}

TEST(Reboot, NoneDoesNothing) {
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kNone, "/dev/sda");
  EXPECT_EQ(plan.action, PowerAction::kNone);
  EXPECT_EQ(plan.note, "no reboot (--reboot none)");
  EXPECT_TRUE(Reboot(power, plan, "/dev/sda").ok());
  EXPECT_TRUE(power.calls.empty());
}

TEST(Reboot, RebootSyncsFlushesTheDiskThenRestarts) {
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kReboot, "/dev/sda");
  EXPECT_EQ(plan.note, "rebooting");
  EXPECT_TRUE(Reboot(power, plan, "/dev/sda").ok());
  EXPECT_EQ(power.calls, (Calls{"sync", "flush /dev/sda", "act restart"}));
}

TEST(Reboot, PowerOffPowersOff) {
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kPowerOff, "/dev/sda");
  EXPECT_TRUE(Reboot(power, plan, "/dev/sda").ok());
  EXPECT_EQ(power.calls, (Calls{"sync", "flush /dev/sda", "act power-off"}));
}

TEST(Reboot, AFlushFailureStopsBeforeActing) {
  RecordingPowerControl power;
  power.flush_result = Status::Error(Code::kIo, "flushing the buffers of /dev/sda: I/O error");
  RebootPlan plan = PrepareReboot(power, RebootMode::kReboot, "/dev/sda");
  Status s = Reboot(power, plan, "/dev/sda");
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_EQ(power.calls, (Calls{"sync", "flush /dev/sda"}));
}

TEST(Reboot, AFailedRebootCallIsReported) {
  RecordingPowerControl power;
  power.act_result = Status::Error(Code::kIo, "reboot(2): Operation not permitted");
  RebootPlan plan = PrepareReboot(power, RebootMode::kReboot, "/dev/sda");
  EXPECT_EQ(Reboot(power, plan, "/dev/sda").detail(), "reboot(2): Operation not permitted");
}

const char kEntry[] =
    "# Boot Loader Specification type #1\n"
    "title      Debian GNU/Linux 12\n"
    "version    6.1.0-13-amd64\n"
    "linux      /debian/6.1.0-13-amd64/linux\n"
    "initrd     /debian/6.1.0-13-amd64/initrd.img-6.1.0-13-amd64\n"
    "options    root=PARTUUID=abc ro\n"
    "options    console=ttyS0\n";

TEST(Reboot, KexecLoadsTheNewestBootLoaderEntryOnTheEsp) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.files = {{"EFI/systemd/systemd-bootx64.efi", "sd"},
                {"loader/entries/debian-6.1.0-10-amd64.conf", "linux /old\n"},
                {"loader/entries/debian-6.1.0-13-amd64.conf", kEntry},
                {"debian/6.1.0-13-amd64/linux", std::string(5000, 'k')},
                {"debian/6.1.0-13-amd64/initrd.img-6.1.0-13-amd64", std::string(3000, 'i')}};
  BuildDisk(disk, spec);
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kKexec, disk);
  EXPECT_EQ(plan.action, PowerAction::kKexec);
  EXPECT_EQ(plan.note, "kexec into the kernel of \\loader\\entries\\debian-6.1.0-13-amd64.conf");
  EXPECT_TRUE(Reboot(power, plan, disk).ok());
  EXPECT_EQ(power.calls,
            (Calls{"kexec-load \\loader\\entries\\debian-6.1.0-13-amd64.conf (kernel 5000 bytes, "
                   "initrd 3000 bytes, cmdline \"root=PARTUUID=abc ro console=ttyS0\")",
                   "sync", "flush " + disk, "act kexec"}));
}

TEST(Reboot, KexecWithoutAKernelOnTheEspRebootsWithANote) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.files = {{"EFI/debian/grubx64.efi", "grub"}};
  BuildDisk(disk, spec);
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kKexec, disk);
  EXPECT_EQ(plan.action, PowerAction::kRestart);
  EXPECT_EQ(plan.note,
            "kexec: no boot loader entries (\\loader\\entries) on the EFI system partition; "
            "rebooting instead");
  EXPECT_TRUE(power.calls.empty());
}

TEST(Reboot, KexecWithAMissingKernelFileRebootsWithANote) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.files = {{"loader/entries/a.conf", kEntry}};
  BuildDisk(disk, spec);
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kKexec, disk);
  EXPECT_EQ(plan.action, PowerAction::kRestart);
  EXPECT_EQ(plan.note,
            "kexec: kernel /debian/6.1.0-13-amd64/linux of \\loader\\entries\\a.conf is "
            "unreadable; rebooting instead");
}

TEST(Reboot, KexecOnADiskWithoutEspRebootsWithANote) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.esp_type = false;
  BuildDisk(disk, spec);
  RecordingPowerControl power;
  RebootPlan plan = PrepareReboot(power, RebootMode::kKexec, disk);
  EXPECT_EQ(plan.action, PowerAction::kRestart);
  EXPECT_EQ(plan.note.rfind("kexec: no EFI system partition to look for a kernel in", 0), 0u)
      << plan.note;
}

TEST(Reboot, AKexecTheKernelRefusesRebootsWithANote) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.files = {{"loader/entries/a.conf", "linux /vmlinuz\n"}, {"vmlinuz", "k"}};
  BuildDisk(disk, spec);
  RecordingPowerControl power;
  power.load_kexec_result =
      Status::Error(Code::kIo, "kexec_file_load of the kernel from x: Key was rejected by service");
  RebootPlan plan = PrepareReboot(power, RebootMode::kKexec, disk);
  EXPECT_EQ(plan.action, PowerAction::kRestart);
  EXPECT_EQ(plan.note,
            "kexec: kexec_file_load of the kernel from x: Key was rejected by service; rebooting "
            "instead");
  EXPECT_TRUE(Reboot(power, plan, disk).ok());
  EXPECT_EQ(power.calls.back(), "act restart");
}

// The real PowerControl's flush on a regular file: fsync only (no BLKFLSBUF on a file).
TEST(RealPowerControl, FlushesARegularFile) {
  TempDir dir;
  testing::WriteAll(dir / "f", "x");
  RealPowerControl power;
  EXPECT_TRUE(power.FlushBuffers(dir / "f").ok());
  EXPECT_EQ(power.FlushBuffers(dir / "absent").code(), Code::kIo);
  EXPECT_TRUE(power.Act(PowerAction::kNone).ok());
}

}  // namespace
}  // namespace byoi
