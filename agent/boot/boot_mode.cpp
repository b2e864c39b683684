#include "agent/boot/boot_mode.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>

#include "agent/base/fd.hpp"
#include "agent/boot/esp.hpp"

namespace byoi {

BootMode DetectBootMode(const std::string& efivars_dir) {
  struct stat st {};
  if (::stat(efivars_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return BootMode::kUefi;
  return BootMode::kLegacy;
}

std::string_view BootModeName(BootMode mode) {
  return mode == BootMode::kUefi ? "UEFI" : "legacy BIOS";
}

std::string LegacySkipReason(const std::string& efivars_dir) {
  return "legacy BIOS boot (no " + efivars_dir + "): the image's own boot code starts it";
}

bool HasMbrBootCode(std::span<const uint8_t> first_sector) {
  auto code = first_sector.first(440);
  return std::any_of(code.begin(), code.end(), [](uint8_t b) { return b != 0; });
}

Result<std::string> BootModeWarning(BootMode mode, const std::string& disk_path) {
  if (mode == BootMode::kLegacy) {
    BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(disk_path, O_RDONLY));
    std::array<uint8_t, 512> sector{};
    BYOI_RETURN_IF_ERROR(PreadAll(fd.get(), sector, 0).Context("reading the MBR of " + disk_path));
    if (HasMbrBootCode(sector)) return std::string();
    return std::string(
        "this server boots in legacy BIOS mode but the image has no MBR boot code: it will "
        "probably not boot");
  }
  auto esp = FindEsp(disk_path);
  if (esp.ok()) return std::string();
  if (esp.status().code() == Code::kIo) return std::move(esp).status();
  return "this server boots in UEFI mode but the image has no usable EFI system partition (" +
         esp.status().detail() + "): it will probably not boot";
}

}  // namespace byoi
