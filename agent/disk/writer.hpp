// The block writer: puts an image's virtual disk (an ImageLayout) onto a Target as fast as the
// hardware allows, and never leaves a half-written disk that looks bootable. docs/pipeline.md
// step 4.
//
// How: the disk is cut into chunks (4 MiB by default) that several worker threads take in turn,
// so several O_DIRECT writes are in flight and compressed clusters are inflated on all cores. A
// chunk asks the layout for its extents when a worker takes it: nothing is planned ahead, so the
// writer's memory is one chunk buffer per worker whatever the disk's size.
// Chunks of zeros, whether the layout says so or their bytes are all zero (raw images,
// preallocated qcow2 clusters: one memcmp pass by the worker that takes the chunk), join those
// next to them into requests of up to 256 MiB that the device (BLKZEROOUT) or file system
// (fallocate) zeroes, falling back to writing zeros: stale bytes never survive. A chunk
// that is one run of image bytes, page-aligned in the buffer, is written straight from the image
// (no copy).
//
// Safety order: the first MiB of the image (partition table, boot code) is written last, after
// everything else has been written and synced, so a write that fails midway has not yet given the
// disk a partition table. The writer does not wipe: the runner zeroes the first and last MiB after
// any failure once writing has begun (ZeroDiskEnds below, docs/pipeline.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/disk/target.hpp"
#include "agent/image/extent.hpp"

namespace byoi {

struct WriteOptions {
  // The image's format name for the catalogue message "Can't write <type> on disk.".
  std::string image_type = "qcow2";
  // Bytes per write; a multiple of 1 MiB. Default 4 MiB.
  uint64_t chunk_size = 4ull << 20;
  // Worker threads, each with one write in flight and its own chunk buffer; 0 means
  // max(4, number of cores).
  unsigned threads = 0;
};

struct WriteStats {
  uint64_t bytes_written = 0;  // written from image bytes or inflated clusters
  uint64_t bytes_zeroed = 0;   // zeroed by BLKZEROOUT/fallocate (or their fallback)
  uint64_t zero_requests = 0;  // the zeroing requests that did it
  double seconds = 0;
};

// Writes [0, layout.virtual_size()) of the virtual disk to `target` and fdatasyncs it; nothing at
// or past the virtual size is touched (an unaligned tail goes through the page cache). `progress`
// is called from the calling thread about every 100 ms with (bytes done, virtual size); `cancel` is
// checked before every chunk.
// Errors: kTooBig (msg::ImageLargerThanDisk) when the target is smaller than the virtual size,
// before anything is written; otherwise the cause (kIo, kInvalid for a corrupt compressed
// cluster, kCancelled with its own message) with msg::CantWrite(image_type) as message; the
// target then holds what was written so far, its first MiB not yet.
// Callers prove compressed clusters sound first (VerifyCompressedClusters) so that a corrupt one
// does not cost the disk. REQUIRES: the layout's image bytes outlive the call.
Result<WriteStats> WriteImage(const ImageLayout& layout, Target& target,
                              const WriteOptions& options, const ProgressFn& progress,
                              const CancelToken& cancel);

// Reads [0, layout.virtual_size) back from `target` with O_DIRECT (bypassing the page cache; the
// end of a file that ends inside a block through it) and compares it with the virtual disk, chunk
// by chunk. kIo with msg::CantWrite(image_type) and the first differing offset in detail; errors
// of the reads likewise. `progress` as for WriteImage. REQUIRES: WriteImage succeeded.
Status VerifyImageWritten(const ImageLayout& layout, Target& target, const WriteOptions& options,
                          const ProgressFn& progress, const CancelToken& cancel);

// Overwrites the first and the last MiB of `target` (all of it when smaller) with zeros and syncs:
// what is left of a primary and a backup partition table, boot code and file system superblocks,
// so that a half-written disk does not look bootable. Writes zeros (no offload is trusted after a
// failure). kIo on failure.
Status ZeroDiskEnds(Target& target);

}  // namespace byoi
