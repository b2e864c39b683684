#include "agent/image/partition_table.hpp"

#include <fmt/format.h>
#include <libdeflate.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include "agent/base/bytes.hpp"
#include "agent/base/utf16.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

constexpr char kEspGuid[] = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
constexpr uint64_t kMaxEntryArray = 1 << 20;  // bytes; the usual array is 16 KiB
constexpr int kMaxLogical = 128;

uint32_t Crc32(std::span<const uint8_t> bytes) {
  return libdeflate_crc32(0, bytes.data(), bytes.size());
}

struct GptHeader {
  uint64_t my_lba = 0, alternate_lba = 0, first_usable = 0, last_usable = 0, entries_lba = 0;
  uint32_t entries = 0, entry_size = 0, entries_crc = 0;
  std::string disk_guid;
};

// Reads and checks the GPT header at `lba` for sector size `ss`; nullopt with `why` set when it is
// absent or damaged.
Result<std::optional<GptHeader>> ReadGptHeader(const ReadAtFn& read, uint64_t disk_size,
                                               uint32_t ss, uint64_t lba, std::string* why) {
  if (lba == 0 || (lba + 1) * ss > disk_size) return std::optional<GptHeader>();
  std::vector<uint8_t> sector(ss);
  BYOI_RETURN_IF_ERROR(read(lba * ss, sector));
  if (std::memcmp(sector.data(), "EFI PART", 8) != 0) return std::optional<GptHeader>();
  uint32_t header_size = Le32(&sector[12]);
  if (header_size < 92 || header_size > ss) {
    *why = fmt::format("GPT header at LBA {} has a size of {}", lba, header_size);
    return std::optional<GptHeader>();
  }
  uint32_t crc = Le32(&sector[16]);
  std::memset(&sector[16], 0, 4);
  if (Crc32({sector.data(), header_size}) != crc) {
    *why = fmt::format("GPT header at LBA {} fails its CRC", lba);
    return std::optional<GptHeader>();
  }
  GptHeader h;
  h.my_lba = Le64(&sector[24]);
  h.alternate_lba = Le64(&sector[32]);
  h.first_usable = Le64(&sector[40]);
  h.last_usable = Le64(&sector[48]);
  h.disk_guid = FormatGuid(std::span<const uint8_t, 16>(&sector[56], 16));
  h.entries_lba = Le64(&sector[72]);
  h.entries = Le32(&sector[80]);
  h.entry_size = Le32(&sector[84]);
  h.entries_crc = Le32(&sector[88]);
  if (h.my_lba != lba) {
    *why = fmt::format("GPT header at LBA {} says it is at LBA {}", lba, h.my_lba);
    return std::optional<GptHeader>();
  }
  if (h.entry_size < 128 || h.entry_size % 8 != 0 ||
      uint64_t{h.entries} * h.entry_size > kMaxEntryArray) {
    *why = fmt::format("GPT at LBA {}: {} entries of {} bytes", lba, h.entries, h.entry_size);
    return std::optional<GptHeader>();
  }
  uint64_t array = uint64_t{h.entries} * h.entry_size;
  if (h.entries_lba > disk_size / ss || array > disk_size - h.entries_lba * ss) {
    *why = fmt::format("GPT at LBA {}: partition entries at LBA {} pass the end of the disk", lba,
                       h.entries_lba);
    return std::optional<GptHeader>();
  }
  return std::optional<GptHeader>(h);
}

// The GPT at LBA 1 (or its backup) for sector size `ss`: nullopt when there is none at all.
Result<std::optional<PartitionTable>> ReadGpt(const ReadAtFn& read, uint64_t disk_size, uint32_t ss,
                                              std::string* why) {
  const uint64_t last_lba = disk_size / ss == 0 ? 0 : disk_size / ss - 1;
  bool from_backup = false;
  std::optional<GptHeader> h;
  std::vector<uint8_t> array;
  for (uint64_t lba : {uint64_t{1}, last_lba}) {
    BYOI_ASSIGN_OR_RETURN(h, ReadGptHeader(read, disk_size, ss, lba, why));
    if (h) {
      array.assign(uint64_t{h->entries} * h->entry_size, 0);
      BYOI_RETURN_IF_ERROR(read(h->entries_lba * ss, array));
      if (Crc32(array) == h->entries_crc) break;
      *why = fmt::format("GPT partition entries at LBA {} fail their CRC", h->entries_lba);
      h.reset();
    }
    from_backup = true;
    if (lba == last_lba) break;
  }
  if (!h) return std::optional<PartitionTable>();
  PartitionTable t;
  t.type = PartitionTableType::kGpt;
  t.sector_size = ss;
  t.disk_guid = h->disk_guid;
  t.gpt_from_backup = from_backup;
  t.first_usable_lba = h->first_usable;
  t.last_usable_lba = h->last_usable;
  t.alternate_lba = h->alternate_lba;
  for (uint32_t i = 0; i < h->entries; ++i) {
    const uint8_t* e = &array[uint64_t{i} * h->entry_size];
    if (IsAllZero(e, 16)) continue;
    uint64_t first = Le64(e + 32), last = Le64(e + 40);
    if (last < first || last > UINT64_MAX / ss - 1) continue;  // not a usable entry
    Partition p;
    p.number = static_cast<int>(i + 1);
    p.start_sector = first;
    p.size_sectors = last - first + 1;
    p.sector_size = ss;
    p.type = FormatGuid(std::span<const uint8_t, 16>(e, 16));
    p.uuid = FormatGuid(std::span<const uint8_t, 16>(e + 16, 16));
    p.attributes = Le64(e + 48);
    p.name =
        Utf16LeToUtf8({e + 56, std::min<size_t>(72, h->entry_size - 56)}, /*stop_at_nul=*/true);
    p.esp = p.type == kEspGuid;
    t.partitions.push_back(std::move(p));
  }
  return std::optional<PartitionTable>(std::move(t));
}

bool IsExtended(uint8_t type) { return type == 0x05 || type == 0x0f || type == 0x85; }

// "0x83": how libfdisk and the status name an MBR type.
std::string MbrTypeName(uint8_t type) { return fmt::format("{:#04x}", type); }

// Logical partitions in the chain of extended boot records starting at `ext_start` (bytes).
Status ReadLogical(const ReadAtFn& read, uint64_t disk_size, uint64_t ext_start, uint64_t ext_size,
                   PartitionTable& t) {
  std::set<uint64_t> seen;
  uint64_t ebr = ext_start;
  uint32_t number = 5;
  std::vector<uint8_t> sector(512);
  for (int n = 0; n < kMaxLogical; ++n) {
    if (ebr + 512 > disk_size || !seen.insert(ebr).second) break;
    BYOI_RETURN_IF_ERROR(read(ebr, sector));
    if (sector[510] != 0x55 || sector[511] != 0xaa) break;
    const uint8_t* e0 = &sector[446];
    const uint8_t* e1 = &sector[462];
    if (e0[4] != 0 && Le32(e0 + 12) != 0) {
      Partition p;
      p.number = static_cast<int>(number++);
      p.type = MbrTypeName(e0[4]);
      p.bootable = e0[0] == 0x80;
      p.start_sector = ebr / 512 + Le32(e0 + 8);
      p.size_sectors = Le32(e0 + 12);
      p.esp = e0[4] == 0xef;
      t.partitions.push_back(std::move(p));
    }
    if (!IsExtended(e1[4]) || Le32(e1 + 8) == 0) break;
    uint64_t next = ext_start + uint64_t{Le32(e1 + 8)} * 512;
    if (next >= ext_start + ext_size) break;
    ebr = next;
  }
  return Status::Ok();
}

}  // namespace

std::string_view PartitionTableTypeName(PartitionTableType t) {
  switch (t) {
    case PartitionTableType::kNone:
      return "none";
    case PartitionTableType::kMbr:
      return "mbr";
    case PartitionTableType::kGpt:
      return "gpt";
    case PartitionTableType::kOther:
      return "other";
  }
  return "none";
}

uint8_t Partition::mbr_type() const {
  if (type.size() != 4 || type.compare(0, 2, "0x") != 0) return 0;
  return static_cast<uint8_t>(std::strtoul(type.c_str() + 2, nullptr, 16));
}

const Partition* PartitionTable::Esp() const {
  for (const auto& p : partitions) {
    if (p.esp) return &p;
  }
  return nullptr;
}

Result<PartitionTable> ReadPartitionTable(const ReadAtFn& read, uint64_t disk_size) {
  PartitionTable t;
  if (disk_size < 512) return t;
  std::vector<uint8_t> mbr(512);
  BYOI_RETURN_IF_ERROR(read(0, mbr).Context("reading the MBR"));
  bool has_mbr = mbr[510] == 0x55 && mbr[511] == 0xaa;
  bool protective = false;
  if (has_mbr) {
    for (int i = 0; i < 4; ++i) protective |= mbr[446 + 16 * i + 4] == 0xee;
  }
  // GPT first: a valid GPT wins over whatever the MBR says (hybrid MBRs included).
  std::string why;
  for (uint32_t ss : {512u, 4096u}) {
    BYOI_ASSIGN_OR_RETURN(auto gpt, ReadGpt(read, disk_size, ss, &why));
    if (gpt) return std::move(*gpt);
  }
  if (protective) {
    return Status::Error(Code::kInvalid, "protective MBR but no valid GPT" +
                                             (why.empty() ? std::string() : ": " + why));
  }
  if (!has_mbr) return t;
  // A real MBR has boot flags 0x00/0x80 and at least one partition; a FAT or NTFS boot sector
  // (also ending in 0x55AA) usually fails this.
  bool any = false;
  for (int i = 0; i < 4; ++i) {
    const uint8_t* e = &mbr[446 + 16 * i];
    if (e[0] != 0 && e[0] != 0x80) return t;
    if (e[4] != 0) {
      if (Le32(e + 8) == 0 || Le32(e + 12) == 0) return t;
      any = true;
    }
  }
  if (!any) return t;
  t.type = PartitionTableType::kMbr;
  t.mbr_signature = Le32(&mbr[440]);
  std::vector<std::pair<uint64_t, uint64_t>> extended;
  for (uint32_t i = 0; i < 4; ++i) {
    const uint8_t* e = &mbr[446 + 16 * i];
    if (e[4] == 0) continue;
    Partition p;
    p.number = static_cast<int>(i + 1);
    p.type = MbrTypeName(e[4]);
    p.bootable = e[0] == 0x80;
    p.start_sector = Le32(e + 8);
    p.size_sectors = Le32(e + 12);
    p.esp = e[4] == 0xef;
    if (IsExtended(e[4])) extended.emplace_back(p.offset_bytes(), p.size_bytes());
    t.partitions.push_back(std::move(p));
  }
  // Only the first extended partition counts, as in Linux.
  if (!extended.empty()) {
    BYOI_RETURN_IF_ERROR(ReadLogical(read, disk_size, extended[0].first, extended[0].second, t)
                             .Context("reading logical partitions"));
  }
  return t;
}

Result<PartitionTable> ReadPartitionTable(const ImageLayout& layout) {
  VirtualReader reader(layout);
  return ReadPartitionTable(
      [&reader](uint64_t offset, std::span<uint8_t> out) { return reader.Read(offset, out); },
      layout.virtual_size());
}

std::string PartitionTypeName(const Partition& p, PartitionTableType table) {
  if (table == PartitionTableType::kGpt) {
    static const std::pair<const char*, const char*> kNames[] = {
        {kEspGuid, "EFI System"},
        {"21686148-6449-6E6F-744E-656564454649", "BIOS boot"},
        {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"},
        {"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"},
        {"B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM-64)"},
        {"BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"},
        {"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"},
        {"E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"},
        {"A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"},
        {"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"},
        {"E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"},
        {"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery"},
        {"516E7CBA-6ECF-11D6-8FF8-00022D09712B", "FreeBSD data"},
        {"6A898CC3-1DD2-11B2-99A6-080020736631", "ZFS"},
    };
    for (const auto& [guid, name] : kNames) {
      if (p.type == guid) return name;
    }
    return p.type;
  }
  static const std::pair<uint8_t, const char*> kMbrNames[] = {
      {0x01, "FAT12"},          {0x05, "Extended"},       {0x06, "FAT16"},
      {0x07, "NTFS/exFAT"},     {0x0b, "FAT32"},          {0x0c, "FAT32 (LBA)"},
      {0x0e, "FAT16 (LBA)"},    {0x0f, "Extended (LBA)"}, {0x82, "Linux swap"},
      {0x83, "Linux"},          {0x85, "Linux extended"}, {0x8e, "Linux LVM"},
      {0xee, "GPT protective"}, {0xef, "EFI System"},     {0xfd, "Linux RAID"},
  };
  for (const auto& [type, name] : kMbrNames) {
    if (p.mbr_type() == type) return fmt::format("{} {}", p.type, name);
  }
  return p.type;
}

}  // namespace byoi
