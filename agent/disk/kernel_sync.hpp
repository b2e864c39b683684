// Making the kernel see a partition table we just wrote.
//
// Kernels with partition table parsers re-read the table on BLKRRPART. Kernels without them (this
// build machine's, some minimal rescue kernels) accept BLKRRPART and find nothing, and loop
// devices without partscan refuse it; there only BLKPG adds partitions, one by one — what
// `partx -u` does. So: try BLKRRPART, then compare what sysfs shows with the table, and repair any
// difference with BLKPG (delete the stale, add the missing); finally verify through sysfs again.
#pragma once

#include <string>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"

namespace byoi {

// The partitions the kernel has for `disk_name`, from `<sysfs_root>/block/<disk_name>/*/`, as
// number, start and size in 512-byte units (sector_size 512, as sysfs counts, whatever the disk's
// logical sector size); the other fields empty.
std::vector<Partition> KernelPartitions(const std::string& sysfs_root,
                                        const std::string& disk_name);

// Makes the kernel's partitions of `disk` equal to `table` (number, start, size), using `fd` (open
// on disk.path; O_EXCL is fine). MBR extended containers are added as the kernel does (a 1 KiB
// stub). A regular file is left alone (Ok). kIo with the differences in the detail when the
// kernel's view still differs at the end. On success, fills each Partition's `device` in `table`
// with "/dev/<partition name>" when that node exists.
Status SyncKernelPartitions(const Disk& disk, int fd, std::vector<Partition>& table,
                            const std::string& sysfs_root = "/sys");

}  // namespace byoi
