// The partition table of a virtual disk (an image's raw content, or a disk): MBR (with logical
// partitions) or GPT, for `inspect`, the raw-image check of the verify step, and finding the EFI
// system partition. Parsing is bounded and defensive: the bytes come from the customer.
//
// Format notes (UEFI 2.x §5): the GPT header sits at LBA 1 — byte 512 or 4096 depending on the
// logical sector size the image was made for — with "EFI PART", a CRC32 over header_size bytes,
// and an array of entries (type GUID, unique GUID, first/last LBA inclusive, attributes,
// UTF-16LE name) with its own CRC32; the backup header at the disk's last LBA is used when the
// primary is damaged. The MBR has four 16-byte entries at byte 446 and 0x55AA at 510; types
// 0x05/0x0F/0x85 chain extended boot records for logical partitions (numbered from 5); 0xEE is
// GPT's protective entry. The ESP has type C12A7328-F81F-11D2-BA4B-00A0C93EC93B (GPT) or 0xEF.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/fd.hpp"  // ReadAtFn
#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"
#include "agent/image/format.hpp"  // PartitionTableType

namespace byoi {

// One partition of a partition table: the one model of the agent, whether the table was read by
// the native parser below (images, disks) or through libfdisk (the repartition step).
struct Partition {
  int number = 0;              // GPT: entry index + 1; MBR: 1-4 primary, 5+ logical
  uint64_t start_sector = 0;   // in `sector_size` units
  uint64_t size_sectors = 0;   // in `sector_size` units
  uint32_t sector_size = 512;  // what the table counts in: the disk's logical sector size
  std::string type;            // GPT: type GUID, upper case; MBR: the type byte as "0x83"
  std::string name;            // GPT partition name (UTF-8); empty for MBR
  std::string uuid;            // GPT unique partition GUID, upper case; empty for MBR
  uint64_t attributes = 0;     // GPT attribute bits
  bool bootable = false;       // MBR active flag (0x80)
  bool esp = false;            // an EFI system partition (docs/boot.md)
  std::string device;          // "/dev/sda3" when the kernel knows it, else empty

  uint64_t offset_bytes() const { return start_sector * sector_size; }
  uint64_t size_bytes() const { return size_sectors * sector_size; }
  // MBR: the type byte; GPT: 0.
  uint8_t mbr_type() const;
};

struct PartitionTable {
  PartitionTableType type = PartitionTableType::kNone;
  // GPT: the logical sector size the table was made for (512 or 4096); MBR/none: 512.
  uint32_t sector_size = 512;
  std::string disk_guid;         // GPT
  uint32_t mbr_signature = 0;    // MBR disk identifier (bytes 440-443)
  bool gpt_from_backup = false;  // the primary GPT header or its entries were damaged
  uint64_t first_usable_lba = 0, last_usable_lba = 0, alternate_lba = 0;  // GPT
  std::vector<Partition> partitions;                                      // in table order

  // The first EFI system partition, or nullptr.
  const Partition* Esp() const;
};

// Parses the partition table of a disk of `disk_size` bytes. A disk without MBR or GPT gives
// type kNone (not an error). kInvalid when a table is present but unusable: a protective MBR
// without a valid GPT (primary and backup both damaged), a GPT whose entry array is out of
// bounds. Errors of `read` are returned with context.
Result<PartitionTable> ReadPartitionTable(const ReadAtFn& read, uint64_t disk_size);

// The same over an image's virtual disk (decompressing what it needs). `layout` and its bytes are
// only borrowed for the call.
Result<PartitionTable> ReadPartitionTable(const ImageLayout& layout);

// A short human name for a partition type ("EFI System", "Linux filesystem", "0x83 Linux"), or
// the GUID/hex value when unknown.
std::string PartitionTypeName(const Partition& p, PartitionTableType table);

}  // namespace byoi
