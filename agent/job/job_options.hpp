// How a job runs on this machine: the options `deploy` and `daemon` share (docs/cli.md), filled
// from the command line, the config file or the kernel command line, and handed to the runner.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace byoi {

struct JobOptions {
  std::string disk;  // --disk: a block device or a regular file; overrides diskGroupId
  // disk_groups (config only): explicit groups, "1=sda,sdb 2=nvme0n1" (agent/disk/inventory.hpp
  // ParseGroupMapping); empty means the automatic grouping of docs/disks.md.
  std::string disk_groups;
  std::string efivars = "/sys/firmware/efi/efivars";  // --efivars; absent directory = legacy BIOS
  std::string reboot = "none";                        // --reboot none|reboot|poweroff|kexec
  std::optional<uint64_t> memory_limit;  // --memory-limit bytes; default MemTotal - 3 GiB
  std::string efi_boot_order = "first";  // --efi-boot-order first|after-network|bootnext|none
  // Download (agent/fetch/fetch.hpp FetchOptions has the details).
  std::string ca_bundle;      // --ca-bundle FILE: PEM CA certificates for https image servers
  bool insecure = false;      // --insecure: skip TLS certificate verification (labs only)
  double stall_timeout = 60;  // --stall-timeout SECONDS without a byte before an attempt is retried
  double retry_delay = 1;     // --retry-delay SECONDS before the 2nd attempt, doubling up to 30 s
  int download_attempts = 10;  // --download-attempts N in a row without progress before giving up
  int connections = 4;         // --connections N (1-16) at once when the server answers Range
};

}  // namespace byoi
