// Random access to the bytes of a virtual disk described by an ImageLayout: what the partition
// table reader, `inspect` and the writer use to turn extents into bytes. Compressed clusters are
// inflated on demand (libdeflate for raw deflate, libzstd for zstd) and must yield exactly one
// cluster; anything else is kInvalid.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"

struct libdeflate_decompressor;
struct ZSTD_DCtx_s;

namespace byoi {

// One thread's decompression state (a libdeflate decompressor and a zstd context). Not shareable
// between threads; cheap to keep, so the writer gives each worker its own.
class ClusterDecompressor {
 public:
  ClusterDecompressor();
  ~ClusterDecompressor();
  ClusterDecompressor(const ClusterDecompressor&) = delete;
  ClusterDecompressor& operator=(const ClusterDecompressor&) = delete;

  // Inflates the compressed cluster `e` into `out`, which must be exactly e.cluster_size bytes.
  // kInvalid (with the cluster's virtual offset in detail) when the stream is corrupt or does
  // not produce exactly one cluster; `out` then holds unspecified bytes.
  Status Decompress(const Extent& e, std::span<uint8_t> out);

 private:
  libdeflate_decompressor* deflate_ = nullptr;
  ZSTD_DCtx_s* zstd_ = nullptr;
};

class VirtualReader {
 public:
  // Borrows `layout` (and through it the image bytes): both must outlive the reader.
  explicit VirtualReader(const ImageLayout& layout);

  // Fills `out` with the virtual disk's bytes at [offset, offset + out.size()). kInvalid when
  // the range passes the virtual size or a compressed cluster does not inflate.
  Status Read(uint64_t offset, std::span<uint8_t> out);

  const ImageLayout& layout() const { return layout_; }

 private:
  const ImageLayout& layout_;
  ClusterDecompressor decompressor_;
  std::vector<uint8_t> cluster_;    // the last inflated cluster, for partial reads
  const Extent* cached_ = nullptr;  // the extent whose bytes are in cluster_
};

// The index of the extent holding virtual offset `offset`, or extents.size() when none does.
size_t FindExtent(const ImageLayout& layout, uint64_t offset);

}  // namespace byoi
