#include "agent/base/bytes.hpp"

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

}  // namespace byoi
