// VMDK files built byte by byte for the tests of the VMDK readers (RAM and stream mode).
#pragma once

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace byoi::testing {

using Bytes = std::vector<uint8_t>;

inline void PutLe(Bytes& b, size_t at, uint64_t v, int width) {
  if (b.size() < at + width) b.resize(at + width);
  for (int i = 0; i < width; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// A sparse header: `capacity` sectors, grains of `granularity` sectors, `gtes` entries per table,
// the directory at sector `gd`, grains from sector `grain_offset`.
inline Bytes Header(uint64_t capacity, uint64_t granularity, uint32_t gtes, uint64_t gd,
                    uint64_t grain_offset, bool compressed = false) {
  Bytes b(512, 0);
  std::memcpy(b.data(), "KDMV", 4);
  PutLe(b, 4, compressed ? 3 : 1, 4);
  PutLe(b, 8, 0x3 | (compressed ? 0x30000 : 0), 4);
  PutLe(b, 12, capacity, 8);
  PutLe(b, 20, granularity, 8);
  PutLe(b, 28, 1, 8);  // descriptor at sector 1
  PutLe(b, 36, 1, 8);
  PutLe(b, 44, gtes, 4);
  PutLe(b, 56, gd, 8);
  PutLe(b, 64, grain_offset, 8);
  std::memcpy(&b[73], "\n \r\n", 4);
  PutLe(b, 77, compressed ? 1 : 0, 2);
  return b;
}

inline Bytes Sector(uint8_t fill) { return Bytes(512, fill); }

inline void Append(Bytes& file, const Bytes& more) {
  file.insert(file.end(), more.begin(), more.end());
}

// A zlib stream of `n` bytes of `fill`.
inline Bytes Zlib(size_t n, uint8_t fill) {
  Bytes in(n, fill);
  uLongf out_len = compressBound(n);
  Bytes out(out_len);
  EXPECT_EQ(compress(out.data(), &out_len, in.data(), n), Z_OK);
  out.resize(out_len);
  return out;
}

// A grain marker for sector `lba` and its stream, padded to whole sectors.
inline Bytes Grain(uint64_t lba, const Bytes& stream) {
  Bytes b;
  PutLe(b, 0, lba, 8);
  PutLe(b, 8, stream.size(), 4);
  Append(b, stream);
  b.resize((b.size() + 511) / 512 * 512, 0);
  return b;
}

// streamOptimized: 3 grains of 8 sectors (the last cut to 4), one table of 4 entries.
inline Bytes StreamFile(const Bytes& last_stream, uint64_t last_lba = 16) {
  Bytes file = Header(20, 8, 4, 2, 8, /*compressed=*/true);
  Append(file, Sector(0));
  Bytes gd(512, 0);
  PutLe(gd, 0, 3, 4);
  Append(file, gd);
  Bytes gt(512, 0);
  PutLe(gt, 0, 8, 4);   // grain 0 at 8
  PutLe(gt, 4, 0, 4);   // grain 1 unallocated
  PutLe(gt, 8, 10, 4);  // grain 2 at 10
  Append(file, gt);
  file.resize(8 * 512, 0);
  Append(file, Grain(0, Zlib(4096, 0xc1)));
  file.resize(10 * 512, 0);
  Append(file, Grain(last_lba, last_stream));
  return file;
}

// The same disk laid out as qemu-img lays a streamOptimized file out, which stream mode reads in
// one pass: the directory and its table before grain_offset, then the grains back to back (each
// marker at the sector after the previous grain's data), `tail` after them (an end-of-stream
// marker, say).
inline Bytes ContiguousStreamFile(const Bytes& last_stream, const Bytes& tail = {}) {
  Bytes file = Header(20, 8, 4, 2, 8, /*compressed=*/true);
  Append(file, Sector(0));
  Bytes gd(512, 0);
  PutLe(gd, 0, 3, 4);
  Append(file, gd);
  file.resize(8 * 512, 0);
  Bytes first = Grain(0, Zlib(4096, 0xc1));
  Bytes gt(512, 0);
  PutLe(gt, 0, 8, 4);
  PutLe(gt, 8, 8 + first.size() / 512, 4);
  std::memcpy(file.data() + 3 * 512, gt.data(), gt.size());
  Append(file, first);
  Append(file, Grain(16, last_stream));
  Append(file, tail);
  return file;
}

}  // namespace byoi::testing
