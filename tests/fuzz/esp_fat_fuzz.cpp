// The ESP reader (agent/boot/fat_reader, esp): the FAT file system of a customer's image is
// untrusted. The input is a whole FAT file system; the target walks every directory (bounded),
// reads every small file, and parses each as shim's BOOTX64.CSV.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/base/fd.hpp"
#include "agent/boot/esp.hpp"
#include "agent/boot/fat_reader.hpp"

namespace {

void Walk(const byoi::FatReader& fat, const byoi::FatReader::Entry* dir, int depth, int& budget) {
  if (depth > 4 || --budget < 0) return;
  auto entries = fat.ReadDir(dir);
  if (!entries.ok()) return;
  for (const auto& e : *entries) {
    if (e.directory) {
      Walk(fat, &e, depth + 1, budget);
    } else if (--budget >= 0) {
      auto data = fat.ReadFile(e, 64 * 1024);
      if (data.ok()) {
        (void)byoi::ParseShimCsv({reinterpret_cast<const char*>(data->data()), data->size()});
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  byoi::UniqueFd fd(memfd_create("fat", MFD_CLOEXEC));
  if (!fd.valid() || !byoi::PwriteAll(fd.get(), {data, size}, 0).ok()) return 0;
  auto fat = byoi::FatReader::Open(byoi::ReadFromFd(fd.get()), 0, size);
  if (!fat.ok()) return 0;
  int budget = 64;
  Walk(*fat, nullptr, 0, budget);
  (void)fat->Lookup("\\EFI\\debian\\shimx64.efi");
  return 0;
}
