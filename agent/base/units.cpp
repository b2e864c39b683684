#include "agent/base/units.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cmath>

namespace byoi {

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < kKiB) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 5) {
    v /= 1024;
    ++unit;
  }
  return v < 10 ? fmt::format("{:.1f} {}", v, kUnits[unit])
                : fmt::format("{:.0f} {}", v, kUnits[unit]);
}

std::string HumanRate(double bytes_per_second) {
  if (!(bytes_per_second > 0)) return "0 B/s";
  if (bytes_per_second < 1e3) return fmt::format("{:.0f} B/s", bytes_per_second);
  if (bytes_per_second < 1e6) return fmt::format("{:.0f} kB/s", bytes_per_second / 1e3);
  if (bytes_per_second < 1e9) return fmt::format("{:.0f} MB/s", bytes_per_second / 1e6);
  return fmt::format("{:.2f} GB/s", bytes_per_second / 1e9);
}

std::string HumanDuration(double seconds) {
  if (!(seconds >= 0) || std::isinf(seconds)) return "?";
  auto s = static_cast<uint64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{} s", s);
  if (s < 3600) return fmt::format("{} min {:02} s", s / 60, s % 60);
  return fmt::format("{} h {:02} min", s / 3600, (s % 3600) / 60);
}

std::optional<uint64_t> ParseSize(std::string_view text) {
  double number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  // `!(number >= 0)` also refuses NaN ("nan" parses), whose conversion below would be undefined.
  if (ec != std::errc() || !(number >= 0)) return std::nullopt;
  std::string suffix(end, text.data() + text.size());
  for (char& c : suffix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (suffix.ends_with("ib"))
    suffix.resize(suffix.size() - 2);
  else if (suffix.size() == 2 && suffix[1] == 'b')
    suffix.resize(1);
  uint64_t mult = 1;
  if (suffix.empty() || suffix == "b")
    mult = 1;
  else if (suffix == "k")
    mult = kKiB;
  else if (suffix == "m")
    mult = kMiB;
  else if (suffix == "g")
    mult = kGiB;
  else if (suffix == "t")
    mult = 1024 * kGiB;
  else
    return std::nullopt;
  double bytes = number * static_cast<double>(mult);
  if (bytes > 1.8e19) return std::nullopt;
  return static_cast<uint64_t>(bytes);
}

}  // namespace byoi
