// How a job runs on this machine: the options `deploy` and `daemon` share (docs/cli.md), checked
// and typed by the option table (agent/cli/options.hpp) before any job starts, and handed to the
// runner.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "agent/boot/boot_entry.hpp"  // BootOrderPolicy
#include "agent/boot/reboot.hpp"      // RebootMode

namespace byoi {

struct JobOptions {
  std::string disk;  // --disk: a block device or a regular file; overrides diskGroupId
  // disk_groups (config only): explicit groups, "1=sda,sdb 2=nvme0n1" (agent/disk/inventory.hpp
  // ParseGroupMapping); empty means the automatic grouping of docs/disks.md.
  std::string disk_groups;
  std::string efivars = "/sys/firmware/efi/efivars";  // --efivars; absent directory = legacy BIOS
  RebootMode reboot = RebootMode::kNone;              // --reboot; the daemon's default is reboot
  std::optional<uint64_t> memory_limit;  // --memory-limit bytes; default MemTotal - 3 GiB
  BootOrderPolicy efi_boot_order = BootOrderPolicy::kFirst;  // --efi-boot-order (docs/boot.md)
  // Download (agent/fetch/fetch.hpp FetchOptions has the details).
  std::string ca_bundle;  // --ca-bundle FILE: PEM CA certificates for https image servers
  // --proxy URL: every image download goes through it (agent/fetch/proxy.hpp); a secret when it
  // holds USER:PASSWORD@. Empty: the environment's proxy variables, else none.
  std::string proxy;
  bool insecure = false;  // --insecure: skip TLS certificate verification (labs only)
  std::chrono::milliseconds stall_timeout{60000};  // without a byte before an attempt is retried
  std::chrono::milliseconds retry_delay{1000};     // before the 2nd attempt, doubling up to 30 s
  int download_attempts = 10;  // --download-attempts N in a row without progress before giving up
  int connections = 4;  // --connections N at once when the origin answers Range requests (1-16)
};

}  // namespace byoi
