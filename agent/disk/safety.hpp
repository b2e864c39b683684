// Safety gates of the plan and write steps (docs/status.md, docs/disks.md): nothing is written to a
// disk that the running system uses, to a disk too small for the image, or with a GPT made for
// another sector size. Every refusal carries its catalogue message, so the runner reports it
// unchanged.
//
// "In use" means, for the disk or any of its partitions that the kernel knows: mounted (which
// includes the rescue system's own root), an active swap, held by another block device (md, dm,
// LVM, bcache: sysfs holders/), or backing a loop device. The checks read /proc and /sys only;
// `OpenDiskExclusive` then closes the remaining window with O_EXCL, which the kernel refuses while
// any of those users holds the device.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "agent/base/fd.hpp"
#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"

namespace byoi {

// Where the checks look; tests point these at fixtures.
struct SystemPaths {
  std::string sysfs_root = "/sys";
  std::string mountinfo = "/proc/self/mountinfo";
  std::string swaps = "/proc/swaps";
};

// Ok when nothing uses `disk`. Otherwise kBusy with message msg::DiskInUse(disk.path, reason), the
// reason naming the first user found, e.g. "/dev/sda2 is mounted on /boot", "/dev/sda3 is an
// active swap", "/dev/sda1 is held by md0 (software RAID)", "/dev/sda holds the running system
// (mounted on /)", "/dev/sda backs /dev/loop3". A regular file is checked only for backing a
// loop device. Unreadable /proc or /sys files are kIo (the disk's state is unknown: refuse).
Status CheckNotInUse(const Disk& disk, const SystemPaths& paths = {});

// Opens `disk.path` with `flags` (O_RDWR, maybe O_DIRECT), adding O_EXCL for a block device so
// that no mount, swap, md or dm can claim it while we hold the fd. EBUSY becomes kBusy with
// msg::DiskInUse(path, "another program holds it open exclusively"); other errors kIo.
Result<UniqueFd> OpenDiskExclusive(const Disk& disk, int flags);

// Ok when an image of `image_bytes` (its virtual size) fits on `disk`; otherwise kTooBig with
// msg::ImageLargerThanDisk(image_bytes, disk.path, disk.size_bytes).
Status CheckImageFits(uint64_t image_bytes, const Disk& disk);

// The logical sector size the image's GPT was made for: 512 or 4096 when a GPT header ("EFI PART")
// sits at LBA 1 for that size, 0 when `head` holds no GPT (MBR-only or unknown). `head` is the
// image's first bytes; at least 4096 + 8 are needed to see a 4096-byte GPT.
uint32_t GptSectorSize(std::span<const uint8_t> head);

// Ok unless the image has a GPT for one sector size only and the disk has another. Then
// kUnsupported with message msg::CantWrite(image_type) and a detail naming both sizes.
Status CheckImageSectorSize(std::span<const uint8_t> head, const Disk& disk,
                            std::string_view image_type);

}  // namespace byoi
