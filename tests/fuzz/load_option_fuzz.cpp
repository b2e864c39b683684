// EFI_LOAD_OPTION parsing (agent/boot/load_option): any Boot#### found in NVRAM is untrusted.
#include <cstddef>
#include <cstdint>

#include "agent/boot/boot_entry.hpp"
#include "agent/boot/load_option.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto opt = byoi::DecodeLoadOption({data, size});
  if (opt.ok()) {
    (void)byoi::FormatDevicePath(opt->device_path);
    (void)byoi::IsNetworkBootOption(*opt);
    (void)byoi::NormalizeLoaderPath(opt->file_path);
  }
  return 0;
}
