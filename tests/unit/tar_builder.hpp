// A ustar archive built in memory, for tests of the OVA reader and of format detection (python's
// tarfile and GNU tar make the archives of the integration tests).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace byoi::testing {

struct TarMember {
  std::string name;
  std::string data;
  char type = '0';  // '0' a file, '5' a directory, '2' a symbolic link
};

// One 512-byte ustar header with a valid checksum.
inline std::vector<uint8_t> TarHeader(const TarMember& m) {
  std::vector<uint8_t> h(512, 0);
  auto put = [&h](size_t at, std::string_view s) { std::memcpy(&h[at], s.data(), s.size()); };
  // `width` - 1 octal digits and a NUL, as ustar wants its numbers.
  auto octal = [&h](size_t at, size_t width, uint64_t v) {
    for (size_t i = width - 1; i-- > 0; v >>= 3) h[at + i] = static_cast<uint8_t>('0' + (v & 7));
  };
  put(0, m.name.substr(0, 100));
  octal(100, 8, 0644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, m.type == '0' ? m.data.size() : 0);
  octal(136, 12, 0);
  h[156] = static_cast<uint8_t>(m.type);
  put(257, std::string_view("ustar\0"
                            "00",
                            8));
  std::memset(&h[148], ' ', 8);
  unsigned sum = 0;
  for (uint8_t c : h) sum += c;
  octal(148, 7, sum);
  return h;
}

// The members, each padded to 512 bytes, then the two zero blocks that end an archive.
inline std::vector<uint8_t> Tar(const std::vector<TarMember>& members) {
  std::vector<uint8_t> out;
  for (const TarMember& m : members) {
    std::vector<uint8_t> h = TarHeader(m);
    out.insert(out.end(), h.begin(), h.end());
    if (m.type != '0') continue;
    out.insert(out.end(), m.data.begin(), m.data.end());
    out.resize((out.size() + 511) / 512 * 512, 0);
  }
  out.resize(out.size() + 1024, 0);
  return out;
}

}  // namespace byoi::testing
