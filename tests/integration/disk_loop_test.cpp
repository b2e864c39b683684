// The disk stage on real loop devices (root), with 512- and 4096-byte logical sectors: wiping,
// GPT relocation with the kernel's view synced (this kernel has no partition table parsers, so the
// BLKPG fallback does the work), the config-2 partition, the config drive read back by cloud-init's
// own ConfigDriveReader, and every safety refusal with its exact message.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/swap.h>

#include <boost/json.hpp>
#include <filesystem>

#include "agent/boot/configdrive.hpp"
#include "agent/disk/gpt.hpp"
#include "agent/disk/inventory.hpp"
#include "agent/disk/kernel_sync.hpp"
#include "agent/disk/partition_add.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/safety.hpp"
#include "agent/disk/wipe.hpp"
#include "tests/unit/disk_test_util.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;
using testing::BlkidTag;
using testing::CopyInto;
using testing::HashFile;
using ::testing::HasSubstr;
using testing::MakeFile;
using testing::MustRun;
using testing::ReadBytes;
using testing::Run;
using testing::TempDir;

constexpr uint64_t kMiB = 1 << 20;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

uint64_t SysfsNumber(const std::string& path) {
  auto t = ReadSmallFile(path);
  return t.ok() ? std::strtoull(t->c_str(), nullptr, 10) : 0;
}

// A loop device over a file in /dev/shm, detached (with its partitions) at the end.
class LoopDevice {
 public:
  LoopDevice(const std::string& file, uint32_t sector_size) {
    std::vector<std::string> argv = {"losetup", "-f", "--show"};
    if (sector_size != 512) argv.insert(argv.end(), {"-b", std::to_string(sector_size)});
    argv.push_back(file);
    path_ = Trim(MustRun(argv));
  }
  ~LoopDevice() {
    if (!path_.empty()) Run({"losetup", "-d", path_});
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }
  std::string name() const { return fs::path(path_).filename().string(); }
  Disk disk() const {
    auto d = DescribeTarget(path_);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    return d.ok() ? *d : Disk{};
  }
  std::string part(int n) const { return "/dev/" + PartitionName(name(), n); }
  std::string sysfs_part(int n) const {
    return "/sys/block/" + name() + "/" + PartitionName(name(), n);
  }

 private:
  std::string path_;
};

// Unmounts / swaps off at the end, whatever happened.
struct Cleanup {
  std::vector<std::string> mounts, swaps, dm;
  ~Cleanup() {
    for (const auto& m : mounts) ::umount2(m.c_str(), MNT_DETACH);
    for (const auto& s : swaps) ::swapoff(s.c_str());
    for (const auto& d : dm) Run({"dmsetup", "remove", d});
  }
};

class DiskLoopTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root for loop devices";
    ss_ = GetParam();
  }
  uint64_t Lba(uint64_t bytes) const { return bytes / ss_; }

  // A 40 MiB GPT image for this sector size, made by sgdisk on a loop device of that size: ESP,
  // BIOS boot and root with fixed GUIDs and names; `config2` makes partition 2 named config-2.
  std::string MakeGptImage(bool config2 = false) {
    std::string img = dir_ / "image.gpt";
    MakeFile(img, 40 * kMiB);
    LoopDevice loop(img, ss_);
    MustRun({"sgdisk", "-n1:" + std::to_string(Lba(kMiB)) + ":+8M", "-t1:ef00", "-c1:EFI System",
             "-u1:11111111-2222-3333-4444-555555555555", "-n2:0:+4M", "-t2:8300",
             config2 ? "-c2:config-2" : "-c2:boot", "-u2:21111111-2222-3333-4444-555555555555",
             "-n3:0:0", "-t3:8300", "-c3:root", "-u3:31111111-2222-3333-4444-555555555555",
             loop.path()});
    return img;
  }

  std::string MakeMbrImage(int partitions) {
    std::string img = dir_ / "image.mbr";
    MakeFile(img, 60 * kMiB);
    std::vector<testing::MbrEntry> entries;
    for (int i = 0; i < partitions; ++i) {
      entries.push_back({static_cast<uint8_t>(i == 0 ? 0x83 : 0x82),
                         static_cast<uint32_t>(Lba(kMiB + i * 10 * kMiB)),
                         static_cast<uint32_t>(Lba(10 * kMiB)), i == 0});
    }
    testing::WriteMbr(img, entries);
    return img;
  }

  // The disk: a larger loop device that still carries an old GPT over its whole size.
  std::unique_ptr<LoopDevice> MakeDisk(uint64_t size = 200 * kMiB) {
    std::string file = dir_ / ("disk" + std::to_string(disks_++));
    MakeFile(file, size);
    auto loop = std::make_unique<LoopDevice>(file, ss_);
    MustRun({"sgdisk", "-n1:0:+20M", "-c1:old", "-n2:0:0", "-c2:old-data", loop->path()});
    return loop;
  }

  // Reads the config drive at `offset` of `device` with mtools, then with cloud-init's reader.
  boost::json::object ReadWithCloudInit(const std::string& device, uint64_t offset) {
    TempDir out;
    MustRun({"mcopy", "-s", "-n", "-i", device + "@@" + std::to_string(offset), "::openstack",
             out.path() + "/"});
    static const char* kReader = R"(
import base64, json, sys
from cloudinit.sources.helpers import openstack
r = openstack.ConfigDriveReader(sys.argv[1]).read_v2()
md = r["metadata"]
ud = r.get("userdata", b"")
if isinstance(ud, str):
    ud = ud.encode()
print(json.dumps({"hostname": md.get("local-hostname"), "instance_id": md.get("instance-id"),
                  "public_keys": md.get("public_keys"), "keys": md.get("keys"),
                  "meta": md.get("meta"), "userdata": base64.b64encode(ud).decode(),
                  "vendordata": r.get("vendordata")}))
)";
    std::string json = MustRun({"/usr/bin/python3", "-c", kReader, out.path()});
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(json, ec);
    EXPECT_FALSE(ec) << json;
    return ec ? boost::json::object{} : v.as_object();
  }

  void ExpectCloudInitSees(const std::string& device, uint64_t offset,
                           const ConfigDriveContent& c) {
    boost::json::object got = ReadWithCloudInit(device, offset);
    EXPECT_EQ(got["hostname"], boost::json::value(c.hostname));
    EXPECT_EQ(got["instance_id"], boost::json::value(c.uuid));
    EXPECT_EQ(got["public_keys"], boost::json::parse(R"({"default": ")" + c.ssh_key + R"("})"));
    EXPECT_EQ(got["keys"].as_array().at(0).at("data"), boost::json::value(c.ssh_key));
    EXPECT_EQ(got["meta"], boost::json::parse(R"({"role": "web", "tier": "front"})"));
    std::string b64 = Trim(MustRun({"/usr/bin/python3", "-c",
                                    "import base64,sys; print(base64.b64encode(open(sys.argv[1],"
                                    "'rb').read()).decode())",
                                    WriteTemp(*c.user_data)}));
    EXPECT_EQ(got["userdata"], boost::json::value(b64));
    EXPECT_EQ(got["vendordata"], boost::json::object{});
  }

  std::string WriteTemp(const std::string& data) {
    std::string p = dir_ / ("blob" + std::to_string(disks_++));
    MakeFile(p, 0);
    UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CLOEXEC));
    EXPECT_TRUE(
        PwriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(data.data()), data.size()}, 0).ok());
    return p;
  }

  ConfigDriveContent Content(std::string user_data) {
    ConfigDriveContent c;
    c.uuid = NewUuid();
    c.hostname = "web-1";
    c.ssh_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host";
    c.meta = {{"role", "web"}, {"tier", "front"}};
    c.user_data = std::move(user_data);
    return c;
  }

  void ExpectKernelHas(const LoopDevice& loop, const std::vector<Partition>& parts) {
    for (const Partition& p : parts) {
      std::string dir = loop.sysfs_part(p.number);
      EXPECT_EQ(SysfsNumber(dir + "/start"), p.offset_bytes() / 512) << dir;
      EXPECT_EQ(SysfsNumber(dir + "/size"), p.size_bytes() / 512) << dir;
      EXPECT_TRUE(fs::exists(loop.part(p.number))) << loop.part(p.number);
    }
    EXPECT_FALSE(fs::exists(loop.sysfs_part(static_cast<int>(parts.size()) + 1)));
  }

  uint32_t ss_ = 512;
  TempDir dir_;
  int disks_ = 0;
};

TEST_P(DiskLoopTest, GptImageGetsItsBackupMovedAndAConfigDriveCloudInitReads) {
  std::string image = MakeGptImage();
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  EXPECT_EQ(disk.logical_sector_size, ss_);
  ASSERT_TRUE(CheckNotInUse(disk).ok());
  {
    auto fd = OpenDiskExclusive(disk, O_RDWR);
    ASSERT_TRUE(fd.ok()) << fd.status().ToString();
    auto wiped = WipeSignatures(disk, fd->get());
    ASSERT_TRUE(wiped.ok()) << wiped.status().ToString();
  }
  CopyInto(image, loop->path());
  auto before = ReadPartitions(disk);
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before->size(), 3u);

  auto moved = RelocateBackupGpt(disk);
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_TRUE(moved->gpt);
  EXPECT_TRUE(moved->moved);
  EXPECT_THAT(MustRun({"sgdisk", "-v", loop->path()}), HasSubstr("No problems found."));
  uint64_t last = disk.size_bytes / ss_ - 1;
  EXPECT_EQ(ReadBytes(loop->path(), last * ss_, 8), "EFI PART");
  ASSERT_EQ(moved->partitions.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(moved->partitions[i].start_sector, (*before)[i].start_sector);
    EXPECT_EQ(moved->partitions[i].size_sectors, (*before)[i].size_sectors);
    EXPECT_EQ(moved->partitions[i].uuid, (*before)[i].uuid);
    EXPECT_EQ(moved->partitions[i].name, (*before)[i].name);
    EXPECT_EQ(moved->partitions[i].device, loop->part(static_cast<int>(i) + 1));
  }
  EXPECT_EQ(moved->partitions[2].uuid, "31111111-2222-3333-4444-555555555555");
  ExpectKernelHas(*loop, moved->partitions);

  auto cfg = EnsureConfigDrivePartition(disk);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_FALSE(cfg->reused);
  const Partition& p = cfg->partition;
  EXPECT_EQ(p.number, 4);
  EXPECT_EQ(p.size_bytes(), 64 * kMiB);
  EXPECT_EQ(p.name, "config-2");
  EXPECT_EQ(p.type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
  EXPECT_EQ(p.device, loop->part(4));
  EXPECT_GT(p.start_sector, moved->partitions[2].start_sector);
  auto all = ReadPartitions(disk);
  ASSERT_TRUE(all.ok());
  ExpectKernelHas(*loop, *all);

  ConfigDriveContent content = Content("#cloud-config\npackages: [nginx]\n");
  Status s = WriteConfigDrive(disk, p, content);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(BlkidTag(loop->path(), p.offset_bytes(), "TYPE"), "vfat");
  EXPECT_EQ(BlkidTag(loop->path(), p.offset_bytes(), "LABEL"), "config-2");
  EXPECT_EQ(BlkidTag(loop->part(4), 0, "LABEL"), "config-2");  // through the kernel's node too
  EXPECT_EQ(BlkidTag(loop->path(), p.offset_bytes(), "BLOCK_SIZE"), std::to_string(ss_));
  ExpectCloudInitSees(loop->path(), p.offset_bytes(), content);
  EXPECT_THAT(MustRun({"sgdisk", "-v", loop->path()}), HasSubstr("No problems found."));
  // The image's partitions kept their bytes (spot check: the ESP's first MiB).
  EXPECT_EQ(ReadBytes(loop->path(), (*before)[0].offset_bytes(), kMiB),
            ReadBytes(image, (*before)[0].offset_bytes(), kMiB));
}

TEST_P(DiskLoopTest, GzipUserDataReachesCloudInitAsIs) {
  std::string image = MakeGptImage();
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  CopyInto(image, loop->path());
  ASSERT_TRUE(RelocateBackupGpt(disk).ok());
  auto cfg = EnsureConfigDrivePartition(disk);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  std::string text = WriteTemp("#cloud-config\nruncmd: [[touch, /tmp/ok]]\n");
  std::string gz = MustRun({"gzip", "-9", "-n", "-c", text});
  ASSERT_EQ(gz.substr(0, 2), "\x1f\x8b");
  ConfigDriveContent content = Content(gz);
  ASSERT_TRUE(WriteConfigDrive(disk, cfg->partition, content).ok());
  ExpectCloudInitSees(loop->path(), cfg->partition.offset_bytes(), content);
}

TEST_P(DiskLoopTest, ImageCarryingAConfig2PartitionIsReusedNotDuplicated) {
  std::string image = MakeGptImage(/*config2=*/true);
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  CopyInto(image, loop->path());
  ASSERT_TRUE(RelocateBackupGpt(disk).ok());
  auto cfg = EnsureConfigDrivePartition(disk);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_TRUE(cfg->reused);
  EXPECT_EQ(cfg->partition.number, 2);
  EXPECT_EQ(cfg->partition.device, loop->part(2));
  auto all = ReadPartitions(disk);
  ASSERT_EQ(all->size(), 3u);
  ExpectKernelHas(*loop, *all);
  ConfigDriveContent content = Content("#cloud-config\n");
  ASSERT_TRUE(WriteConfigDrive(disk, cfg->partition, content).ok());
  ExpectCloudInitSees(loop->path(), cfg->partition.offset_bytes(), content);
}

TEST_P(DiskLoopTest, MbrImageGetsAType0cConfigDrive) {
  std::string image = MakeMbrImage(2);
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  CopyInto(image, loop->path());
  auto moved = RelocateBackupGpt(disk);
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_FALSE(moved->gpt);
  ExpectKernelHas(*loop, moved->partitions);  // the kernel still learns the MBR partitions
  auto cfg = EnsureConfigDrivePartition(disk);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_EQ(cfg->partition.number, 3);
  EXPECT_EQ(cfg->partition.type, "0x0c");
  EXPECT_EQ(cfg->partition.size_bytes(), 64 * kMiB);
  EXPECT_EQ(cfg->partition.offset_bytes() + 64 * kMiB, disk.size_bytes);
  EXPECT_EQ(cfg->partition.device, loop->part(3));
  ExpectKernelHas(*loop, *ReadPartitions(disk));
  ConfigDriveContent content = Content("#!/bin/sh\necho hi\n");
  ASSERT_TRUE(WriteConfigDrive(disk, cfg->partition, content).ok());
  EXPECT_EQ(BlkidTag(loop->part(3), 0, "LABEL"), "config-2");
  ExpectCloudInitSees(loop->path(), cfg->partition.offset_bytes(), content);
}

TEST_P(DiskLoopTest, MbrWithFourPrimaryPartitionsIsRefusedAndTheDiskUntouched) {
  std::string image = MakeMbrImage(4);
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  CopyInto(image, loop->path());
  std::string hash = HashFile(loop->path());
  auto cfg = EnsureConfigDrivePartition(disk);
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().message(), "Could not create configdrive on disk.");
  EXPECT_THAT(cfg.status().detail(), HasSubstr("all four primary partition slots"));
  EXPECT_EQ(HashFile(loop->path()), hash);
}

TEST_P(DiskLoopTest, WipeErasesOldTablesAndFileSystems) {
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  auto old = RelocateBackupGpt(disk);  // makes the kernel see the old partitions
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  ASSERT_EQ(old->partitions.size(), 2u);
  MustRun({"mkfs.ext4", "-q", "-L", "oldroot", loop->part(1)});
  MustRun({"mkfs.fat", "-n", "config-2", loop->part(2)});
  uint64_t off1 = old->partitions[0].offset_bytes(), off2 = old->partitions[1].offset_bytes();
  ASSERT_EQ(BlkidTag(loop->path(), off1, "TYPE"), "ext4");
  ASSERT_EQ(BlkidTag(loop->path(), off2, "LABEL"), "config-2");

  auto fd = OpenDiskExclusive(disk, O_RDWR);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  auto wiped = WipeSignatures(disk, fd->get());
  ASSERT_TRUE(wiped.ok()) << wiped.status().ToString();
  std::vector<std::string> types;
  for (const Signature& s : *wiped) types.push_back(s.type);
  EXPECT_THAT(types, ::testing::IsSupersetOf({"ext4", "vfat", "gpt"}));
  EXPECT_EQ(BlkidTag(loop->path(), off1, "TYPE"), "");
  EXPECT_EQ(BlkidTag(loop->path(), off2, "TYPE"), "");
  EXPECT_FALSE(testing::Run({"blkid", "-p", loop->path()}).ok);  // nothing left on the whole disk
  EXPECT_EQ(ReadBytes(loop->path(), disk.size_bytes - kMiB, kMiB), std::string(kMiB, '\0'));
  EXPECT_EQ(ReadBytes(loop->path(), 0, kMiB), std::string(kMiB, '\0'));
}

TEST_P(DiskLoopTest, StaleConfigDrivesOnTheOtherDisksOfTheGroupAreErased) {
  std::string image = MakeGptImage();
  auto other = MakeDisk();
  Disk b = other->disk();
  CopyInto(image, other->path());
  auto moved = RelocateBackupGpt(b);
  ASSERT_TRUE(moved.ok());
  auto cfg = EnsureConfigDrivePartition(b);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  ASSERT_TRUE(WriteConfigDrive(b, cfg->partition, Content("x")).ok());
  ASSERT_EQ(BlkidTag(b.path, cfg->partition.offset_bytes(), "LABEL"), "config-2");
  MustRun({"mkfs.ext4", "-q", "-L", "keepme", other->part(3)});

  auto whole = MakeDisk(80 * kMiB);
  Disk c = whole->disk();
  MustRun({"wipefs", "-a", "-q", c.path});
  MustRun({"mkfs.fat", "-I", "-n", "CONFIG-2", c.path});
  ASSERT_EQ(BlkidTag(c.path, 0, "LABEL"), "CONFIG-2");

  auto notes = RemoveStaleConfigDrives({b, c});
  ASSERT_TRUE(notes.ok()) << notes.status().ToString();
  ASSERT_EQ(notes->size(), 2u);
  EXPECT_THAT((*notes)[0], HasSubstr("erased config-2 vfat on " + b.path + " partition 4"));
  EXPECT_THAT((*notes)[1], HasSubstr("erased config-2 vfat on the whole of " + c.path));
  EXPECT_EQ(BlkidTag(b.path, cfg->partition.offset_bytes(), "LABEL"), "");
  EXPECT_EQ(BlkidTag(c.path, 0, "LABEL"), "");
  EXPECT_EQ(BlkidTag(b.path, moved->partitions[2].offset_bytes(), "LABEL"), "keepme");
  EXPECT_THAT(MustRun({"sgdisk", "-v", b.path}), HasSubstr("No problems found."));
}

TEST_P(DiskLoopTest, MountedPartitionIsRefusedAndTheDiskUntouched) {
  std::string image = MakeGptImage();
  auto loop = MakeDisk();
  Disk disk = loop->disk();
  CopyInto(image, loop->path());
  ASSERT_TRUE(RelocateBackupGpt(disk).ok());  // BLKPG: /dev/loopNp3 appears
  MustRun({"mkfs.ext4", "-q", loop->part(3)});
  TempDir mnt;
  Cleanup cleanup;
  ASSERT_EQ(::mount(loop->part(3).c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0)
      << std::strerror(errno);
  cleanup.mounts.push_back(mnt.path());
  // The mounted ext4 writes to its own partition; everything else must stay as it is.
  auto parts = ReadPartitions(disk);
  ASSERT_TRUE(parts.ok());
  uint64_t p3 = (*parts)[2].offset_bytes();
  std::string head = ReadBytes(loop->path(), 0, p3);
  std::string tail = ReadBytes(loop->path(), disk.size_bytes - kMiB, kMiB);

  Status s = CheckNotInUse(disk);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kBusy);
  EXPECT_EQ(s.message(), "Disk " + loop->path() + " is in use: " + loop->part(3) +
                             " is mounted on " + mnt.path() + ".");
  auto fd = OpenDiskExclusive(disk, O_RDWR);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().message(),
            "Disk " + loop->path() + " is in use: another program holds it open exclusively.");
  auto reloc = RelocateBackupGpt(disk);
  ASSERT_FALSE(reloc.ok());
  EXPECT_EQ(reloc.status().message(),
            "Disk " + loop->path() + " is in use: another program holds it open exclusively.");
  EXPECT_EQ(ReadBytes(loop->path(), 0, p3), head);
  EXPECT_EQ(ReadBytes(loop->path(), disk.size_bytes - kMiB, kMiB), tail);
}

TEST_P(DiskLoopTest, MountedWholeDiskIsRefused) {
  auto loop = MakeDisk(64 * kMiB);
  Disk disk = loop->disk();
  MustRun({"mkfs.ext4", "-q", "-F", loop->path()});
  TempDir mnt;
  Cleanup cleanup;
  ASSERT_EQ(::mount(loop->path().c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0);
  cleanup.mounts.push_back(mnt.path());
  Status s = CheckNotInUse(disk);
  EXPECT_EQ(s.message(), "Disk " + loop->path() + " is in use: " + loop->path() +
                             " is mounted on " + mnt.path() + ".");
}

TEST_P(DiskLoopTest, ActiveSwapIsRefused) {
  auto loop = MakeDisk(64 * kMiB);
  Disk disk = loop->disk();
  MustRun({"mkswap", "-q", loop->path()});
  Cleanup cleanup;
  ASSERT_EQ(::swapon(loop->path().c_str(), 0), 0) << std::strerror(errno);
  cleanup.swaps.push_back(loop->path());
  Status s = CheckNotInUse(disk);
  EXPECT_EQ(s.message(),
            "Disk " + loop->path() + " is in use: " + loop->path() + " is an active swap.");
}

TEST_P(DiskLoopTest, LoopDeviceOnTopIsRefused) {
  auto loop = MakeDisk(64 * kMiB);
  Disk disk = loop->disk();
  LoopDevice upper(loop->path(), ss_);
  Status s = CheckNotInUse(disk);
  EXPECT_EQ(s.message(), "Disk " + loop->path() + " is in use: " + loop->path() + " backs " +
                             upper.path() + ".");
}

TEST_P(DiskLoopTest, DeviceMapperHolderIsRefused) {
  if (!testing::Run({"dmsetup", "version"}).ok) {
    GTEST_SKIP() << "no device-mapper in this kernel (holders are covered by the unit tests)";
  }
  auto loop = MakeDisk(64 * kMiB);
  Disk disk = loop->disk();
  std::string name = "byoi-test-" + loop->name();
  Cleanup cleanup;
  MustRun({"dmsetup", "create", name, "--table",
           "0 " + std::to_string(disk.size_bytes / 512) + " linear " + loop->path() + " 0"});
  cleanup.dm.push_back(name);
  Status s = CheckNotInUse(disk);
  EXPECT_THAT(s.message(), HasSubstr("Disk " + loop->path() + " is in use: " + loop->path() +
                                     " is held by dm-"));
  EXPECT_THAT(s.message(), HasSubstr("(device-mapper " + name + ")."));
}

TEST_P(DiskLoopTest, DescribeTargetReadsTheLoopDevice) {
  auto loop = MakeDisk(96 * kMiB);
  Disk disk = loop->disk();
  EXPECT_EQ(disk.name, loop->name());
  EXPECT_EQ(disk.path, loop->path());
  EXPECT_EQ(disk.size_bytes, 96 * kMiB);
  EXPECT_EQ(disk.logical_sector_size, ss_);
  EXPECT_FALSE(disk.is_file);
  EXPECT_EQ(ExclusionReason(disk), "loop device");  // the inventory never offers it
  EXPECT_EQ(ProbeDeviceContents(loop->path()).partition_table, "gpt");
  ASSERT_TRUE(RelocateBackupGpt(disk).ok());
  auto part = DescribeTarget(loop->part(1));
  ASSERT_FALSE(part.ok());
  EXPECT_EQ(part.status().detail(), loop->part(1) + " is a partition; give the whole disk");
}

INSTANTIATE_TEST_SUITE_P(SectorSizes, DiskLoopTest, ::testing::Values(512u, 4096u),
                         [](const auto& info) { return "Sector" + std::to_string(info.param); });

}  // namespace
}  // namespace byoi
