#include "agent/boot/esp.hpp"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/boot/fat_reader.hpp"
#include "agent/boot/utf16.hpp"

namespace byoi {
namespace {

constexpr std::string_view kEspTypeGuid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
constexpr int kEspMbrType = 0xEF;
constexpr size_t kMaxCsvBytes = 64 * 1024;

struct ProbeDeleter {
  void operator()(blkid_probe pr) const { blkid_free_probe(pr); }
};
using Probe = std::unique_ptr<std::remove_pointer_t<blkid_probe>, ProbeDeleter>;

Result<Probe> NewProbe(int fd, uint64_t offset, uint64_t size, const std::string& what) {
  Probe pr(blkid_new_probe());
  if (!pr) return Status::Error(Code::kIo, what + ": cannot allocate a libblkid probe");
  if (blkid_probe_set_device(pr.get(), fd, static_cast<blkid_loff_t>(offset),
                             static_cast<blkid_loff_t>(size)) != 0) {
    return Status::Error(Code::kIo, what + ": libblkid cannot use the device");
  }
  return pr;
}

struct PartitionInfo {
  int number = 0;
  uint64_t start_bytes = 0;
  uint64_t size_bytes = 0;
  std::string uuid;
};

struct TableInfo {
  bool found = false;  // libblkid found a GPT or MBR
  PartitionTableType type = PartitionTableType::kGpt;
  uint32_t sector_size = 512;
  std::vector<PartitionInfo> esps;
};

// Probes the partition table with `sector_size` (0 = libblkid's choice).
Result<TableInfo> ProbeTable(int fd, const std::string& disk, unsigned sector_size) {
  BYOI_ASSIGN_OR_RETURN(Probe pr, NewProbe(fd, 0, 0, disk));
  if (sector_size != 0) blkid_probe_set_sectorsize(pr.get(), sector_size);
  blkid_probe_enable_superblocks(pr.get(), 0);
  blkid_probe_enable_partitions(pr.get(), 1);
  blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_ENTRY_DETAILS);
  blkid_partlist list = blkid_probe_get_partitions(pr.get());
  TableInfo info;
  if (list == nullptr) return info;
  blkid_parttable table = blkid_partlist_get_table(list);
  const char* type = table ? blkid_parttable_get_type(table) : nullptr;
  if (type == nullptr) return info;
  std::string_view type_name = type;
  if (type_name == "gpt") {
    info.type = PartitionTableType::kGpt;
  } else if (type_name == "dos") {
    info.type = PartitionTableType::kMbr;
  } else {
    return info;  // BSD labels and the like: no ESP there
  }
  info.found = true;
  info.sector_size = blkid_probe_get_sectorsize(pr.get());
  int n = blkid_partlist_numof_partitions(list);
  for (int i = 0; i < n; ++i) {
    blkid_partition part = blkid_partlist_get_partition(list, i);
    if (part == nullptr || blkid_partition_is_extended(part)) continue;
    // Only partitions of the top-level table: a nested table (a BSD label inside an MBR slot)
    // is not something firmware looks into.
    if (blkid_partition_get_table(part) != table) continue;
    bool esp = false;
    if (info.type == PartitionTableType::kGpt) {
      const char* t = blkid_partition_get_type_string(part);
      esp = t != nullptr && EqualsIgnoreCaseAscii(t, kEspTypeGuid);
    } else {
      esp = blkid_partition_get_type(part) == kEspMbrType;
    }
    if (!esp) continue;
    PartitionInfo p;
    p.number = blkid_partition_get_partno(part);
    // libblkid counts in 512-byte sectors whatever the disk's block size.
    p.start_bytes = static_cast<uint64_t>(blkid_partition_get_start(part)) * 512;
    p.size_bytes = static_cast<uint64_t>(blkid_partition_get_size(part)) * 512;
    const char* uuid = blkid_partition_get_uuid(part);
    if (uuid != nullptr) p.uuid = ToLowerAscii(uuid);
    info.esps.push_back(std::move(p));
  }
  std::sort(info.esps.begin(), info.esps.end(),
            [](const PartitionInfo& a, const PartitionInfo& b) { return a.number < b.number; });
  return info;
}

Result<std::string> ProbeFilesystem(int fd, uint64_t offset, uint64_t size,
                                    const std::string& what) {
  BYOI_ASSIGN_OR_RETURN(Probe pr, NewProbe(fd, offset, size, what));
  blkid_probe_enable_partitions(pr.get(), 0);
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(pr.get(), BLKID_SUBLKS_TYPE);
  int rc = blkid_do_safeprobe(pr.get());
  if (rc == -2) return std::string("(ambiguous)");
  if (rc != 0) return std::string();
  const char* type = nullptr;
  if (blkid_probe_lookup_value(pr.get(), "TYPE", &type, nullptr) != 0 || type == nullptr) {
    return std::string();
  }
  return std::string(type);
}

// True when every byte of `path` is printable ASCII (0x20-0x7E): what may go into a File() node
// and the status (see the header).
bool IsPlainPath(std::string_view path) {
  return std::all_of(path.begin(), path.end(), [](char c) { return c >= 0x20 && c <= 0x7E; });
}

std::string SkippedNote(std::string_view path) {
  return "skipped " + PrintableText(path) +
         " on the EFI system partition: its name is not printable ASCII";
}

// The directories under \EFI except BOOT, in case-insensitive name order. Directories whose names
// are not plain (IsPlainPath) are left out, each with a note in `skipped`.
Result<std::vector<FatReader::Entry>> OsDirectories(const FatReader& fat,
                                                    std::vector<std::string>& skipped) {
  BYOI_ASSIGN_OR_RETURN(std::optional<FatReader::Found> efi, fat.Lookup("\\EFI"));
  std::vector<FatReader::Entry> dirs;
  if (!efi || !efi->entry.directory) return dirs;
  BYOI_ASSIGN_OR_RETURN(std::vector<FatReader::Entry> entries, fat.ReadDir(&efi->entry));
  for (FatReader::Entry& e : entries) {
    if (!e.directory || EqualsIgnoreCaseAscii(e.name, "BOOT")) continue;
    if (!IsPlainPath(e.name)) {
      skipped.push_back(SkippedNote(efi->path + "\\" + e.name));
      continue;
    }
    dirs.push_back(std::move(e));
  }
  std::stable_sort(dirs.begin(), dirs.end(), [](const auto& a, const auto& b) {
    return ToUpperAscii(a.name) < ToUpperAscii(b.name);
  });
  return dirs;
}

// The path of an existing regular file, or nullopt.
Result<std::optional<FatReader::Found>> FindFile(const FatReader& fat, std::string_view path) {
  BYOI_ASSIGN_OR_RETURN(std::optional<FatReader::Found> found, fat.Lookup(path));
  if (found && found->entry.directory) found.reset();
  return found;
}

// "debian" for "\EFI\debian\shimx64.efi".
std::string OsDirOf(std::string_view path) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '\\' || path[i] == '/') {
      if (i > start) parts.emplace_back(path.substr(start, i - start));
      start = i + 1;
    }
  }
  if (parts.size() == 3 && EqualsIgnoreCaseAscii(parts[0], "EFI") &&
      !EqualsIgnoreCaseAscii(parts[1], "BOOT")) {
    return parts[1];
  }
  return {};
}

// The first candidate of the search order (see the header) whose path is plain; the others found
// before it are noted in `skipped`.
Result<std::optional<BootLoader>> SearchLoader(const FatReader& fat,
                                               std::vector<std::string>& skipped) {
  BYOI_ASSIGN_OR_RETURN(std::vector<FatReader::Entry> dirs, OsDirectories(fat, skipped));
  // A file found through a plain name may still be stored under another long name (the lookup
  // matches short names too): the path as stored is what counts.
  auto plain = [&skipped](const std::optional<FatReader::Found>& found) {
    if (!found) return false;
    if (IsPlainPath(found->path)) return true;
    skipped.push_back(SkippedNote(found->path));
    return false;
  };
  for (const FatReader::Entry& dir : dirs) {
    std::string base = "\\EFI\\" + dir.name + "\\";
    BYOI_ASSIGN_OR_RETURN(auto csv, FindFile(fat, base + "BOOTX64.CSV"));
    if (!csv) continue;
    auto bytes = fat.ReadFile(csv->entry, kMaxCsvBytes);
    if (!bytes.ok()) return std::move(bytes).status().Context("reading " + csv->path);
    ShimCsvEntry entry =
        ParseShimCsv({reinterpret_cast<const char*>(bytes->data()), bytes->size()});
    if (entry.loader.empty() || entry.loader.find_first_of("\\/") != std::string::npos) continue;
    BYOI_ASSIGN_OR_RETURN(auto loader, FindFile(fat, base + entry.loader));
    // A CSV naming a missing loader would give an entry that cannot boot.
    if (!plain(loader)) continue;
    return std::optional<BootLoader>(
        BootLoader{loader->path, entry.label, OsDirOf(loader->path), "BOOTX64.CSV", {}});
  }
  struct Candidate {
    std::string_view file;
    std::string_view found_by;
  };
  for (Candidate c : {Candidate{"shimx64.efi", "shim"}, Candidate{"grubx64.efi", "grub"}}) {
    for (const FatReader::Entry& dir : dirs) {
      BYOI_ASSIGN_OR_RETURN(auto loader,
                            FindFile(fat, "\\EFI\\" + dir.name + "\\" + std::string(c.file)));
      if (plain(loader)) {
        return std::optional<BootLoader>(
            BootLoader{loader->path, "", OsDirOf(loader->path), std::string(c.found_by), {}});
      }
    }
  }
  for (Candidate c : {Candidate{"\\EFI\\systemd\\systemd-bootx64.efi", "systemd-boot"},
                      Candidate{"\\EFI\\BOOT\\BOOTX64.EFI", "fallback"}}) {
    BYOI_ASSIGN_OR_RETURN(auto loader, FindFile(fat, c.file));
    if (plain(loader)) {
      return std::optional<BootLoader>(
          BootLoader{loader->path, "", OsDirOf(loader->path), std::string(c.found_by), {}});
    }
  }
  return std::optional<BootLoader>();
}

}  // namespace

Result<EspLocation> FindEsp(const std::string& disk_path) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("examining " + disk_path, errno);

  BYOI_ASSIGN_OR_RETURN(TableInfo table, ProbeTable(fd.get(), disk_path, 0));
  // An image made for a 4Kn disk keeps its GPT header at byte 4096; a file has no block size to
  // tell, so look there too before giving up.
  if (S_ISREG(st.st_mode) && table.esps.empty()) {
    BYOI_ASSIGN_OR_RETURN(TableInfo table4k, ProbeTable(fd.get(), disk_path, 4096));
    if (table4k.found && table4k.type == PartitionTableType::kGpt && !table4k.esps.empty()) {
      table = std::move(table4k);
    }
  }
  if (!table.found) {
    return Status::Error(Code::kNotFound, disk_path + " has no partition table");
  }
  if (table.esps.empty()) {
    return Status::Error(Code::kNotFound, "no EFI system partition on " + disk_path);
  }
  const PartitionInfo& p = table.esps.front();
  EspLocation esp;
  esp.table = table.type;
  esp.sector_size = table.sector_size;
  esp.partition_number = static_cast<uint32_t>(p.number);
  if (esp.sector_size == 0 || p.start_bytes % esp.sector_size != 0 ||
      p.size_bytes % esp.sector_size != 0) {
    return Status::Error(Code::kInvalid, "EFI system partition " + std::to_string(p.number) +
                                             " of " + disk_path + " is not aligned to " +
                                             std::to_string(esp.sector_size) + "-byte sectors");
  }
  esp.start_lba = p.start_bytes / esp.sector_size;
  esp.size_lba = p.size_bytes / esp.sector_size;
  std::string what = "EFI system partition " + std::to_string(p.number) + " of " + disk_path;
  if (esp.table == PartitionTableType::kGpt) {
    esp.partition_guid = p.uuid;
    if (esp.partition_guid.size() != 36) {
      return Status::Error(Code::kInvalid, what + " has no partition GUID");
    }
  } else {
    std::array<uint8_t, 4> sig{};
    BYOI_RETURN_IF_ERROR(PreadAll(fd.get(), sig, 440).Context("reading the MBR of " + disk_path));
    esp.mbr_signature = static_cast<uint32_t>(sig[0]) | static_cast<uint32_t>(sig[1]) << 8 |
                        static_cast<uint32_t>(sig[2]) << 16 | static_cast<uint32_t>(sig[3]) << 24;
  }
  BYOI_ASSIGN_OR_RETURN(std::string fs,
                        ProbeFilesystem(fd.get(), esp.offset_bytes(), esp.size_bytes(), what));
  if (fs != "vfat") {
    return Status::Error(
        Code::kInvalid,
        what + " holds " + (fs.empty() ? "no known file system" : fs) + ", not a FAT file system");
  }
  return esp;
}

Result<BootLoader> FindBootLoader(const std::string& disk_path, const EspLocation& esp,
                                  const std::string& wanted_path) {
  std::string shown = wanted_path.empty() ? "\\EFI\\BOOT\\BOOTX64.EFI" : wanted_path;
  auto fail = [&](Status s) {
    return std::move(s).Context("reading the EFI system partition of " + disk_path);
  };
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
  auto fat = FatReader::Open(fd.get(), esp.offset_bytes(), esp.size_bytes());
  if (!fat.ok()) return fail(std::move(fat).status());

  if (!wanted_path.empty()) {
    auto found = FindFile(*fat, wanted_path);
    if (!found.ok()) return fail(std::move(found).status());
    if (!*found) {
      return Status::Error(Code::kNotFound, "no file " + wanted_path + " on " + disk_path,
                           msg::BootloaderNotFound(wanted_path));
    }
    const std::string& path = (*found)->path;
    if (!IsPlainPath(path)) {
      return Status::Error(Code::kInvalid, SkippedNote(path) + " of " + disk_path,
                           msg::BootloaderNotFound(wanted_path));
    }
    return BootLoader{path, "", OsDirOf(path), "efiBootloaderPath", {}};
  }
  std::vector<std::string> skipped;
  auto found = SearchLoader(*fat, skipped);
  if (!found.ok()) return fail(std::move(found).status());
  if (!*found) {
    std::string detail =
        "searched \\EFI\\*\\BOOTX64.CSV, \\EFI\\*\\shimx64.efi, \\EFI\\*\\grubx64.efi, "
        "\\EFI\\systemd\\systemd-bootx64.efi and " +
        shown + " on " + disk_path;
    for (const std::string& note : skipped) detail += "; " + note;
    return Status::Error(Code::kNotFound, detail, msg::BootloaderNotFound(shown));
  }
  BootLoader loader = std::move(**found);
  loader.skipped = std::move(skipped);
  return loader;
}

ShimCsvEntry ParseShimCsv(std::string_view bytes) {
  std::string text;
  auto u8 = [](std::string_view s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0xFF &&
      static_cast<uint8_t>(bytes[1]) == 0xFE) {
    text = Utf16LeToUtf8(u8(bytes.substr(2)), /*stop_at_nul=*/true);
  } else if (bytes.size() >= 2 && bytes[1] == '\0') {
    text = Utf16LeToUtf8(u8(bytes), /*stop_at_nul=*/true);  // UTF-16LE without a BOM
  } else {
    text = std::string(bytes.substr(0, bytes.find('\0')));
    if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  }
  auto trim = [](std::string s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    size_t e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol == std::string::npos ? text.size() + 1 : eol + 1;
    size_t comma = line.find(',');
    ShimCsvEntry entry;
    entry.loader = trim(line.substr(0, comma));
    if (entry.loader.empty()) continue;
    if (comma != std::string::npos) {
      size_t next = line.find(',', comma + 1);
      entry.label = trim(
          line.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1));
    }
    return entry;
  }
  return {};
}

}  // namespace byoi
