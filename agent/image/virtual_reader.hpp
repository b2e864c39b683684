// Random access to the bytes of a virtual disk described by an ImageLayout: what the partition
// table reader, `inspect` and the writer use to turn extents into bytes. Compressed clusters are
// inflated on demand (libdeflate for raw deflate and zlib streams, libzstd for zstd) and must yield
// exactly one cluster; anything else is kInvalid.
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

  // Inflates the compressed cluster `e` (all of it, whatever its cluster_skip) into `out`, which
  // must be exactly e.cluster_size bytes. kInvalid (with the cluster's virtual offset in detail)
  // when the stream is corrupt or does not produce exactly one cluster (or e.cluster_min bytes,
  // the rest of `out` then zeroed); `out` then holds unspecified bytes. On success, `consumed`
  // (when given) is how many input bytes the stream took: the rest of its last sector is not its
  // own.
  Status Decompress(const Extent& e, std::span<uint8_t> out, uint64_t* consumed = nullptr);

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
  std::vector<uint8_t> cluster_;     // the last inflated cluster, for partial reads
  const uint8_t* cached_ = nullptr;  // the compressed stream whose bytes are in cluster_
  uint64_t cached_length_ = 0;       // and its length
};

}  // namespace byoi
