// Big-endian stores into byte vectors, for unit tests that build qcow2 images byte by byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace byoi {

inline void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
inline void Put64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  Put32(b, at, static_cast<uint32_t>(v >> 32));
  Put32(b, at + 4, static_cast<uint32_t>(v));
}

}  // namespace byoi
