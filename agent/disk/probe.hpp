// libblkid probing of a byte range of an open disk: which filesystem or RAID signature is there and
// its label, without the kernel knowing the partition. Used to find config-2 file systems and to
// wipe stale signatures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/base/fd.hpp"  // ReadAtFn
#include "agent/base/status.hpp"

namespace byoi {

struct Signature {
  std::string type;     // "vfat", "ext4", "linux_raid_member", "gpt", "dos", …
  std::string label;    // file system label, may be empty
  uint64_t offset = 0;  // absolute byte offset of the magic on the disk
};

// The file system (superblock) in [offset, offset + size) of `fd`, if any: type and label.
// Ok(std::nullopt-like empty type) when nothing is recognised. kIo when the probe cannot run.
Result<Signature> ProbeFilesystem(int fd, uint64_t offset, uint64_t size);

// The same for a range of a disk that is not in a file: an image's virtual disk read through
// `read` (`inspect` of a qcow2). libblkid reads a file descriptor, so the first and the last MiB of
// the range (where every superblock libblkid knows lies) are copied into a sparse memfd of the
// range's size. kIo when the memfd cannot be made; errors of `read` as they are.
Result<Signature> ProbeFilesystem(const ReadAtFn& read, uint64_t offset, uint64_t size);

// Erases every superblock and partition-table magic libblkid recognises in [offset, offset+size)
// of `fd` (opened O_RDWR), one after the other, like `wipefs --all`. Returns what was erased.
// Only the magic bytes are overwritten; the rest of the data stays. At most 64 signatures.
Result<std::vector<Signature>> WipeRange(int fd, uint64_t offset, uint64_t size);

// What libblkid sees on the whole device at `path` (opened read-only, never exclusively): the
// partition table type ("gpt", "dos") and a whole-device superblock type. Empty strings when there
// is nothing or the device cannot be read: this is information, not a gate.
struct DeviceContents {
  std::string partition_table;
  std::string signature;
};
DeviceContents ProbeDeviceContents(const std::string& path);

// True for the labels cloud-init's ConfigDrive data source looks for ("config-2", "CONFIG-2").
bool IsConfigDriveLabel(const std::string& label);

}  // namespace byoi
