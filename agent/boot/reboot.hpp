// The last step: leave the rescue system for the installed one (docs/pipeline.md "finish").
//
// It happens in two halves around the final status report, because once the final status has
// been delivered nothing may change it, yet a kexec can fail in ways worth reporting:
//   1. PrepareReboot() — before the final status: decides what will happen; for kexec it finds the
//      installed kernel and loads it into the kernel now (kexec_file_load), so a failure becomes a
//      note ("…; rebooting instead") that the final status can still carry.
//   2. Reboot() — after the final status has reached the status file, the API and the backend:
//      sync(), flush the target disk's buffers (fsync + BLKFLSBUF), then reboot(2) with
//      RB_AUTOBOOT, RB_POWER_OFF or RB_KEXEC. It does not return when it works.
// The machine is driven through `PowerControl`, so tests use a recording one and never
// reboot anything.
//
// kexec finds the kernel where it can read it without mounting: a Boot Loader Specification
// Type #1 entry on the ESP (\loader\entries\*.conf with `linux`, `initrd`, `options`; the entry
// with the greatest file name, which is the newest for versioned names). Kernels inside the root
// file system (/boot on ext4, as most cloud images have them) are not read: kexec then falls back
// to a plain reboot with a note.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

enum class RebootMode { kNone, kReboot, kPowerOff, kKexec };

// "none", "reboot", "poweroff", "kexec"; kInvalid otherwise.
Result<RebootMode> ParseRebootMode(std::string_view text);
std::string_view RebootModeName(RebootMode mode);

// What reboot(2) is asked for.
enum class PowerAction { kNone, kRestart, kPowerOff, kKexec };

struct KexecImage {
  std::vector<uint8_t> kernel;
  std::vector<uint8_t> initrd;  // all `initrd` lines concatenated (cpio archives concatenate)
  std::string cmdline;          // the `options` lines joined by spaces
  std::string source;           // "\loader\entries\debian.conf" — for the note
};

class PowerControl {
 public:
  virtual ~PowerControl() = default;
  // sync(2): every file system's dirty data to disk.
  virtual void Sync() = 0;
  // fsync + BLKFLSBUF for a block device (the page cache of the target is dropped, so nothing the
  // rescue system cached outlives it), fsync for a regular file.
  virtual Status FlushBuffers(const std::string& disk_path) = 0;
  // kexec_file_load(2): stage `image` for a later PowerAction::kKexec.
  virtual Status LoadKexec(const KexecImage& image) = 0;
  // reboot(2). With the real implementation it returns only on failure.
  virtual Status Act(PowerAction action) = 0;
};

class RealPowerControl final : public PowerControl {
 public:
  void Sync() override;
  Status FlushBuffers(const std::string& disk_path) override;
  Status LoadKexec(const KexecImage& image) override;
  Status Act(PowerAction action) override;
};

struct RebootPlan {
  RebootMode mode = RebootMode::kNone;  // as asked
  PowerAction action = PowerAction::kNone;
  std::string note;  // for the reboot step's comment: what will happen, and why if not as asked
};

// Decides, and for kexec stages the kernel (via `power`). Never fails: a kexec that cannot be
// prepared turns into a restart with the reason in `note`. Reads `disk_path` only for kexec.
RebootPlan PrepareReboot(PowerControl& power, RebootMode mode, const std::string& disk_path);

// REQUIRES: the final status has been reported (status file, API, backend).
// Does nothing for PowerAction::kNone. Otherwise sync, flush `disk_path`, act; with a real
// PowerControl it returns only on failure. A flush failure is returned without acting.
Status Reboot(PowerControl& power, const RebootPlan& plan, const std::string& disk_path);

// The kernel of a Type #1 boot loader entry on the disk's ESP; nullopt with `why` filled when
// there is none (no ESP, no entry, no `linux` line, files missing). Errors only for I/O failures.
Result<std::optional<KexecImage>> FindKexecImage(const std::string& disk_path, std::string* why);

}  // namespace byoi
