// Format detection over arbitrary bytes: no read out of bounds, and the verify rule gives either Ok
// or a catalogue message for every declared type.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "agent/image/format.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes(data, size);
  byoi::FormatInfo info = byoi::DetectFormat(bytes);
  if (info.name.empty() || info.contents.empty()) std::abort();
  if (info.format == byoi::ImageFormat::kRaw && info.virtual_size != size) std::abort();
  for (byoi::ImageType type :
       {byoi::ImageType::kRaw, byoi::ImageType::kQcow2, byoi::ImageType::kOva}) {
    byoi::Status s = byoi::CheckDeclaredType(info, type);
    if (!s.ok() && s.message().empty()) std::abort();
  }
  return 0;
}
