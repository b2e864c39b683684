// Disk inventory and disk groups on fake sysfs trees (tests/unit/fixtures/sysfs-*, made by
// make_sysfs_fixtures.py).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdio>
#include <fstream>
#include <map>

#include "agent/disk/inventory.hpp"

namespace byoi {
namespace {

using ::testing::ElementsAre;

std::string Fixture(const std::string& name) {
  return std::string(BYOI_TEST_DATA) + "/unit/fixtures/sysfs-" + name;
}

Inventory Scan(const std::string& fixture, std::vector<GroupMapping> mapping = {}) {
  InventoryOptions options;
  options.sysfs_root = Fixture(fixture);
  options.mapping = std::move(mapping);
  auto inv = ScanDisks(options);
  EXPECT_TRUE(inv.ok()) << inv.status().ToString();
  return inv.ok() ? *inv : Inventory{};
}

std::vector<std::string> Names(const DiskGroup& g) {
  std::vector<std::string> out;
  for (const Disk& d : g.disks) out.push_back(d.name);
  return out;
}

std::map<std::string, std::string> Reasons(const Inventory& inv) {
  std::map<std::string, std::string> out;
  for (const ExcludedDisk& e : inv.excluded) out[e.disk.name] = e.reason;
  return out;
}

TEST(DiskInventory, HybridGroupsNvmeThenSsdBySizeThenModelThenHdd) {
  Inventory inv = Scan("hybrid");
  ASSERT_EQ(inv.groups.size(), 5u);
  EXPECT_EQ(inv.groups[0].id, 1);
  EXPECT_EQ(inv.groups[0].kind, DiskKind::kNvme);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("nvme0n1", "nvme2n1", "nvme10n1"));
  EXPECT_EQ(inv.groups[0].model, "SAMSUNG MZQL21T9HCJR-00A07");
  EXPECT_EQ(inv.groups[0].size_bytes, 1920383410176u);
  EXPECT_EQ(inv.groups[1].kind, DiskKind::kSsd);
  EXPECT_THAT(Names(inv.groups[1]), ElementsAre("sdd"));         // 250 GB before 480 GB
  EXPECT_THAT(Names(inv.groups[2]), ElementsAre("sda", "sdb"));  // INTEL before Micron
  EXPECT_EQ(inv.groups[2].model, "INTEL SSDSC2KB480G8");
  EXPECT_THAT(Names(inv.groups[3]), ElementsAre("sdc"));
  EXPECT_EQ(inv.groups[4].kind, DiskKind::kHdd);
  EXPECT_THAT(Names(inv.groups[4]), ElementsAre("sde", "sdf"));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(inv.groups[i].id, i + 1);

  std::map<std::string, std::string> expected = {{"dm-0", "device-mapper device"},
                                                 {"loop0", "loop device"},
                                                 {"md127", "software RAID (md) device"},
                                                 {"ram0", "RAM disk"},
                                                 {"sr0", "optical drive"},
                                                 {"zram0", "compressed RAM disk (zram)"}};
  EXPECT_EQ(Reasons(inv), expected);
}

TEST(DiskInventory, ReadsAttributesFromSysfs) {
  Inventory inv = Scan("hybrid");
  ASSERT_GE(inv.groups.size(), 5u);
  const Disk& nvme = inv.groups[0].disks[0];
  EXPECT_EQ(nvme.path, "/dev/nvme0n1");
  EXPECT_EQ(nvme.serial, "S64GNE0R600000");
  EXPECT_EQ(nvme.wwn, "eui.36344730526000000025384100000001");
  EXPECT_EQ(nvme.transport, "nvme");
  EXPECT_EQ(nvme.dev, "259:0");
  const Disk& hdd = inv.groups[4].disks[0];
  EXPECT_EQ(hdd.vendor, "ATA");
  EXPECT_EQ(hdd.model, "HGST HUS726T4TALA6L4");
  EXPECT_EQ(hdd.serial, "V6G0005");  // from VPD page 0x80
  EXPECT_EQ(hdd.wwn, "naa.5000cca0005");
  EXPECT_EQ(hdd.transport, "sata");
  EXPECT_TRUE(hdd.rotational);
  EXPECT_EQ(hdd.logical_sector_size, 512u);
  EXPECT_EQ(hdd.physical_sector_size, 4096u);
  EXPECT_EQ(hdd.size_bytes, 4000787030016u);
  EXPECT_FALSE(hdd.removable);
  EXPECT_FALSE(hdd.read_only);
}

TEST(DiskInventory, HddOnlyNaturalOrderAndRemovableStick) {
  Inventory inv = Scan("hdd-only");
  ASSERT_EQ(inv.groups.size(), 1u);
  EXPECT_EQ(inv.groups[0].kind, DiskKind::kHdd);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("sda", "sdb", "sdaa"));
  EXPECT_EQ(inv.groups[0].disks[0].transport, "sas");
  std::map<std::string, std::string> expected = {{"loop0", "loop device"}, {"sdz", "removable"}};
  EXPECT_EQ(Reasons(inv), expected);
}

TEST(DiskInventory, BmcVirtualMediaReadOnlyAndZeroSizeAreExcluded) {
  Inventory inv = Scan("bmc");
  ASSERT_EQ(inv.groups.size(), 1u);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("sda"));
  std::map<std::string, std::string> expected = {
      {"sdb", "BMC virtual media"}, {"sdc", "BMC virtual media"}, {"sdd", "BMC virtual media"},
      {"sde", "BMC virtual media"}, {"sdf", "BMC virtual media"}, {"sdg", "BMC virtual media"},
      {"sdh", "removable"},         {"sdi", "read-only"},         {"sdj", "zero size"}};
  EXPECT_EQ(Reasons(inv), expected);
}

TEST(DiskInventory, MultipathPathsAreExcludedButMdMembersStay) {
  Inventory inv = Scan("multipath");
  ASSERT_EQ(inv.groups.size(), 3u);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("nvme4n1"));  // the NVMe multipath head
  EXPECT_THAT(Names(inv.groups[1]), ElementsAre("vda"));      // 20 GB before 600 GB
  EXPECT_EQ(inv.groups[1].disks[0].transport, "virtio");
  EXPECT_EQ(inv.groups[1].disks[0].serial, "virt-serial-1");
  EXPECT_EQ(inv.groups[1].disks[0].vendor, "");  // not the virtio PCI vendor id
  // sdd1 is held by md0: still a disk of the group; the safety gate refuses it when chosen.
  EXPECT_THAT(Names(inv.groups[2]), ElementsAre("sdc", "sdd"));
  std::map<std::string, std::string> expected = {{"dm-0", "device-mapper device"},
                                                 {"md0", "software RAID (md) device"},
                                                 {"nvme4c4n1", "hidden NVMe multipath path"},
                                                 {"sda", "multipath path of dm-0"},
                                                 {"sdb", "multipath path of dm-0"}};
  EXPECT_EQ(Reasons(inv), expected);
}

TEST(DiskInventory, SelectDiskTakesTheFirstDiskOrRefusesAMissingGroup) {
  Inventory inv = Scan("hybrid");
  auto d = SelectDisk(inv, 3);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->path, "/dev/sda");
  auto missing = SelectDisk(inv, 6);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_EQ(missing.status().message(), "No disk found in disk group 6.");
  EXPECT_EQ(SelectDisk(Scan("hdd-only"), 2).status().message(), "No disk found in disk group 2.");
}

TEST(DiskInventory, FindGroupOfReturnsTheWholeGroup) {
  Inventory inv = Scan("hybrid");
  auto d = SelectDisk(inv, 5);
  ASSERT_TRUE(d.ok());
  const DiskGroup* g = FindGroupOf(inv, *d);
  ASSERT_NE(g, nullptr);
  EXPECT_THAT(Names(*g), ElementsAre("sde", "sdf"));
  Disk other;
  other.name = "sdx";
  EXPECT_EQ(FindGroupOf(inv, other), nullptr);
  std::vector<Disk> rest = OtherDisksOfGroup(inv, *SelectDisk(inv, 1));
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].name, "nvme2n1");
  EXPECT_EQ(rest[1].name, "nvme10n1");
  EXPECT_TRUE(OtherDisksOfGroup(inv, other).empty());
  EXPECT_TRUE(OtherDisksOfGroup(inv, *SelectDisk(inv, 2)).empty());
}

TEST(DiskInventory, ExplicitMappingDefinesTheGroups) {
  auto mapping = ParseGroupMapping("1=sdf,/dev/sde 2=nvme10n1;3=PHYF0002,naa.55CD2E4150000001");
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  Inventory inv = Scan("hybrid", *mapping);
  ASSERT_EQ(inv.groups.size(), 3u);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("sdf", "sde"));  // mapping order, not name order
  EXPECT_EQ(inv.groups[0].kind, DiskKind::kHdd);
  EXPECT_THAT(Names(inv.groups[1]), ElementsAre("nvme10n1"));
  EXPECT_THAT(Names(inv.groups[2]), ElementsAre("sdb", "sda"));  // by serial, by WWN
  auto reasons = Reasons(inv);
  EXPECT_EQ(reasons["nvme0n1"], "not in any configured disk group");
  EXPECT_EQ(reasons["sdc"], "not in any configured disk group");
  EXPECT_EQ(reasons["loop0"], "loop device");
  EXPECT_EQ(SelectDisk(inv, 1)->path, "/dev/sdf");
}

TEST(DiskInventory, MappingNeverIncludesAnExcludedDisk) {
  auto mapping = ParseGroupMapping("1=sdh,sda 2=sdb");
  ASSERT_TRUE(mapping.ok());
  Inventory inv = Scan("bmc", *mapping);
  ASSERT_EQ(inv.groups.size(), 1u);
  EXPECT_THAT(Names(inv.groups[0]), ElementsAre("sda"));
  EXPECT_EQ(SelectDisk(inv, 2).status().message(), "No disk found in disk group 2.");
  EXPECT_EQ(Reasons(inv)["sdh"], "removable");
}

TEST(DiskInventory, MappingWithADiskInTwoGroupsIsRefused) {
  auto mapping = ParseGroupMapping("1=sda 2=sda");
  ASSERT_TRUE(mapping.ok());
  InventoryOptions options;
  options.sysfs_root = Fixture("hybrid");
  options.mapping = *mapping;
  auto inv = ScanDisks(options);
  ASSERT_FALSE(inv.ok());
  EXPECT_EQ(inv.status().code(), Code::kInvalid);
  EXPECT_EQ(inv.status().detail(), "disk group mapping: sda is in two groups");
}

TEST(DiskInventory, ParseGroupMappingRefusesBadText) {
  struct Case {
    const char* text;
    const char* detail;
  } cases[] = {
      {"sda", "disk group mapping: 'sda' is not ID=DISK[,DISK…]"},
      {"0=sda", "disk group mapping: '0' is not a group id"},
      {"x=sda", "disk group mapping: 'x' is not a group id"},
      {"1=sda 1=sdb", "disk group mapping: group 1 is given twice"},
      {"1=", "disk group mapping: group 1 names no disk"},
  };
  for (const Case& c : cases) {
    auto r = ParseGroupMapping(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalid);
    EXPECT_EQ(r.status().detail(), c.detail);
  }
  auto empty = ParseGroupMapping("  ");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(DiskInventory, MissingSysfsIsAnError) {
  InventoryOptions options;
  options.sysfs_root = "/nonexistent-sysfs";
  auto inv = ScanDisks(options);
  ASSERT_FALSE(inv.ok());
  EXPECT_EQ(inv.status().code(), Code::kIo);
}

TEST(DiskInventory, NaturalLessOrdersKernelNames) {
  EXPECT_TRUE(NaturalLess("nvme2n1", "nvme10n1"));
  EXPECT_FALSE(NaturalLess("nvme10n1", "nvme2n1"));
  EXPECT_TRUE(NaturalLess("nvme0n1", "nvme0n2"));
  EXPECT_TRUE(NaturalLess("nvme1n1", "nvme1n10"));
  EXPECT_TRUE(NaturalLess("sda", "sdb"));
  EXPECT_TRUE(NaturalLess("sdz", "sdaa"));
  EXPECT_TRUE(NaturalLess("sdb", "sdaa"));
  EXPECT_TRUE(NaturalLess("vda", "vdb"));
  EXPECT_FALSE(NaturalLess("sda", "sda"));
  EXPECT_TRUE(NaturalLess("sda", "sda1"));
  EXPECT_TRUE(NaturalLess("disk007", "disk08"));
  std::vector<std::string> names = {"nvme10n1", "nvme1n1", "nvme2n1", "nvme0n1"};
  std::sort(names.begin(), names.end(), [](auto& a, auto& b) { return NaturalLess(a, b); });
  EXPECT_THAT(names, ElementsAre("nvme0n1", "nvme1n1", "nvme2n1", "nvme10n1"));
}

TEST(DiskInventory, BmcVirtualMediaTable) {
  struct Case {
    const char* vendor;
    const char* model;
    const char* transport;
    bool bmc;
  } cases[] = {
      {"AMI", "Virtual CDROM0", "usb", true},     {"AMI", "Virtual Floppy0", "usb", true},
      {"AMI", "Virtual HDisk0", "usb", true},     {"ATEN", "Virtual CDROM", "usb", true},
      {"iDRAC", "Virtual CD", "usb", true},       {"iDRAC", "LCDRIVE", "usb", true},
      {"HP iLO", "Virtual DVD-ROM", "usb", true}, {"Cisco", "vKVM-Mapped vDVD", "usb", true},
      {"AMI", "Whatever Else", "usb", true},      {"ATEN", "Something", "sata", false},
      {"ATA", "Samsung SSD 860", "sata", false},  {"Kingston", "DataTraveler 3.0", "usb", false},
      {"QEMU", "QEMU HARDDISK", "sata", false},   {"", "", "virtio", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(IsBmcVirtualMedia(c.vendor, c.model, c.transport), c.bmc)
        << c.vendor << " / " << c.model;
  }
}

TEST(DiskInventory, DescribeTargetRegularFileAndErrors) {
  char path[] = "/tmp/byoi-disk-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 10 << 20), 0);
  close(fd);
  auto d = DescribeTarget(path);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->is_file);
  EXPECT_EQ(d->path, path);
  EXPECT_EQ(d->size_bytes, 10u << 20);
  EXPECT_EQ(d->logical_sector_size, 512u);
  unlink(path);

  auto missing = DescribeTarget("/nonexistent/disk.img");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  auto dir = DescribeTarget("/tmp");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), Code::kInvalid);
  EXPECT_EQ(dir.status().detail(), "/tmp is neither a block device nor a regular file");
}

TEST(DiskInventory, JsonListsGroupsTargetsAndExclusionReasons) {
  Inventory inv = Scan("bmc");
  boost::json::object o = InventoryToJson(inv);
  const auto& groups = o.at("groups").as_array();
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].at("id").as_int64(), 1);
  EXPECT_EQ(groups[0].at("kind").as_string(), "hdd");
  EXPECT_EQ(groups[0].at("target").as_string(), "/dev/sda");
  EXPECT_EQ(groups[0].at("disks").as_array()[0].at("serial").as_string(), "ZC1000");
  const auto& excluded = o.at("excluded").as_array();
  ASSERT_EQ(excluded.size(), 9u);
  EXPECT_EQ(excluded[0].at("name").as_string(), "sdb");
  EXPECT_EQ(excluded[0].at("reason").as_string(), "BMC virtual media");
  std::string text = InventoryToText(inv);
  EXPECT_NE(text.find("disk group 1: 1 x hdd 3.6 TiB ST4000NM0035-1V4107"), std::string::npos);
  EXPECT_NE(text.find("/dev/sdi         read-only"), std::string::npos);
}

}  // namespace
}  // namespace byoi
