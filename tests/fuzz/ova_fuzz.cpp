// libFuzzer target for the OVA and VMDK readers: arbitrary bytes as a VMDK file, as an OVA (tar,
// descriptor, manifest, then the VMDK it installs, its manifest digests checked), and as an OVF
// descriptor; every layout opened goes through the checks of layout_checks.hpp.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "agent/image/open_image.hpp"
#include "agent/image/ova.hpp"
#include "agent/image/ovf.hpp"
#include "agent/image/vmdk.hpp"
#include "tests/fuzz/layout_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace byoi;
  std::span<const uint8_t> bytes(data, size);
  if (auto vmdk = ReadVmdk(bytes); vmdk.ok()) {
    if (vmdk->layout.virtual_size() != vmdk->info.virtual_size) __builtin_trap();
    fuzz::CheckLayout(vmdk->layout, data, size);
  }
  if (LooksLikeOva(bytes)) {
    auto opened = OpenImage(bytes);
    if (opened.ok()) {
      if (!opened->ova || !opened->vmdk) __builtin_trap();
      const OvaMember& disk = opened->ova->members[opened->ova->disk];
      if (disk.offset > size || disk.size > size - disk.offset) __builtin_trap();
      CancelToken cancel;
      (void)VerifyOvaManifest(bytes, *opened->ova, cancel);
      fuzz::CheckLayout(opened->layout, data, size);
    }
  }
  if (size > 0 && data[0] == '<') {
    auto ovf = ParseOvf(std::string_view(reinterpret_cast<const char*>(data), size));
    if (ovf.ok() && (ovf->install >= ovf->disks.size() || ovf->install_file >= ovf->files.size())) {
      __builtin_trap();
    }
  }
  return 0;
}
