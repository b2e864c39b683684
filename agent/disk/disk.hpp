// The value types the disk stage hands to the rest of the pipeline: a `Disk` (a whole block device,
// or a regular file used as a disk image) and a `Partition` on it. Both are plain copies of what
// sysfs and the partition table said when they were read; nothing here keeps a device open.
//
// The stage in pipeline order (each call opens and closes the disk itself; none may run while
// another fd of ours holds the disk with O_EXCL):
//   plan       ScanDisks + SelectDisk (or DescribeTarget for --disk), CheckNotInUse
//   verify     CheckImageFits, CheckImageSectorSize
//   write      OpenDiskExclusive + WipeSignatures, RemoveStaleConfigDrives(OtherDisksOfGroup)
//   partition  RelocateBackupGpt
//   configdrive EnsureConfigDrivePartition + WriteConfigDrive (agent/boot/configdrive.hpp)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace byoi {

// docs/disks.md: NVMe first, then other non-rotational disks, then spinning ones.
enum class DiskKind { kNvme, kSsd, kHdd };

std::string_view DiskKindName(DiskKind kind);  // "nvme", "ssd", "hdd"

struct Disk {
  std::string name;  // kernel name ("sda", "nvme0n1"); for a regular file, its file name
  std::string path;  // "/dev/sda", or the regular file's path
  uint64_t size_bytes = 0;
  uint32_t logical_sector_size = 512;   // bytes; a regular file is treated as 512
  uint32_t physical_sector_size = 512;  // bytes
  std::string vendor;     // SCSI vendor ("ATA", "AMI", "iDRAC"), empty for NVMe/virtio
  std::string model;      // trimmed
  std::string serial;     // trimmed, may be empty
  std::string wwn;        // "naa.5000c500a1b2c3d4", "eui.…", may be empty
  std::string transport;  // "nvme", "sata", "sas", "usb", "virtio", "mmc", "scsi" or ""
  bool rotational = false;
  bool removable = false;
  bool read_only = false;
  DiskKind kind = DiskKind::kHdd;
  bool is_file = false;  // a regular file standing in for a disk (deploy --disk FILE, tests)
  std::string dev;       // "MAJ:MIN" of a block device, empty for a file
  // What is on it now, from libblkid (only when the inventory was asked to probe contents):
  std::string partition_table;  // "gpt", "dos", … or ""
  std::string signature;        // whole-disk signature: "linux_raid_member", "LVM2_member", …
};

// One entry of the partition table of a Disk, as written on disk (not necessarily known to the
// kernel: on kernels without partition table parsers only BLKPG makes the kernel see it).
struct Partition {
  int number = 0;              // 1-based, as the kernel and the table number it
  uint64_t start_sector = 0;   // in the disk's logical sectors
  uint64_t size_sectors = 0;   // in the disk's logical sectors
  uint32_t sector_size = 512;  // the disk's logical sector size
  std::string type;            // GPT type GUID (upper case) or MBR type as "0x0c"
  std::string name;            // GPT partition name, empty for MBR
  std::string uuid;            // GPT partition GUID (upper case), empty for MBR
  std::string device;          // "/dev/sda3" when the kernel knows it, else empty

  uint64_t offset_bytes() const { return start_sector * sector_size; }
  uint64_t size_bytes() const { return size_sectors * sector_size; }
};

// The kernel name of partition `number` of disk `disk_name`: "sda3", "nvme0n1p3", "loop0p3"
// (a 'p' separates the number when the disk name ends with a digit).
std::string PartitionName(std::string_view disk_name, int number);

}  // namespace byoi
