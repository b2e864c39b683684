#include "agent/disk/gpt.hpp"

#include <fcntl.h>
#include <fmt/format.h>

#include "agent/base/messages.hpp"
#include "agent/disk/kernel_sync.hpp"
#include "agent/disk/partition_table.hpp"
#include "agent/disk/safety.hpp"

namespace byoi {
namespace {

// Everything sgdisk -e keeps: positions, types, GUIDs, names.
std::string Compare(const std::vector<Partition>& a, const std::vector<Partition>& b) {
  if (a.size() != b.size())
    return fmt::format("{} partitions before, {} after", a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const Partition& x = a[i];
    const Partition& y = b[i];
    if (x.number != y.number || x.start_sector != y.start_sector ||
        x.size_sectors != y.size_sectors || x.type != y.type || x.uuid != y.uuid ||
        x.name != y.name) {
      return fmt::format("partition {} changed", x.number);
    }
  }
  return {};
}

// True when one of the four MBR entries has type 0xEE (GPT protective).
bool HasProtectiveMbr(int fd) {
  uint8_t mbr[512];
  if (!PreadAll(fd, mbr, 0).ok() || mbr[510] != 0x55 || mbr[511] != 0xaa) return false;
  for (int i = 0; i < 4; ++i) {
    if (mbr[446 + 16 * i + 4] == 0xee) return true;
  }
  return false;
}

Result<GptRelocation> Relocate(const Disk& disk, const std::string& sysfs_root) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenDiskExclusive(disk, O_RDWR));
  GptRelocation out;
  std::vector<Partition> before;
  {
    BYOI_ASSIGN_OR_RETURN(auto table, FdiskTable::Open(fd.get(), disk.path, /*writable=*/true));
    if (table->kind() != PartitionTableType::kGpt) {
      if (HasProtectiveMbr(fd.get())) {
        // The MBR announces a GPT but libfdisk found no valid header: a damaged image. Adding
        // partitions to the protective MBR would make it worse.
        return Status::Error(Code::kInvalid, disk.path +
                                                 " has a protective MBR but neither GPT "
                                                 "header is valid");
      }
      // MBR images stay as written; the kernel still has to forget the old disk's partitions.
      if (table->kind() == PartitionTableType::kOther) return out;
      if (table->kind() == PartitionTableType::kMbr) {
        BYOI_ASSIGN_OR_RETURN(out.partitions, table->Partitions());
      }
      table.reset();
      BYOI_RETURN_IF_ERROR(SyncKernelPartitions(disk, fd.get(), out.partitions, sysfs_root));
      return out;
    }
    out.gpt = true;
    BYOI_ASSIGN_OR_RETURN(before, table->Partitions());
    uint64_t last = table->total_sectors() - 1;
    // libfdisk notices a backup GPT that is not at the last LBA while probing and fixes the header
    // in memory (AlternateLBA = last LBA, LastUsableLBA extended; "This problem will be corrected
    // by write."), so writing the label is the relocation.
    if (table->GptAlternativeLba() != last || table->Changed()) {
      if (table->GptAlternativeLba() != last) {
        return Status::Error(Code::kIo,
                             fmt::format("libfdisk left the backup header at LBA {} "
                                         "instead of {} ({})",
                                         table->GptAlternativeLba(), last, table->Messages()));
      }
      BYOI_RETURN_IF_ERROR(table->WriteChanges());
      out.moved = true;
    }
  }
  // Read it back from the disk, in a fresh context, to check what was written.
  BYOI_ASSIGN_OR_RETURN(auto check, FdiskTable::Open(fd.get(), disk.path, /*writable=*/false));
  uint64_t last = check->total_sectors() - 1;
  if (check->kind() != PartitionTableType::kGpt || check->GptAlternativeLba() != last) {
    return Status::Error(Code::kIo, fmt::format("after writing, the backup header is not at LBA {} "
                                                "({})",
                                                last, check->Messages()));
  }
  BYOI_ASSIGN_OR_RETURN(out.partitions, check->Partitions());
  if (std::string diff = Compare(before, out.partitions); !diff.empty()) {
    return Status::Error(Code::kIo, "after writing, " + diff);
  }
  BYOI_RETURN_IF_ERROR(SyncKernelPartitions(disk, fd.get(), out.partitions, sysfs_root));
  return out;
}

}  // namespace

Result<GptRelocation> RelocateBackupGpt(const Disk& disk, const std::string& sysfs_root) {
  auto r = Relocate(disk, sysfs_root);
  if (!r.ok()) {
    return std::move(r)
        .status()
        .Context("moving the backup GPT of " + disk.path)
        .DefaultMessage(msg::kGptMove);
  }
  return r;
}

Result<std::vector<Partition>> ReadPartitions(const Disk& disk) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk.path, O_RDONLY));
  BYOI_ASSIGN_OR_RETURN(auto table, FdiskTable::Open(fd.get(), disk.path, false));
  if (table->kind() == PartitionTableType::kNone) return std::vector<Partition>{};
  return table->Partitions();
}

}  // namespace byoi
