// libFuzzer target for the qcow2 reader: the metadata walk on arbitrary bytes, then the conversion
// of the virtual disk into memory (inflating compressed clusters) and the partition table reader,
// as the writer and the verify step would run them. Sizes are bounded so a hostile header cannot
// turn a fuzz input into gigabytes of work.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "agent/image/partition_table.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/virtual_reader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace byoi;
  auto image = ReadQcow2(std::span<const uint8_t>(data, size));
  if (!image.ok()) return 0;
  const ImageLayout& layout = image->layout;
  // The extents must tile [0, virtual_size) exactly.
  uint64_t pos = 0;
  for (const Extent& e : layout.extents) {
    if (e.offset != pos || e.length == 0) __builtin_trap();
    if (e.kind != Extent::Kind::kZero) {
      if (e.data < data || e.data >= data + size) __builtin_trap();
    }
    if (e.kind == Extent::Kind::kData && e.length > size - static_cast<size_t>(e.data - data)) {
      __builtin_trap();
    }
    if (e.kind == Extent::Kind::kCompressed &&
        e.compressed_length > size - static_cast<size_t>(e.data - data)) {
      __builtin_trap();
    }
    pos += e.length;
  }
  if (pos != layout.virtual_size) __builtin_trap();

  // Convert what holds data (bounded), a piece at a time, as the writer does.
  VirtualReader reader(layout);
  std::vector<uint8_t> chunk(1 << 20);
  uint64_t budget = 32ull << 20;
  for (const Extent& e : layout.extents) {
    if (e.kind == Extent::Kind::kZero) continue;
    uint64_t n = std::min<uint64_t>({e.length, chunk.size(), budget});
    if (n == 0) break;
    (void)reader.Read(e.offset, std::span<uint8_t>(chunk.data(), n));
    budget -= n;
  }
  if (layout.virtual_size > 0) {
    uint64_t n = std::min<uint64_t>(layout.virtual_size, 4096);
    (void)reader.Read(layout.virtual_size - n, std::span<uint8_t>(chunk.data(), n));
  }
  (void)ReadPartitionTable(layout);
  return 0;
}
