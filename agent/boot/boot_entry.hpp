// The boot entry policy of docs/boot.md: make the firmware boot the written disk next time.
//
// One Boot#### variable points at the loader on the ESP (HD()/File() device path, load_option.hpp):
//   - an existing entry on the same partition (GPT partition GUID; MBR disk signature + partition
//     number) and the same loader path (ASCII case-insensitive, '/' = '\') is reused and rewritten
//     only if its content differs (NVRAM has limited write cycles);
//   - otherwise the lowest free number is taken (numbers named by BootOrder or BootNext count as
//     used even when the variable is not visible: boot-service-only variables are hidden from
//     Linux);
//   - other disk entries (with a hard-drive node) carrying the same label are removed: they are
//     what a previous install of the same system left behind. Network and firmware entries are
//     never removed.
// BootOrder / BootNext by policy:
//   first          ours first in BootOrder; a BootNext that is not ours is deleted, since a
//   one-shot
//                  entry set earlier (often PXE, to reach this rescue system) would win next boot
//   after-network  ours right after the last network entry of BootOrder (PXE/HTTP: a device path
//                  with a MAC, IPv4, IPv6 or URI node, or a description with "PXE", "Network" or
//                  "HTTP"), first when there is none; for providers whose servers always netboot
//   bootnext       BootNext = ours; BootOrder keeps its order (removed entries are dropped from it)
//   none           nothing is read or written
// Order of writes, so that an interruption at any point leaves a bootable NVRAM: the entry first,
// then BootOrder/BootNext that reference it, then the removal of the stale entries. Every variable
// written is read back and compared byte for byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/boot/efi_vars.hpp"
#include "agent/boot/esp.hpp"
#include "agent/boot/load_option.hpp"

namespace byoi {

enum class BootOrderPolicy { kFirst, kAfterNetwork, kBootNext, kNone };

// "first", "after-network", "bootnext", "none"; kInvalid for anything else.
Result<BootOrderPolicy> ParseBootOrderPolicy(std::string_view text);
std::string_view BootOrderPolicyName(BootOrderPolicy policy);

// The label of the entry: the shim CSV's label, else the manifest's description, else the OS
// directory name ("debian"), else "BYOI". Printable ASCII (another character becomes '?', control
// characters are dropped), trimmed, at most 100 characters.
std::string ChooseBootLabel(const BootLoader& loader, std::string_view manifest_description);

// The HD() node for `esp`; kInvalid when the GPT partition GUID is malformed.
Result<HardDriveNode> HardDriveNodeFor(const EspLocation& esp);

// A PXE/HTTP boot entry, by device path or description (see above).
bool IsNetworkBootOption(const LoadOption& option);

struct BootEntryRequest {
  EspLocation esp;          // from FindEsp()
  std::string loader_path;  // BootLoader::path ("\EFI\debian\shimx64.efi")
  std::string label;        // ChooseBootLabel()
};

struct BootEntryResult {
  bool written = false;  // false only under policy none
  uint16_t number = 0;   // our Boot####
  std::string label;
  bool reused = false;                // an existing entry matched
  bool rewritten = false;             // the Boot#### variable was (re)written
  std::vector<uint16_t> removed;      // stale entries with the same label, deleted
  std::vector<uint16_t> boot_order;   // BootOrder as left
  std::optional<uint16_t> boot_next;  // BootNext as left
  std::string device_path;            // FormatDevicePath() of our entry

  // One line for the status comment and the log:
  // "Boot0003 \"debian\" HD(1,GPT,…)/File(\EFI\debian\shimx64.efi), BootOrder 0003,0001".
  std::string Summary() const;
};

// Reads what InstallBootEntry reads before its first write — the list of variables, BootOrder and
// BootNext — and refuses what it could not use, so that a job can fail on an unusable NVRAM before
// it writes the disk (the runner calls this while planning). Reads only.
// Errors, with message msg::kBootEntry and the cause in detail: kIo when the variables cannot be
// listed or read; kInvalid when BootOrder or BootNext is larger than kMaxEfiVariableBytes or
// malformed, or BootOrder is not a whole number of 2-byte entries.
Status CheckBootVariables(EfiVars& vars);

// Installs the entry of `request` into `vars` under `policy`. A BootOrder that is not a whole
// number of 2-byte entries is refused (kInvalid) before anything is written.
// On failure: code kIo (a variable could not be written or read back) or kInvalid (bad request),
// message msg::kBootEntry, the cause in detail. Variables already written stay (see the order of
// writes above); nothing is rolled back.
Result<BootEntryResult> InstallBootEntry(EfiVars& vars, const BootEntryRequest& request,
                                         BootOrderPolicy policy);

// "Boot000A" for 10.
std::string BootVariableName(uint16_t number);

}  // namespace byoi
