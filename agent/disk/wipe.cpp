#include "agent/disk/wipe.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

#include "agent/base/fd.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/partition_table.hpp"

namespace byoi {
namespace {

// The partitions of the table on `fd`, or none when there is no table or it cannot be read (a
// damaged table is exactly what is being wiped).
std::vector<Partition> OldPartitions(int fd, const std::string& path) {
  auto table = FdiskTable::Open(fd, path, /*writable=*/false);
  if (!table.ok()) return {};
  PartitionTableType kind = (*table)->kind();
  if (kind != PartitionTableType::kGpt && kind != PartitionTableType::kMbr) return {};
  auto parts = (*table)->Partitions();
  return parts.ok() ? *parts : std::vector<Partition>{};
}

Result<std::vector<Signature>> WipeIn(int fd, uint64_t offset, uint64_t size,
                                      const std::string& what) {
  auto r = WipeRange(fd, offset, size);
  if (!r.ok()) return std::move(r).status().Context(what);
  return r;
}

bool IsExtended(const Partition& p) {
  return p.type == "0x05" || p.type == "0x0f" || p.type == "0x85";
}

Status Zero(int fd, uint64_t offset, uint64_t bytes) {
  std::vector<uint8_t> zeros(std::min<uint64_t>(bytes, kMiB), 0);
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), bytes - done));
    BYOI_RETURN_IF_ERROR(PwriteAll(fd, {zeros.data(), n}, offset + done));
    done += n;
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<Signature>> WipeSignatures(const Disk& disk, int fd) {
  std::vector<Signature> erased;
  uint64_t size = disk.size_bytes;
  for (const Partition& p : OldPartitions(fd, disk.path)) {
    if (IsExtended(p) || p.offset_bytes() >= size) continue;
    uint64_t len = std::min(p.size_bytes(), size - p.offset_bytes());
    BYOI_ASSIGN_OR_RETURN(
        auto sigs, WipeIn(fd, p.offset_bytes(), len,
                          fmt::format("wiping old partition {} of {}", p.number, disk.path)));
    erased.insert(erased.end(), sigs.begin(), sigs.end());
  }
  BYOI_ASSIGN_OR_RETURN(auto sigs, WipeIn(fd, 0, size, "wiping " + disk.path));
  erased.insert(erased.end(), sigs.begin(), sigs.end());
  // The first and last MiB hold both GPT copies and the end-of-disk RAID/ZFS labels; libblkid only
  // erases the magic it recognises, so clear them whole.
  uint64_t head = std::min<uint64_t>(kMiB, size);
  BYOI_RETURN_IF_ERROR(Zero(fd, 0, head).Context("zeroing the first MiB of " + disk.path));
  uint64_t tail_start = size > kMiB ? size - kMiB : 0;
  BYOI_RETURN_IF_ERROR(
      Zero(fd, tail_start, size - tail_start).Context("zeroing the last MiB of " + disk.path));
  if (::fsync(fd) != 0) return Status::FromErrno("syncing " + disk.path, errno);
  return erased;
}

Result<std::vector<std::string>> RemoveStaleConfigDrives(const std::vector<Disk>& others,
                                                         const SystemPaths& paths) {
  std::vector<std::string> notes;
  for (const Disk& disk : others) {
    if (Status s = CheckNotInUse(disk, paths); !s.ok()) {
      notes.push_back(fmt::format("skipped {}: {}", disk.path, s.ToString()));
      continue;
    }
    auto fd = OpenDiskExclusive(disk, O_RDWR);
    if (!fd.ok()) {
      notes.push_back(fmt::format("skipped {}: {}", disk.path, fd.status().ToString()));
      continue;
    }
    bool wrote = false;
    for (const Partition& p : OldPartitions(fd->get(), disk.path)) {
      if (IsExtended(p) || p.offset_bytes() >= disk.size_bytes) continue;
      uint64_t len = std::min(p.size_bytes(), disk.size_bytes - p.offset_bytes());
      auto sig = ProbeFilesystem(fd->get(), p.offset_bytes(), len);
      if (!sig.ok() || !IsConfigDriveLabel(sig->label)) continue;
      BYOI_ASSIGN_OR_RETURN(auto wiped, WipeIn(fd->get(), p.offset_bytes(), len,
                                               fmt::format("erasing the config-2 file system "
                                                           "on partition {} of {}",
                                                           p.number, disk.path)));
      notes.push_back(fmt::format("erased config-2 {} on {} partition {} ({} signatures)",
                                  sig->type, disk.path, p.number, wiped.size()));
      wrote = true;
    }
    auto whole = ProbeFilesystem(fd->get(), 0, disk.size_bytes);
    if (whole.ok() && IsConfigDriveLabel(whole->label)) {
      BYOI_ASSIGN_OR_RETURN(auto wiped, WipeIn(fd->get(), 0, disk.size_bytes,
                                               "erasing the config-2 file system on " + disk.path));
      notes.push_back(fmt::format("erased config-2 {} on the whole of {} ({} signatures)",
                                  whole->type, disk.path, wiped.size()));
      wrote = true;
    }
    if (wrote && ::fsync(fd->get()) != 0) return Status::FromErrno("syncing " + disk.path, errno);
  }
  return notes;
}

}  // namespace byoi
