// The EFI system partition of the written disk and the boot loader on it (docs/boot.md).
//
// The ESP is found in the disk's own partition table (libblkid), never through /dev/sdXN nodes: the
// kernel may not have re-read the table yet (and in the test VM it never parses one). Its FAT file
// system is confirmed with libblkid and read in place with FatReader, at the partition's offset on
// the whole disk; nothing is mounted.
//
// Boot loader search, when the manifest gives no efiBootloaderPath (first found wins; "\EFI\*"
// directories in case-insensitive name order, \EFI\BOOT excluded because it holds the removable-
// media copies — \EFI\BOOT\grubx64.efi there would bypass shim):
//   1. \EFI\*\BOOTX64.CSV — shim's fallback list, UTF-16LE "loader,label,options,description"
//   2. \EFI\*\shimx64.efi
//   3. \EFI\*\grubx64.efi
//   4. \EFI\systemd\systemd-bootx64.efi
//   5. \EFI\BOOT\BOOTX64.EFI
//
// Names read from the ESP are untrusted: the loader path goes into the File() node of the boot
// entry (UTF-16, in NVRAM), into the status and onto the console. A path is used only when every
// byte of it, as stored on the ESP, is printable ASCII (0x20-0x7E). In the search, a directory or a
// file whose stored name is not is skipped — the next candidate is tried — and BootLoader::skipped
// says so (the runner turns each note into a status warning). An efiBootloaderPath from the
// manifest is plain already (the manifest refuses control characters), but the file it matches may
// be stored under another long name: such a match is refused.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/image/format.hpp"  // PartitionTableType

namespace byoi {

struct EspLocation {
  PartitionTableType table = PartitionTableType::kGpt;
  uint32_t sector_size = 512;     // the disk's logical block size, bytes
  uint32_t partition_number = 0;  // 1-based
  uint64_t start_lba = 0;         // in `sector_size` blocks
  uint64_t size_lba = 0;
  std::string partition_guid;  // GPT: the partition's unique GUID, lower case; MBR: empty
  uint32_t mbr_signature = 0;  // MBR: the disk signature (bytes 440-443); GPT: 0

  uint64_t offset_bytes() const { return start_lba * sector_size; }
  uint64_t size_bytes() const { return size_lba * sector_size; }
};

// Finds the ESP on `disk_path` (a block device or a disk image file): the GPT partition of type
// C12A7328-F81F-11D2-BA4B-00A0C93EC93B, or the MBR partition of type 0xEF, lowest number first,
// holding a vfat file system. A regular file whose GPT is not found with 512-byte sectors is tried
// again with 4096-byte sectors (an image made for a 4Kn disk).
// Errors: kNotFound when there is no partition table or no ESP in it (no catalogue message: the
// caller decides whether that is a warning or a failure); kInvalid when the ESP holds no FAT file
// system; kIo when the disk cannot be read. Reads only.
Result<EspLocation> FindEsp(const std::string& disk_path);

struct BootLoader {
  std::string path;       // as stored on the ESP: "\EFI\debian\shimx64.efi"
  std::string csv_label;  // the label of shim's BOOTX64.CSV when the loader came from one
  std::string os_dir;     // "debian" for \EFI\debian\…; empty for \EFI\BOOT and other layouts
  std::string found_by;   // "efiBootloaderPath", "BOOTX64.CSV", "shim", "grub", "systemd-boot",
                          // "fallback" — for the status comment
  // Candidates passed over because their names are not printable ASCII, one printable sentence
  // each ("skipped \EFI\de\x1bbian on the EFI system partition: its name is not printable ASCII").
  std::vector<std::string> skipped;
};

// Finds the loader on the ESP `esp` of `disk_path`. With a non-empty `wanted_path` (the manifest's
// efiBootloaderPath, '/' or '\', any case) only that file counts; otherwise the search order above,
// skipping names that are not printable ASCII.
// Errors: kNotFound with the catalogue message BootloaderNotFound(wanted_path, or the last path
// searched) when there is none (the detail lists the skipped names); kInvalid with the same
// message when `wanted_path` matches a file stored under a name that is not printable ASCII;
// kInvalid for a corrupt FAT file system; kIo. Reads only.
Result<BootLoader> FindBootLoader(const std::string& disk_path, const EspLocation& esp,
                                  const std::string& wanted_path);

// Parses shim's BOOTX64.CSV (UTF-16LE with or without a BOM; UTF-8 accepted too): the first line
// with a loader gives {loader file name, label}. nullopt-like empty loader when there is none.
struct ShimCsvEntry {
  std::string loader;  // a file name relative to the CSV's directory ("shimx64.efi")
  std::string label;   // "debian"
};
ShimCsvEntry ParseShimCsv(std::string_view bytes);

}  // namespace byoi
