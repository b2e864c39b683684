// EFI_LOAD_OPTION, the content of a Boot#### variable (UEFI 2.10 §3.1.3), built and parsed with
// libefiboot/libefivar.
//
//   UINT32   Attributes            LOAD_OPTION_ACTIVE = 1
//   UINT16   FilePathListLength    bytes of the device path below
//   CHAR16   Description[]         UTF-16LE, NUL-terminated
//   EFI_DEVICE_PATH FilePathList   nodes of {UINT8 type, UINT8 subtype, UINT16 length, data}
//   UINT8    OptionalData[]        the rest (loader arguments; we write none)
//
// The device path we build is the short form efibootmgr writes and every firmware expands by
// matching the partition signature against the disks it sees (UEFI 2.10 §3.1.2 "short-form hard
// drive media device path"):
//   HD(partition number, format, signature, start LBA, size in LBA)   type 4 subtype 1, 42 bytes
//   File(\EFI\debian\shimx64.efi)                                      type 4 subtype 4
//   End of entire device path                                          type 0x7f subtype 0xff
// For GPT the signature is the partition's unique GUID in EFI byte order (first three fields
// little-endian), format 2, signature type 2; for MBR it is the 32-bit disk signature, format 1,
// signature type 1. LBAs are in the disk's logical blocks (512 or 4096 bytes).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

inline constexpr uint32_t kLoadOptionActive = 0x00000001;

enum class PartitionFormat : uint8_t { kMbr = 1, kGpt = 2 };
inline constexpr uint8_t kSignatureTypeMbr = 1;
inline constexpr uint8_t kSignatureTypeGuid = 2;

// The hard-drive media device path node.
struct HardDriveNode {
  uint32_t partition_number = 0;  // 1-based, as in the partition table
  uint64_t start_lba = 0;         // logical blocks
  uint64_t size_lba = 0;          // logical blocks
  std::array<uint8_t, 16> signature{};
  PartitionFormat format = PartitionFormat::kGpt;
  uint8_t signature_type = kSignatureTypeGuid;

  bool operator==(const HardDriveNode&) const = default;
};

// A parsed load option. `hard_drive`, `file_path` and `network` summarise the device path.
struct LoadOption {
  uint32_t attributes = 0;
  std::string description;                  // UTF-8
  std::optional<HardDriveNode> hard_drive;  // the first HD node, if any
  std::string file_path;  // the file path nodes joined, as stored ("\EFI\debian\shimx64.efi")
  bool network = false;   // has a MAC, IPv4, IPv6 or URI messaging node (a PXE/HTTP boot entry)
  std::vector<uint8_t> device_path;  // FilePathList as stored
  std::vector<uint8_t> optional_data;
};

// "\EFI\debian\grubx64.efi": slashes turned into backslashes, one leading backslash.
std::string NormalizeLoaderPath(std::string_view path);

// Builds the load option for `loader_path` (slashes or backslashes) on the partition `hd`.
// kInvalid when the path or description is empty or too long (1024 characters), or libefivar
// refuses or cannot encode it faithfully: libefivar 37 handles only UTF-8 of 1 and 2 bytes
// (U+0000-U+07FF); ChooseBootLabel keeps labels ASCII.
Result<std::vector<uint8_t>> EncodeLoadOption(const HardDriveNode& hd, std::string_view loader_path,
                                              std::string_view description,
                                              uint32_t attributes = kLoadOptionActive);

// Parses untrusted bytes (any Boot#### found in NVRAM). kInvalid when they are not a well-formed
// load option; never reads outside `bytes`.
Result<LoadOption> DecodeLoadOption(std::span<const uint8_t> bytes);

// Text for logs and status comments, in `efibootmgr -v` notation for the nodes we write:
// "HD(1,GPT,…,0x800,0x10000)/File(\EFI\…)"; other nodes as "MAC()", "IPv4()", "Path(1,1)".
// "(unprintable device path)" for a malformed path. Safe on any input.
std::string FormatDevicePath(std::span<const uint8_t> device_path);

// "d7928937-db77-4ce7-912c-205c05ddd690" (either case) -> the 16 bytes in EFI order (the first
// three fields little-endian, as GPT stores them). kInvalid for anything but 8-4-4-4-12 hex.
Result<std::array<uint8_t, 16>> GuidToEfiBytes(std::string_view text);

}  // namespace byoi
