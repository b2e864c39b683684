// GPT fix-up of the repartition step (docs/pipeline.md step 5): an image written to a disk larger
// than itself leaves its backup GPT header and entries in the middle of the disk, where firmware
// and tools call the table damaged and where nothing past the image's end can be partitioned. This
// moves the backup header to the disk's last LBA, its entries just before it, and extends the last
// usable LBA — what `sgdisk -e` does — keeping every partition, GUID, name and attribute.
//
// GPT layout (UEFI spec 2.10 §5.3): LBA 0 protective MBR; LBA 1 primary header; entries from LBA 2;
// the backup entries end at LBA (last - 1) and the backup header sits at the last LBA. The header's
// AlternateLBA points at the other copy; LastUsableLBA is the sector before the backup entries.
#pragma once

#include <string>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"

namespace byoi {

struct GptRelocation {
  bool gpt = false;                   // false: not a GPT disk (MBR or none), nothing was done
  bool moved = false;                 // false: the backup was already at the last LBA
  std::vector<Partition> partitions;  // the table after the fix-up (device filled when known)
};

// For a GPT disk: moves the backup GPT to the end as above, writes it (backup first, then primary,
// then the protective MBR, as UEFI orders it), syncs, makes the kernel see the partitions
// (SyncKernelPartitions; skipped for a regular file), and re-reads the table to check that the
// backup is at the last LBA and the partitions are unchanged. MBR or unpartitioned disks are left
// as they are (Ok, gpt = false), but the kernel's view is still synced to their table.
// REQUIRES: no other fd of ours on `disk` is open with O_EXCL (this opens it with O_EXCL).
// On failure: kIo with message msg::kGptMove; the primary table may already be rewritten but the
// partitions it describes are the image's.
Result<GptRelocation> RelocateBackupGpt(const Disk& disk, const std::string& sysfs_root = "/sys");

// The partition table of `disk` as written on it (no kernel involvement); empty for no table.
Result<std::vector<Partition>> ReadPartitions(const Disk& disk);

}  // namespace byoi
