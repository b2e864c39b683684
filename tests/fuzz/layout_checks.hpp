// What every image reader's fuzz target checks of the layout it opened: walks of the whole disk
// and of sub-ranges that must agree with it, the conversion of the virtual disk into memory
// (inflating compressed clusters), the compressed-cluster check and the partition table reader,
// as the writer and the verify step would run them. Sizes are bounded so a hostile header cannot
// turn a fuzz input into gigabytes of work.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "agent/image/partition_table.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi::fuzz {

// At most this many extents of a walk are looked at (a 1 TiB sparse disk is fine, a 1 TiB disk
// of 512-byte runs is not worth the time).
inline constexpr size_t kMaxExtents = 1 << 16;

// The extents of [offset, offset + length), up to kMaxExtents; traps on anything that breaks the
// layout's contract (gaps, overlaps, bytes outside the input).
inline std::vector<Extent> Walk(const ImageLayout& layout, uint64_t offset, uint64_t length,
                                const uint8_t* data, size_t size) {
  std::vector<Extent> v;
  uint64_t pos = offset;
  Status s = layout.ForEachExtent(offset, length, [&](const Extent& e) -> Status {
    if (e.offset != pos || e.length == 0) __builtin_trap();
    if (e.kind == Extent::Kind::kData &&
        (e.data < data || e.data > data + size || e.length > size - (e.data - data))) {
      __builtin_trap();
    }
    if (e.kind == Extent::Kind::kCompressed &&
        (e.data < data || e.data >= data + size || e.compressed_length > size - (e.data - data) ||
         e.cluster_skip + e.length > e.cluster_size || e.cluster_min > e.cluster_size)) {
      __builtin_trap();
    }
    pos += e.length;
    v.push_back(e);
    if (v.size() >= kMaxExtents) return Status::Error(byoi::Code::kCancelled, "enough");
    return Status::Ok();
  });
  // A validated image's walks cannot fail on metadata.
  if (!s.ok() && s.code() != byoi::Code::kCancelled) __builtin_trap();
  if (s.ok() && pos != offset + length) __builtin_trap();
  return v;
}

// Every check above on `layout`, whose bytes (and compressed streams) lie in [data, data + size).
inline void CheckLayout(const ImageLayout& layout, const uint8_t* data, size_t size) {
  const uint64_t vsize = layout.virtual_size();
  std::vector<Extent> whole = Walk(layout, 0, vsize, data, size);

  // A range starting inside the first extents sees them clipped, the rest unchanged.
  if (whole.size() >= 2) {
    const Extent& first = whole[whole.size() / 2];
    const uint64_t begin = first.offset + first.length / 2;
    const uint64_t end = std::min<uint64_t>(vsize, begin + (4ull << 20));
    std::vector<Extent> part = Walk(layout, begin, end - begin, data, size);
    if (part.empty() || part.front().kind != first.kind) __builtin_trap();
    if (part.size() > 1 && whole.size() > whole.size() / 2 + 1 &&
        part[1].offset != whole[whole.size() / 2 + 1].offset) {
      __builtin_trap();
    }
  }

  // Convert what holds data (bounded), a piece at a time, as the writer does.
  VirtualReader reader(layout);
  std::vector<uint8_t> chunk(1 << 20);
  uint64_t budget = 32ull << 20;
  for (const Extent& e : whole) {
    if (e.kind == Extent::Kind::kZero) continue;
    uint64_t n = std::min<uint64_t>({e.length, chunk.size(), budget});
    if (n == 0) break;
    (void)reader.Read(e.offset, std::span<uint8_t>(chunk.data(), n));
    budget -= n;
  }
  if (vsize > 0) {
    uint64_t n = std::min<uint64_t>(vsize, 4096);
    (void)reader.Read(vsize - n, std::span<uint8_t>(chunk.data(), n));
  }
  if (vsize <= (16ull << 20)) {
    CancelToken cancel;
    (void)VerifyCompressedClusters(layout, 2, cancel);
  }
  (void)ReadPartitionTable(layout);
}

}  // namespace byoi::fuzz
