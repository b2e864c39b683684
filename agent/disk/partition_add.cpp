#include "agent/disk/partition_add.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <libfdisk/libfdisk.h>
#include <strings.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "agent/base/messages.hpp"
#include "agent/disk/kernel_sync.hpp"
#include "agent/disk/partition_table.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/safety.hpp"

namespace byoi {
namespace {

struct PartitionDeleter {
  void operator()(fdisk_partition* p) const { fdisk_unref_partition(p); }
};
struct TypeDeleter {
  void operator()(fdisk_parttype* t) const { fdisk_unref_parttype(t); }
};

bool IsExtended(const Partition& p) {
  return p.type == "0x05" || p.type == "0x0f" || p.type == "0x85";
}

// The existing config-2 partition of the image, if any.
const Partition* FindConfigDrive(int fd, const std::vector<Partition>& parts) {
  for (const Partition& p : parts) {
    if (IsExtended(p)) continue;
    if (strcasecmp(p.name.c_str(), "config-2") == 0) return &p;
    auto sig = ProbeFilesystem(fd, p.offset_bytes(), p.size_bytes());
    if (sig.ok() && IsConfigDriveLabel(sig->label)) return &p;
  }
  return nullptr;
}

Status Refuse(Code code, std::string detail) {
  return Status::Error(code, std::move(detail), std::string(msg::kConfigDrive));
}

Result<Partition> AddPartition(FdiskTable& table, const Disk& disk,
                               const std::vector<Partition>& parts) {
  PartitionTableType kind = table.kind();
  uint64_t ss = table.sector_size();
  uint64_t size = kConfigDriveBytes / ss;
  uint64_t grain = table.grain_sectors();
  uint64_t limit =
      kind == PartitionTableType::kGpt ? table.GptLastUsableLba() : table.total_sectors() - 1;
  uint64_t used_end = 0;  // first sector after every existing partition
  for (const Partition& p : parts) used_end = std::max(used_end, p.start_sector + p.size_sectors);
  if (kind == PartitionTableType::kGpt) used_end = std::max<uint64_t>(used_end, 34);
  if (limit + 1 < size + used_end) {
    return Refuse(
        Code::kTooBig,
        fmt::format("{} has {} bytes free after its last partition, {} are needed", disk.path,
                    (limit + 1 > used_end ? limit + 1 - used_end : 0) * ss, kConfigDriveBytes));
  }
  uint64_t start = (limit + 1 - size) / grain * grain;
  if (start < used_end) start = limit + 1 - size;  // unaligned rather than nothing
  if (start < used_end) {
    return Refuse(Code::kTooBig,
                  fmt::format("no room for 64 MiB after the last partition of {}", disk.path));
  }

  fdisk_context* cxt = table.context();
  fdisk_label* lb = fdisk_get_label(cxt, nullptr);
  std::unique_ptr<fdisk_partition, PartitionDeleter> pa(fdisk_new_partition());
  std::unique_ptr<fdisk_parttype, TypeDeleter> type;
  if (kind == PartitionTableType::kGpt) {
    type.reset(fdisk_label_get_parttype_from_string(lb, kLinuxFilesystemGuid));
    fdisk_partition_partno_follow_default(pa.get(), 1);
    fdisk_partition_set_name(pa.get(), "config-2");
  } else {
    if (start + size > (uint64_t{1} << 32)) {
      return Refuse(Code::kUnsupported,
                    fmt::format("{} is an MBR disk larger than MBR can address; the end of the "
                                "disk is out of reach",
                                disk.path));
    }
    int slot = -1;
    for (int i = 0; i < 4; ++i) {
      if (!fdisk_is_partition_used(cxt, i)) {
        slot = i;
        break;
      }
    }
    if (slot < 0) {
      return Refuse(Code::kUnsupported,
                    fmt::format("all four primary partition slots of the MBR of {} are used; no "
                                "room for a config-2 partition",
                                disk.path));
    }
    type.reset(fdisk_label_get_parttype_from_code(lb, 0x0c));
    fdisk_partition_set_partno(pa.get(), static_cast<size_t>(slot));
  }
  if (!type) return Refuse(Code::kInternal, "libfdisk does not know the partition type");
  fdisk_partition_set_type(pa.get(), type.get());
  fdisk_partition_set_start(pa.get(), start);
  fdisk_partition_set_size(pa.get(), size);
  size_t partno = 0;
  if (int rc = fdisk_add_partition(cxt, pa.get(), &partno); rc != 0) {
    return Refuse(Code::kIo, fmt::format("adding a partition at sector {} of {}: {} ({})", start,
                                         disk.path, std::strerror(-rc), table.Messages()));
  }
  BYOI_RETURN_IF_ERROR(table.WriteChanges().DefaultMessage(msg::kConfigDrive));
  BYOI_ASSIGN_OR_RETURN(std::vector<Partition> after, table.Partitions());
  for (const Partition& p : after) {
    if (p.number == static_cast<int>(partno) + 1) {
      if (p.start_sector != start || p.size_sectors != size) {
        return Refuse(Code::kIo, fmt::format("libfdisk placed the new partition at {}+{} instead "
                                             "of {}+{} (the table was written)",
                                             p.start_sector, p.size_sectors, start, size));
      }
      return p;
    }
  }
  return Refuse(Code::kIo, "the new partition is missing after writing the table");
}

Result<ConfigDrivePartition> Ensure(const Disk& disk, const std::string& sysfs_root) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenDiskExclusive(disk, O_RDWR));
  BYOI_ASSIGN_OR_RETURN(auto table, FdiskTable::Open(fd.get(), disk.path, /*writable=*/true));
  PartitionTableType kind = table->kind();
  if (kind != PartitionTableType::kGpt && kind != PartitionTableType::kMbr) {
    return Refuse(Code::kUnsupported,
                  fmt::format("{} has no GPT or MBR partition table", disk.path));
  }
  BYOI_ASSIGN_OR_RETURN(std::vector<Partition> parts, table->Partitions());
  ConfigDrivePartition out;
  if (const Partition* existing = FindConfigDrive(fd.get(), parts)) {
    out.partition = *existing;
    out.reused = true;
  } else {
    BYOI_ASSIGN_OR_RETURN(out.partition, AddPartition(*table, disk, parts));
    BYOI_ASSIGN_OR_RETURN(parts, table->Partitions());
  }
  table.reset();  // libfdisk lets go of the fd before the kernel re-reads
  BYOI_RETURN_IF_ERROR(SyncKernelPartitions(disk, fd.get(), parts, sysfs_root));
  for (const Partition& p : parts) {
    if (p.number == out.partition.number) out.partition.device = p.device;
  }
  return out;
}

}  // namespace

Result<ConfigDrivePartition> EnsureConfigDrivePartition(const Disk& disk,
                                                        const std::string& sysfs_root) {
  auto r = Ensure(disk, sysfs_root);
  if (!r.ok()) {
    return std::move(r)
        .status()
        .Context("adding the config-2 partition to " + disk.path)
        .DefaultMessage(msg::kConfigDrive);
  }
  return r;
}

}  // namespace byoi
