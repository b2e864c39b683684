#include "agent/base/bytes.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace byoi {

bool IsAllZero(const uint8_t* p, size_t n) {
  // The first 16 bytes checked directly, then the buffer against itself shifted by 16.
  constexpr size_t kHead = 16;
  if (n <= kHead) return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
  return std::all_of(p, p + kHead, [](uint8_t b) { return b == 0; }) &&
         std::memcmp(p, p + kHead, n - kHead) == 0;
}

std::string FormatGuid(std::span<const uint8_t, 16> b) {
  return fmt::format("{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
                     Le32(&b[0]), Le16(&b[4]), Le16(&b[6]), b[8], b[9], b[10], b[11], b[12], b[13],
                     b[14], b[15]);
}

}  // namespace byoi
