// Reading fixed-width integers out of on-disk structures, and the one zero test, for every format
// the agent parses (qcow2 is big-endian; GPT, MBR, FAT and EFI load options are little-endian).
// The pointers must have the bytes to read: callers check bounds first.
#pragma once

#include <cstddef>
#include <cstdint>

namespace byoi {

inline uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t Le64(const uint8_t* p) { return uint64_t{Le32(p)} | (uint64_t{Le32(p + 4)} << 32); }
inline uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline uint64_t Be64(const uint8_t* p) { return (uint64_t{Be32(p)} << 32) | Be32(p + 4); }

// True when the n bytes at p are all zero; runs at memory speed (the buffer is compared with
// itself shifted, which memcmp vectorises).
bool IsAllZero(const uint8_t* p, size_t n);

}  // namespace byoi
