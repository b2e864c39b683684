// How a job runs on this machine: the options `deploy` and `daemon` share (docs/cli.md), checked
// and typed by the option table (agent/cli/options.hpp) before any job starts, and handed to the
// runner.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/boot/boot_entry.hpp"  // BootOrderPolicy
#include "agent/boot/reboot.hpp"      // RebootMode

namespace byoi {

// How an image reaches the disk (docs/pipeline.md, "Write modes"): whole in RAM and verified before
// the first write, or streamed to the disk while it downloads; auto picks RAM when the image fits
// the RAM budget.
enum class WriteMode { kAuto, kRam, kStream };

// "auto", "ram", "stream".
inline std::string_view WriteModeName(WriteMode mode) {
  return mode == WriteMode::kRam ? "ram" : mode == WriteMode::kStream ? "stream" : "auto";
}
// The mode named `text`, or nullopt.
inline std::optional<WriteMode> ParseWriteMode(std::string_view text) {
  for (WriteMode m : {WriteMode::kAuto, WriteMode::kRam, WriteMode::kStream}) {
    if (WriteModeName(m) == text) return m;
  }
  return std::nullopt;
}

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
  WriteMode write_mode = WriteMode::kAuto;  // --write-mode; a manifest's writeMode wins
  // --verify-written: read the disk back after writing and compare (a manifest's verifyWritten
  // true asks for it too).
  bool verify_written = false;
  // The swarm (a manifest with `torrent`, docs/pipeline.md "Swarm downloads"): how long the job
  // keeps seeding after it is done, before the reboot (--seed-time), and the upload limit in
  // bytes per second, 0 for none (--upload-rate).
  std::chrono::milliseconds seed_time{60000};
  uint64_t upload_rate = 0;
  // --swarm-listen: libtorrent's listen_interfaces, where peers reach this agent (and the networks
  // Local Service Discovery announces on).
  std::string swarm_listen = "0.0.0.0:0,[::]:0";
  // --swarm-dht: the rack's private DHT's bootstrap nodes, HOST:PORT comma-separated; empty: no
  // DHT.
  std::string swarm_dht;
};

}  // namespace byoi
