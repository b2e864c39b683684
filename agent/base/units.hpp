// Human-readable sizes, rates and durations for status comments and the console, the size
// parser for options such as --memory-limit, and sizes rounded to a sector or block.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace byoi {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;

// `v` rounded down (up) to a multiple of `a`, a sector or a block.
inline constexpr uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }
inline constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::string HumanBytes(uint64_t bytes);          // "2.1 GiB", "512 B"
std::string HumanRate(double bytes_per_second);  // "113 MB/s" (decimal, like curl and dd)
std::string HumanDuration(double seconds);       // "19 s", "3 min 05 s", "1 h 02 min"

// "1234", "64M", "20G", "1.5GiB", "512k": binary multiples. nullopt when not a size.
std::optional<uint64_t> ParseSize(std::string_view text);

}  // namespace byoi
