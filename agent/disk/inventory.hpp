// Disk inventory and disk groups (docs/disks.md), for the plan step and `byoi-agent disks`.
//
// Whole disks are read from sysfs (`<sysfs_root>/block/*`); nothing is opened, so scanning is safe
// at any time. Disks that can never be a target are listed with the reason they were excluded.
// The rest are grouped by (kind, size, model) and numbered from 1: nvme before ssd before hdd,
// then by size, then model; within a group disks sort by name in natural order ("nvme2n1" before
// "nvme10n1") and the first one is the target. A configuration may instead name the disks of each
// group explicitly.
//
// The sysfs root is a parameter so that unit tests run on fixture trees
// (tests/unit/fixtures/sysfs-*/).
#pragma once

#include <boost/json/fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"

namespace byoi {

// An explicit disk group: the disks, in order (the first is the target). A selector is a kernel
// name ("sda"), a device path ("/dev/sda"), a serial number or a WWN.
struct GroupMapping {
  int group = 0;  // >= 1
  std::vector<std::string> selectors;
};

// Parses a mapping such as "1=sda,sdb 2=nvme0n1" (groups separated by blanks or ';', selectors by
// ','). Returns kInvalid with a detail naming the bad part; an empty text is an empty mapping.
Result<std::vector<GroupMapping>> ParseGroupMapping(std::string_view text);

struct InventoryOptions {
  std::string sysfs_root = "/sys";  // where block/ lives
  std::string dev_root = "/dev";    // device nodes are <dev_root>/<name>
  // Empty: automatic groups. Otherwise exactly these groups exist; usable disks that no group
  // names are listed as excluded ("not in any configured disk group").
  std::vector<GroupMapping> mapping;
  // Read each usable disk's partition table type and whole-disk signature with libblkid (opens
  // /dev/<name> read-only). Off for fixture trees, whose device paths are not theirs.
  bool probe_contents = false;
};

struct ExcludedDisk {
  Disk disk;           // as much as could be read
  std::string reason;  // "removable", "BMC virtual media", "loop device", …
};

struct DiskGroup {
  int id = 0;
  DiskKind kind = DiskKind::kHdd;
  uint64_t size_bytes = 0;
  std::string model;
  std::vector<Disk> disks;  // natural name order (automatic) or mapping order; never empty
};

struct Inventory {
  std::vector<DiskGroup> groups;       // by id
  std::vector<ExcludedDisk> excluded;  // by name
};

// Scans `<sysfs_root>/block`. Fails only when that directory cannot be read (or a mapping names a
// group twice); unreadable attributes of one disk make that disk excluded, not the scan fail.
Result<Inventory> ScanDisks(const InventoryOptions& options);

// The target of disk group `group`: its first disk. kNotFound with msg::NoDiskInGroup(group) when
// there is no such group.
Result<Disk> SelectDisk(const Inventory& inventory, int group);

// The group `disk` belongs to, or nullptr.
const DiskGroup* FindGroupOf(const Inventory& inventory, const Disk& disk);

// The disks of `target`'s group other than `target` (empty when it is in no group): where a stale
// config-2 file system must not survive (RemoveStaleConfigDrives).
std::vector<Disk> OtherDisksOfGroup(const Inventory& inventory, const Disk& target);

// Describes the target given with --disk: a block device (its whole-disk sysfs entry is read from
// `sysfs_root`; a partition is refused) or a regular file (size from stat, 512-byte sectors).
// kNotFound when the path does not exist, kInvalid for anything else (directory, partition, char
// device). Exclusion rules are not applied: --disk is the operator's explicit choice.
Result<Disk> DescribeTarget(const std::string& path, const std::string& sysfs_root = "/sys");

// Reads one whole disk `name` from `<sysfs_root>/block/<name>`; for DescribeTarget and tests.
Result<Disk> ReadSysfsDisk(const std::string& sysfs_root, const std::string& name,
                           const std::string& dev_root = "/dev");

// The reason `disk` can never be a target, or "" when it is usable (docs/disks.md).
std::string ExclusionReason(const Disk& disk);

// True when vendor/model name a BMC's virtual CD/DVD/floppy/disk (AMI, Supermicro/ATEN, iDRAC,
// iLO, Lenovo XCC, Cisco CIMC …).
bool IsBmcVirtualMedia(std::string_view vendor, std::string_view model, std::string_view transport);

// Natural order for kernel names: runs of digits compare as numbers and runs of letters by length
// first, then alphabetically, so "nvme2n1" < "nvme10n1" and "sdz" < "sdaa" (the kernel's order).
bool NaturalLess(std::string_view a, std::string_view b);

// JSON and text for `byoi-agent disks` and GET /v1/disks.
boost::json::object InventoryToJson(const Inventory& inventory);
std::string InventoryToText(const Inventory& inventory);
boost::json::object DiskToJson(const Disk& disk);

}  // namespace byoi
