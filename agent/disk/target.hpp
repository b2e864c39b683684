// The place an image is written to: a block device (a server's disk, a loop device in tests) or a
// regular file (a disk image for `convert` and tests). Knows what O_DIRECT needs on it and how to
// zero a range without writing buffers of zeros. Serves docs/pipeline.md step 4.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "agent/base/fd.hpp"
#include "agent/base/status.hpp"

namespace byoi {

class Target {
 public:
  struct Options {
    // Regular files only: created (mode 0644) when missing and truncated or extended to this
    // size, keeping existing bytes below it. Unset: the file must exist and keeps its size.
    std::optional<uint64_t> file_size;
    // Block devices only: open with O_EXCL, so a mounted or otherwise claimed device is refused
    // (EBUSY) instead of written under the kernel's feet.
    bool exclusive = true;
    // Written() flushes the device's write cache each time this many more bytes were written;
    // 0: never.
    uint64_t flush_every = 256ull << 20;
  };

  // Opens `path` for writing: a block device as is, a regular file per `options`. O_DIRECT is
  // used when the file system or device accepts it. kNotFound, kIo or kBusy with the path named;
  // nothing is changed on failure except a file that was created or resized.
  static Result<Target> Open(const std::string& path, const Options& options);

  Target() = default;
  Target(Target&&) = default;
  Target& operator=(Target&&) = default;

  const std::string& path() const { return path_; }
  bool is_block_device() const { return block_device_; }
  uint64_t size() const { return size_; }
  // Logical sector size: BLKSSZGET for block devices, 512 for files.
  uint32_t sector_size() const { return sector_size_; }
  // Offsets, lengths and buffer addresses of I/O on fd() must be multiples of this (the sector
  // size of a device; 4096 for files, which covers every file system's O_DIRECT rule).
  uint32_t alignment() const { return alignment_; }
  // True when fd() is open with O_DIRECT.
  bool direct() const { return direct_; }
  int fd() const { return direct_ ? direct_fd_.get() : buffered_fd_.get(); }
  // Without O_DIRECT: for the unaligned tail and anything not a multiple of alignment().
  int buffered_fd() const { return buffered_fd_.get(); }

  // Makes [offset, offset + length) read as zeros: fallocate(PUNCH_HOLE) then BLKZEROOUT on
  // devices, fallocate(PUNCH_HOLE, then ZERO_RANGE) on files, and writing zeros when neither is
  // supported. REQUIRES: offset and
  // length multiples of alignment(), range inside size(). Thread-safe.
  Status ZeroRange(uint64_t offset, uint64_t length);
  // Writes zero bytes over [offset, offset + length) (any alignment), through fd() where aligned
  // and buffered_fd() for the rest. For wiping after a failure: no offload is trusted there.
  Status WriteZeros(uint64_t offset, uint64_t length);
  // fdatasync on both descriptors.
  Status Sync();
  // Counts `bytes` written; each time Options::flush_every more were, the caller flushes (Sync)
  // while other threads go on writing, so the device's write cache (all of a loop device over a
  // file) drains as the image goes down instead of in one go at the end. Thread-safe; one flush
  // at a time. Errors: Sync's.
  Status Written(uint64_t bytes);

 private:
  Status FallbackZeros(uint64_t offset, uint64_t length);

  std::string path_;
  UniqueFd direct_fd_;
  UniqueFd buffered_fd_;
  bool block_device_ = false;
  bool direct_ = false;
  uint64_t size_ = 0;
  uint32_t sector_size_ = 512;
  uint32_t alignment_ = 4096;
  uint64_t flush_every_ = 0;
  // Set once the cheap zeroing call has failed as unsupported, so it is not retried per range.
  std::unique_ptr<std::atomic<bool>> no_offload_ = std::make_unique<std::atomic<bool>>(false);
  struct Unflushed {
    std::atomic<uint64_t> bytes{0};
    std::atomic<bool> flushing{false};
  };
  std::unique_ptr<Unflushed> unflushed_ = std::make_unique<Unflushed>();
};

}  // namespace byoi
