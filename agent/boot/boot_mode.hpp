// How this machine boots, and whether the image suits it.
//
// UEFI when the efivarfs directory exists (`--efivars`, default /sys/firmware/efi/efivars: the
// kernel creates it only when booted by UEFI firmware), legacy BIOS otherwise — then the
// bootloader step is skipped: the image's own MBR boot code starts it.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

enum class BootMode { kUefi, kLegacy };

BootMode DetectBootMode(const std::string& efivars_dir);
std::string_view BootModeName(BootMode mode);  // "UEFI", "legacy BIOS"

// The sentence for a skipped bootloader step on a legacy machine.
std::string LegacySkipReason(const std::string& efivars_dir);

// True when the first 440 bytes of the disk (the MBR's boot code area, before the disk signature)
// are not all zero. REQUIRES: first_sector.size() >= 440.
bool HasMbrBootCode(std::span<const uint8_t> first_sector);

// A warning for the status when the written disk does not suit `mode`, or "" when it does:
//   legacy BIOS and no MBR boot code  -> the firmware will find nothing to run;
//   UEFI and no usable ESP (FindEsp fails) -> there is no loader to point an entry at.
// Errors only when the disk cannot be read (kIo). Reads only.
Result<std::string> BootModeWarning(BootMode mode, const std::string& disk_path);

}  // namespace byoi
