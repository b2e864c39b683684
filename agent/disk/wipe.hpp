// Wiping old signatures at the start of the write step, so nothing of the disk's previous life
// survives next to the new image: a backup GPT at the old end of the disk (firmware and tools
// would find two disagreeing tables), md/ZFS/LVM/filesystem superblocks in old partitions and at
// the disk's end (the new system could assemble a stale RAID or mount a stale file system), and a
// config-2 file system on another disk of the group (cloud-init would read a stale config drive).
//
// Only signatures are erased (libblkid's magic bytes, like `wipefs --all`) plus the first and last
// MiB of the target; data blocks stay. The caller zeroes nothing else.
#pragma once

#include <string>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/safety.hpp"

namespace byoi {

// Erases, on the target `disk` through `fd`: every signature libblkid finds in each partition of
// the old partition table and on the whole disk (primary GPT/MBR magic included), then zeroes the
// first and the last MiB (primary GPT, backup GPT header and entries at the old end, md 0.90/1.0,
// ZFS and DDF labels that live there) and fsyncs. Returns what libblkid erased, for the log.
// REQUIRES: `fd` open O_RDWR without O_DIRECT on disk.path (blkid writes a few bytes at odd
// offsets); CheckNotInUse passed. This is a write: run it only when writing is decided.
// On failure: kIo, message msg::CantWrite is NOT set (the runner owns the step's message); the disk
// may be partly wiped.
Result<std::vector<Signature>> WipeSignatures(const Disk& disk, int fd);

// For each disk of `others` (the other disks of the target's group): erases file systems labelled
// config-2 (vfat or iso9660), in a partition or on the whole disk. Disks that are in use or cannot
// be opened exclusively are skipped. Returns one line per action or skip ("erased config-2 vfat on
// /dev/sdb partition 4", "skipped /dev/sdc: Disk /dev/sdc is in use: …"), for the log.
// Fails (kIo) only when writing to a disk fails.
Result<std::vector<std::string>> RemoveStaleConfigDrives(const std::vector<Disk>& others,
                                                         const SystemPaths& paths = {});

}  // namespace byoi
