#include "agent/image/virtual_reader.hpp"

#include <fmt/format.h>
#include <libdeflate.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

namespace byoi {

ClusterDecompressor::ClusterDecompressor()
    : deflate_(libdeflate_alloc_decompressor()), zstd_(ZSTD_createDCtx()) {}

ClusterDecompressor::~ClusterDecompressor() {
  libdeflate_free_decompressor(deflate_);
  ZSTD_freeDCtx(zstd_);
}

Status ClusterDecompressor::Decompress(const Extent& e, std::span<uint8_t> out,
                                       uint64_t* consumed) {
  // The extent may be clipped: name the cluster, where it starts on the disk.
  auto fail = [&](std::string_view why) {
    return Status::Error(Code::kInvalid,
                         fmt::format("compressed cluster at virtual offset {:#x}: {}",
                                     e.offset - e.cluster_skip, why));
  };
  if (out.size() != e.cluster_size) return fail("output is not one cluster");
  if (deflate_ == nullptr || zstd_ == nullptr) {
    return Status::Error(Code::kInternal, "out of memory for a decompressor");
  }
  if (e.compression == Compression::kDeflate) {
    // The stream is followed by the rest of its last sector (garbage or the next cluster's data):
    // the _ex variant accepts trailing input, and a NULL actual_out demands exactly one cluster.
    size_t in_bytes = 0;
    auto r = libdeflate_deflate_decompress_ex(deflate_, e.data, e.compressed_length, out.data(),
                                              out.size(), &in_bytes, nullptr);
    if (r == LIBDEFLATE_SUCCESS) {
      if (consumed) *consumed = in_bytes;
      return Status::Ok();
    }
    if (r == LIBDEFLATE_SHORT_OUTPUT) return fail("deflate stream inflates to less than a cluster");
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
      return fail("deflate stream inflates to more than a cluster");
    }
    return fail("corrupt deflate stream");
  }
  if (e.compression == Compression::kZlib) {
    // A VMDK grain: a zlib stream (the bytes after it are ignored, as zlib's uncompress() that
    // qemu-img uses ignores them), which must fill the grain, or, for a last grain cut by the end
    // of the disk, exactly the part inside the disk.
    size_t in_bytes = 0;
    size_t produced = 0;
    auto r = libdeflate_zlib_decompress_ex(deflate_, e.data, e.compressed_length, out.data(),
                                           out.size(), &in_bytes, &produced);
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
      return fail("zlib stream inflates to more than a grain");
    }
    if (r != LIBDEFLATE_SUCCESS) return fail("corrupt zlib stream");
    if (produced != out.size()) {
      if (produced != e.cluster_min) {
        return fail(fmt::format("zlib stream inflates to {} bytes, less than a grain", produced));
      }
      std::memset(out.data() + produced, 0, out.size() - produced);
    }
    if (consumed) *consumed = in_bytes;
    return Status::Ok();
  }
  if (e.compression == Compression::kZstd) {
    // Like QEMU: stream until the cluster is full, then the frame must be complete; trailing
    // bytes after the frame are ignored.
    ZSTD_DCtx_reset(zstd_, ZSTD_reset_session_only);
    ZSTD_inBuffer in{e.data, static_cast<size_t>(e.compressed_length), 0};
    ZSTD_outBuffer o{out.data(), out.size(), 0};
    size_t ret = 1;
    while (o.pos < o.size) {
      size_t in_before = in.pos, out_before = o.pos;
      ret = ZSTD_decompressStream(zstd_, &o, &in);
      if (ZSTD_isError(ret))
        return fail(std::string("corrupt zstd data: ") + ZSTD_getErrorName(ret));
      if (in.pos == in_before && o.pos == out_before) {
        return fail("zstd data inflates to less than a cluster");
      }
    }
    if (ret != 0) return fail("zstd frame inflates to more than a cluster");
    if (consumed) *consumed = in.pos;
    return Status::Ok();
  }
  return fail("unknown compression");
}

VirtualReader::VirtualReader(const ImageLayout& layout) : layout_(layout) {}

Status VirtualReader::Read(uint64_t offset, std::span<uint8_t> out) {
  return layout_.ForEachExtent(offset, out.size(), [&](const Extent& e) -> Status {
    uint8_t* dst = out.data() + (e.offset - offset);
    const size_t n = static_cast<size_t>(e.length);
    switch (e.kind) {
      case Extent::Kind::kZero:
        std::memset(dst, 0, n);
        break;
      case Extent::Kind::kData:
        std::memcpy(dst, e.data, n);
        break;
      case Extent::Kind::kCompressed:
        if (n == e.cluster_size) {
          // A whole cluster wanted: inflate straight into place.
          return decompressor_.Decompress(e, {dst, n});
        }
        if (cached_ != e.data || cached_length_ != e.compressed_length ||
            cluster_.size() != e.cluster_size) {
          cluster_.resize(e.cluster_size);
          cached_ = nullptr;
          BYOI_RETURN_IF_ERROR(decompressor_.Decompress(e, cluster_));
          cached_ = e.data;
          cached_length_ = e.compressed_length;
        }
        std::memcpy(dst, cluster_.data() + e.cluster_skip, n);
        break;
    }
    return Status::Ok();
  });
}

}  // namespace byoi
