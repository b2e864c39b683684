// The extent model: an image's virtual disk as a sequence of extents that the writer turns into
// bytes on a disk. Extents are not stored: an ImageLayout produces them on demand, for any range,
// from the image's own bytes (a raw image is one data extent; a qcow2 image is decoded from the L1
// and L2 tables already in its buffer, agent/image/qcow2.hpp). So the memory an image's map costs
// does not grow with the image, and a range is found in O(1) (the L1 index is offset / L2
// coverage). Extents borrow the ImageBuffer they came from: it must outlive them and the layout.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

// How a compressed cluster is stored: raw deflate (RFC 1951) or a zstd frame, as qcow2 stores them;
// deflate in a zlib wrapper (RFC 1950, with its Adler-32), as VMDK stores grains (vmdk.hpp).
enum class Compression { kNone, kDeflate, kZstd, kZlib };

struct Extent {
  enum class Kind {
    kData,        // `length` bytes at `data`
    kZero,        // `length` zero bytes (must be written as zeros: never skipped)
    kCompressed,  // one compressed cluster: `compressed_length` bytes at `data` inflate to exactly
                  // `cluster_size` bytes (or `cluster_min`, see there), of which the `length`
                  // bytes from `cluster_skip` on are the disk's bytes at `offset`
  };
  Kind kind = Kind::kZero;
  uint64_t offset = 0;  // in the virtual disk
  uint64_t length = 0;  // bytes of the virtual disk covered
  const uint8_t* data = nullptr;
  uint64_t compressed_length = 0;
  uint32_t cluster_size = 0;
  uint32_t cluster_skip = 0;  // kCompressed: bytes of the inflated cluster before `offset`
  // kCompressed: when not 0, the stream may also inflate to exactly this many bytes, the rest of
  // the cluster reading as zeros: a VMDK's last grain, cut by the end of the disk, holds either the
  // whole grain or only the part inside the disk (qemu-img writes the latter).
  uint32_t cluster_min = 0;
  Compression compression = Compression::kNone;
};

// Called for each extent of a walk, in order. A visitor ends the walk early by returning any
// error; the walk then returns that Status unchanged (a caller that only wanted to stop knows it).
using ExtentVisitor = std::function<Status(const Extent&)>;

// Where a layout's extents come from (a raw image, the tables of a qcow2 image, a list).
class ExtentSource {
 public:
  virtual ~ExtentSource() = default;
  // Calls `visit` with extents in order that together cover at least [begin, end)
  // (REQUIRES: begin < end <= the virtual size). They may start before `begin`, end past `end` and
  // need not be merged: ImageLayout clips and merges. Stops at the first error `visit` returns.
  virtual Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const = 0;
};

class ImageLayout {
 public:
  ImageLayout() = default;  // an empty disk
  // A disk of `virtual_size` bytes whose extents come from `source` (not null when the size is
  // not 0).
  ImageLayout(uint64_t virtual_size, std::unique_ptr<const ExtentSource> source);
  // A disk made of `extents`, which must tile [0, sum of lengths) in order (tests, small synthetic
  // disks). Their bytes must outlive the layout.
  static ImageLayout FromExtents(std::vector<Extent> extents);

  ImageLayout(ImageLayout&&) noexcept = default;
  ImageLayout& operator=(ImageLayout&&) noexcept = default;
  ImageLayout(const ImageLayout&) = delete;
  ImageLayout& operator=(const ImageLayout&) = delete;

  uint64_t virtual_size() const { return virtual_size_; }

  // Visits the extents covering [offset, offset + length), in order, clipped to that range, with
  // neighbours merged: adjacent zero extents, and data extents that are also adjacent in the
  // image. Compressed extents are never merged (a clipped one keeps its whole stream). Returns the
  // first error of `visit`; kInvalid when the range passes the virtual size; kInternal if the
  // source does not tile the range (a bug). Safe to call from several threads at once.
  Status ForEachExtent(uint64_t offset, uint64_t length, const ExtentVisitor& visit) const;

 private:
  uint64_t virtual_size_ = 0;
  std::unique_ptr<const ExtentSource> source_;
};

}  // namespace byoi
