#include "agent/boot/reboot.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/kexec.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "agent/base/fd.hpp"
#include "agent/base/text.hpp"
#include "agent/base/utf16.hpp"
#include "agent/boot/esp.hpp"
#include "agent/boot/fat_reader.hpp"

namespace byoi {
namespace {

constexpr size_t kMaxEntryBytes = 64 * 1024;
constexpr size_t kMaxKernelBytes = 256u << 20;
constexpr size_t kMaxInitrdBytes = 1024u << 20;

// A memfd holding `data`, for kexec_file_load, which takes file descriptors.
Result<UniqueFd> MemFd(const char* name, const std::vector<uint8_t>& data) {
  int raw = ::memfd_create(name, MFD_CLOEXEC);
  if (raw < 0) return Status::FromErrno(std::string("creating memfd ") + name, errno);
  UniqueFd fd(raw);
  BYOI_RETURN_IF_ERROR(PwriteAll(fd.get(), data, 0).Context(std::string("filling memfd ") + name));
  return fd;
}

}  // namespace

Result<RebootMode> ParseRebootMode(std::string_view text) {
  if (text == "none") return RebootMode::kNone;
  if (text == "reboot") return RebootMode::kReboot;
  if (text == "poweroff") return RebootMode::kPowerOff;
  if (text == "kexec") return RebootMode::kKexec;
  return Status::Error(Code::kInvalid, "reboot mode \"" + std::string(text) +
                                           "\": expected none, reboot, poweroff or kexec");
}

std::string_view RebootModeName(RebootMode mode) {
  switch (mode) {
    case RebootMode::kNone:
      return "none";
    case RebootMode::kReboot:
      return "reboot";
    case RebootMode::kPowerOff:
      return "poweroff";
    case RebootMode::kKexec:
      return "kexec";
  }
  return "?";
}

void RealPowerControl::Sync() { ::sync(); }

Status RealPowerControl::FlushBuffers(const std::string& disk_path) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
  if (::fsync(fd.get()) != 0) return Status::FromErrno("flushing " + disk_path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("examining " + disk_path, errno);
  if (S_ISBLK(st.st_mode) && ::ioctl(fd.get(), BLKFLSBUF, 0) != 0) {
    return Status::FromErrno("flushing the buffers of " + disk_path, errno);
  }
  return Status::Ok();
}

Status RealPowerControl::LoadKexec(const KexecImage& image) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd kernel, MemFd("kexec-kernel", image.kernel));
  UniqueFd initrd;
  unsigned long flags = 0;
  if (image.initrd.empty()) {
    flags |= KEXEC_FILE_NO_INITRAMFS;
  } else {
    BYOI_ASSIGN_OR_RETURN(initrd, MemFd("kexec-initrd", image.initrd));
  }
  // The length counts the terminating NUL.
  if (::syscall(SYS_kexec_file_load, kernel.get(), initrd.valid() ? initrd.get() : -1,
                image.cmdline.size() + 1, image.cmdline.c_str(), flags) != 0) {
    return Status::FromErrno("kexec_file_load of the kernel from " + image.source, errno);
  }
  return Status::Ok();
}

Status RealPowerControl::Act(PowerAction action) {
  int cmd = RB_AUTOBOOT;
  switch (action) {
    case PowerAction::kNone:
      return Status::Ok();
    case PowerAction::kRestart:
      cmd = RB_AUTOBOOT;
      break;
    case PowerAction::kPowerOff:
      cmd = RB_POWER_OFF;
      break;
    case PowerAction::kKexec:
      cmd = RB_KEXEC;
      break;
  }
  ::reboot(cmd);
  return Status::FromErrno("reboot(2)", errno);  // reached only when it failed
}

Result<std::optional<KexecImage>> FindKexecImage(const std::string& disk_path, std::string* why) {
  auto none = [&](std::string reason) {
    *why = std::move(reason);
    return std::optional<KexecImage>();
  };
  auto esp = FindEsp(disk_path);
  if (!esp.ok()) {
    if (esp.status().code() == Code::kIo) return std::move(esp).status();
    return none("no EFI system partition to look for a kernel in (" + esp.status().detail() + ")");
  }
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
  auto fat = FatReader::Open(ReadFromFd(fd.get()), esp->offset_bytes(), esp->size_bytes());
  if (!fat.ok())
    return none("the EFI system partition is unreadable (" + fat.status().detail() + ")");
  auto dir = fat->Lookup("\\loader\\entries");
  if (!dir.ok() || !*dir || !(*dir)->entry.directory) {
    return none("no boot loader entries (\\loader\\entries) on the EFI system partition");
  }
  auto entries = fat->ReadDir(&(*dir)->entry);
  if (!entries.ok())
    return none("unreadable \\loader\\entries (" + entries.status().detail() + ")");
  const FatReader::Entry* chosen = nullptr;
  for (const FatReader::Entry& e : *entries) {
    std::string upper = ToUpperAscii(e.name);
    if (e.directory || upper.size() < 6 || upper.substr(upper.size() - 5) != ".CONF") continue;
    if (chosen == nullptr || ToUpperAscii(chosen->name) < upper) chosen = &e;
  }
  if (chosen == nullptr) return none("no *.conf entry in \\loader\\entries");

  KexecImage image;
  image.source = (*dir)->path + "\\" + chosen->name;
  auto text = fat->ReadFile(*chosen, kMaxEntryBytes);
  if (!text.ok()) return none("unreadable " + image.source + " (" + text.status().detail() + ")");
  std::string linux_path;
  std::vector<std::string> initrds;
  std::string_view body(reinterpret_cast<const char*>(text->data()), text->size());
  while (!body.empty()) {
    size_t eol = body.find('\n');
    std::string line = std::string(TrimBlanks(body.substr(0, eol)));
    body = eol == std::string_view::npos ? std::string_view() : body.substr(eol + 1);
    if (line.empty() || line[0] == '#') continue;
    size_t space = line.find_first_of(" \t");
    std::string key = line.substr(0, space);
    std::string value =
        space == std::string::npos ? std::string() : std::string(TrimBlanks(line.substr(space)));
    if (key == "linux") linux_path = value;
    if (key == "initrd") initrds.push_back(value);
    if (key == "options") image.cmdline += (image.cmdline.empty() ? "" : " ") + value;
  }
  if (linux_path.empty()) return none(image.source + " has no linux line");

  auto read = [&](const std::string& path, size_t limit,
                  std::vector<uint8_t>& out) -> Result<bool> {
    auto found = fat->Lookup(path);
    if (!found.ok() || !*found || (*found)->entry.directory) return false;
    auto data = fat->ReadFile((*found)->entry, limit);
    if (!data.ok()) return false;
    out.insert(out.end(), data->begin(), data->end());
    return true;
  };
  BYOI_ASSIGN_OR_RETURN(bool have_kernel, read(linux_path, kMaxKernelBytes, image.kernel));
  if (!have_kernel) return none("kernel " + linux_path + " of " + image.source + " is unreadable");
  for (const std::string& initrd : initrds) {
    BYOI_ASSIGN_OR_RETURN(bool ok, read(initrd, kMaxInitrdBytes, image.initrd));
    if (!ok) return none("initrd " + initrd + " of " + image.source + " is unreadable");
  }
  return std::optional<KexecImage>(std::move(image));
}

RebootPlan PrepareReboot(PowerControl& power, RebootMode mode, const std::string& disk_path) {
  RebootPlan plan;
  plan.mode = mode;
  switch (mode) {
    case RebootMode::kNone:
      plan.note = "no reboot (--reboot none)";
      return plan;
    case RebootMode::kReboot:
      plan.action = PowerAction::kRestart;
      plan.note = "rebooting";
      return plan;
    case RebootMode::kPowerOff:
      plan.action = PowerAction::kPowerOff;
      plan.note = "powering off";
      return plan;
    case RebootMode::kKexec:
      break;
  }
  plan.action = PowerAction::kRestart;
  std::string why;
  auto image = FindKexecImage(disk_path, &why);
  if (!image.ok()) {
    plan.note = "kexec: " + image.status().ToString() + "; rebooting instead";
    return plan;
  }
  if (!*image) {
    plan.note = "kexec: " + why + "; rebooting instead";
    return plan;
  }
  Status loaded = power.LoadKexec(**image);
  if (!loaded.ok()) {
    plan.note = "kexec: " + loaded.ToString() + "; rebooting instead";
    return plan;
  }
  plan.action = PowerAction::kKexec;
  plan.note = "kexec into the kernel of " + (*image)->source;
  return plan;
}

Status Reboot(PowerControl& power, const RebootPlan& plan, const std::string& disk_path) {
  if (plan.action == PowerAction::kNone) return Status::Ok();
  // The disk first: a reboot that loses the last writes would leave a disk that looks complete.
  power.Sync();
  if (!disk_path.empty()) BYOI_RETURN_IF_ERROR(power.FlushBuffers(disk_path));
  return power.Act(plan.action);
}

}  // namespace byoi
