// An aligned heap buffer (posix_memalign), freed on destruction: what O_DIRECT I/O reads from and
// writes to, and the stream download's window that the writer writes to the disk from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace byoi {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // `size` bytes aligned to `alignment` (a power of two); zero-filled. Throws std::bad_alloc on out
  // of memory, like operator new.
  AlignedBuffer(size_t size, size_t alignment);
  // The same, not zero-filled: for buffers whose bytes are each written before they are read, so
  // that the kernel commits the pages as they are first written, not all at once here.
  static AlignedBuffer Uninitialized(size_t size, size_t alignment);
  // Uninitialized, or nothing when the memory cannot be had: for a size that comes from outside
  // (a job's budget), where running out is the job's error, not the agent's end.
  static std::optional<AlignedBuffer> TryUninitialized(size_t size, size_t alignment);
  AlignedBuffer(AlignedBuffer&& o) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  AlignedBuffer(uint8_t* data, size_t size) : data_(data), size_(size) {}
  static uint8_t* Allocate(size_t size, size_t alignment);  // nullptr when out of memory

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace byoi
