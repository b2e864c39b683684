// The extent model: an image's virtual disk as a sorted list of extents that the writer turns into
// bytes on a disk. A raw image is one data extent; a qcow2 image is the result of a full,
// validated metadata walk (agent/image/qcow2.hpp). Extents borrow the ImageBuffer they came from:
// it must outlive them.
#pragma once

#include <cstdint>
#include <vector>

namespace byoi {

enum class Compression { kNone, kDeflate, kZstd };

struct Extent {
  enum class Kind {
    kData,        // `length` bytes at `data`
    kZero,        // `length` zero bytes (must be written as zeros: never skipped)
    kCompressed,  // one compressed cluster: `compressed_length` bytes at `data` inflate to exactly
                  // `cluster_size` bytes, of which the first `length` belong to the disk
  };
  Kind kind = Kind::kZero;
  uint64_t offset = 0;  // in the virtual disk
  uint64_t length = 0;  // bytes of the virtual disk covered
  const uint8_t* data = nullptr;
  uint64_t compressed_length = 0;
  uint32_t cluster_size = 0;
  Compression compression = Compression::kNone;
};

// Extents sorted by offset, without gaps or overlaps, covering [0, virtual_size) exactly.
struct ImageLayout {
  uint64_t virtual_size = 0;
  std::vector<Extent> extents;
};

}  // namespace byoi
