// Reproducible bytes without structure, for unit tests that compare what went through with what
// went in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace byoi {

inline std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(gen());
  return v;
}

}  // namespace byoi
