// The config-2 partition of the repartition step: 64 MiB at the end of the disk for the OpenStack
// config drive that cloud-init reads at first boot (agent/boot/configdrive.hpp fills it).
//
// GPT: type "Linux filesystem" 0FC63DAF-8483-4772-8E79-3D69D8477DE4, name "config-2", a fresh
// random partition GUID, in the first free entry. MBR: type 0x0c (FAT32 LBA) in a free primary
// slot; with all four slots used the disk is refused (logical partitions would need the extended
// container to reach the end of the disk, which images rarely allow). The partition starts on a
// 1 MiB boundary and ends before the backup GPT (GPT) or at the disk's end (MBR).
//
// An image that already carries a config-2 partition (GPT name "config-2", or a file system
// labelled config-2) keeps it: it is reused, never duplicated.
#pragma once

#include <string>

#include "agent/base/status.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/disk.hpp"

namespace byoi {

inline constexpr uint64_t kConfigDriveBytes = 64 * kMiB;
inline constexpr const char* kLinuxFilesystemGuid = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

struct ConfigDrivePartition {
  Partition partition;  // device filled when the kernel knows it
  bool reused = false;  // true: the image's own config-2 partition
};

// Finds or adds the config-2 partition on `disk`, writes the table, and makes the kernel see it
// (BLKRRPART/BLKPG; not for a regular file).
// REQUIRES: RelocateBackupGpt already ran on a GPT disk (free space is counted up to the last
// usable LBA), and no fd of ours on `disk` is open with O_EXCL.
// On failure: kIo/kUnsupported with message msg::kConfigDrive; the table is unchanged unless the
// failure came after writing it (then the detail says so). Refusals: no partition table, all four
// MBR slots used, less than 64 MiB free at the end, an MBR disk beyond 2 TiB.
Result<ConfigDrivePartition> EnsureConfigDrivePartition(const Disk& disk,
                                                        const std::string& sysfs_root = "/sys");

}  // namespace byoi
