#include "agent/boot/esp.hpp"

#include <fcntl.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/base/utf16.hpp"
#include "agent/boot/fat_reader.hpp"
#include "agent/image/partition_table.hpp"

namespace byoi {
namespace {

constexpr size_t kMaxCsvBytes = 64 * 1024;

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
  BYOI_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), disk_path));
  const ReadAtFn read = ReadFromFd(fd.get());
  Result<PartitionTable> table = ReadPartitionTable(read, size);
  if (!table.ok()) {
    return std::move(table).status().Context("reading the partition table of " + disk_path);
  }
  return LocateEsp(read, *table, disk_path);
}

Result<EspLocation> LocateEsp(const ReadAtFn& read, const PartitionTable& table,
                              std::string_view where) {
  const std::string disk(where);
  if (table.type != PartitionTableType::kGpt && table.type != PartitionTableType::kMbr) {
    return Status::Error(Code::kNotFound, disk + " has no partition table");
  }
  const Partition* p = table.Esp();
  if (p == nullptr) return Status::Error(Code::kNotFound, "no EFI system partition on " + disk);
  EspLocation esp;
  esp.table = table.type;
  esp.sector_size = p->sector_size;
  esp.partition_number = static_cast<uint32_t>(p->number);
  esp.start_lba = p->start_sector;
  esp.size_lba = p->size_sectors;
  std::string what = "EFI system partition " + std::to_string(p->number) + " of " + disk;
  if (esp.table == PartitionTableType::kGpt) {
    esp.partition_guid = ToLowerAscii(p->uuid);
  } else {
    esp.mbr_signature = table.mbr_signature;
  }
  if (Result<FatReader> fat = FatReader::Open(read, esp.offset_bytes(), esp.size_bytes());
      !fat.ok()) {
    if (fat.status().code() == Code::kIo) return std::move(fat).status().Context("reading " + what);
    return Status::Error(Code::kInvalid,
                         what + " is not a FAT file system (" + fat.status().detail() + ")");
  }
  return esp;
}

Result<BootLoader> FindBootLoader(const std::string& disk_path, const EspLocation& esp,
                                  const std::string& wanted_path) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
  return FindBootLoader(ReadFromFd(fd.get()), esp, wanted_path, disk_path);
}

Result<BootLoader> FindBootLoader(const ReadAtFn& read, const EspLocation& esp,
                                  const std::string& wanted_path, std::string_view where) {
  const std::string disk(where);
  std::string shown = wanted_path.empty() ? "\\EFI\\BOOT\\BOOTX64.EFI" : wanted_path;
  auto fail = [&](Status s) {
    return std::move(s).Context("reading the EFI system partition of " + disk);
  };
  auto fat = FatReader::Open(read, esp.offset_bytes(), esp.size_bytes());
  if (!fat.ok()) return fail(std::move(fat).status());

  if (!wanted_path.empty()) {
    auto found = FindFile(*fat, wanted_path);
    if (!found.ok()) return fail(std::move(found).status());
    if (!*found) {
      return Status::Error(Code::kNotFound, "no file " + wanted_path + " on " + disk,
                           msg::BootloaderNotFound(wanted_path));
    }
    const std::string& path = (*found)->path;
    if (!IsPlainPath(path)) {
      return Status::Error(Code::kInvalid, SkippedNote(path) + " of " + disk,
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
        shown + " on " + disk;
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
