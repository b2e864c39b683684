// The image in RAM: one memfd (RAM, never a file on disk) that a download or a file read fills,
// mapped once for the image readers to borrow. Address space for the whole budget is reserved up
// front (MAP_NORESERVE) and pages are committed only as bytes arrive, so memory use is the
// image's size, never a second copy, and the budget rule (RAM − 3 GiB, docs/pipeline.md) is
// enforced at Append and WriteAt.
//
// Append and WriteAt write with pwrite rather than memcpy into the mapping: a page that is written
// whole goes into the memfd without being zeroed first, where a page faulted in through the mapping
// is cleared by the kernel and then overwritten (page clearing was a quarter of a download's CPU).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

class ImageBuffer {
 public:
  // Reserves `capacity` bytes (> 0). kIo when the mapping cannot be made.
  static Result<ImageBuffer> Create(uint64_t capacity);

  ImageBuffer() = default;
  ImageBuffer(ImageBuffer&& other) noexcept;
  ImageBuffer& operator=(ImageBuffer&& other) noexcept;
  ImageBuffer(const ImageBuffer&) = delete;
  ImageBuffer& operator=(const ImageBuffer&) = delete;
  ~ImageBuffer();

  // Copies `bytes` after the current end. kTooBig, with nothing appended, when the result would
  // pass the capacity.
  Status Append(std::span<const uint8_t> bytes);
  // Copies `bytes` at `offset` (a download's piece, fetched out of order); size() becomes at least
  // offset + bytes.size(), and bytes never written read as zeros. kTooBig, with nothing written,
  // when the end would pass the capacity; kIo when the machine runs out of RAM (part may be
  // written).
  Status WriteAt(uint64_t offset, std::span<const uint8_t> bytes);
  // WriteAt for threads that fill disjoint ranges at once: size() does not follow.
  Status StoreAt(uint64_t offset, std::span<const uint8_t> bytes) const;
  // Drops bytes past `size` and gives their pages back to the kernel (a download restarted at 0).
  void Truncate(uint64_t size);

  // The memfd behind the mapping, owned by the buffer: another process given it (the swarm helper)
  // writes pieces that data() shows.
  int fd() const { return fd_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  uint64_t capacity() const { return capacity_; }
  std::span<const uint8_t> bytes() const { return {data_, static_cast<size_t>(size_)}; }

 private:
  int fd_ = -1;  // the memfd, owned
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t capacity_ = 0;
};

// MemTotal (from /proc/meminfo) minus 3 GiB, the budget for an image in RAM; 0 when RAM is smaller.
Result<uint64_t> DefaultMemoryBudget();
// The same from the text of /proc/meminfo; kIo when it has no MemTotal line.
Result<uint64_t> MemoryBudgetFromMeminfo(std::string_view meminfo);

}  // namespace byoi
