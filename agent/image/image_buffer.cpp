#include "agent/image/image_buffer.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <utility>

#include "agent/base/fd.hpp"
#include "agent/base/units.hpp"

namespace byoi {

Result<ImageBuffer> ImageBuffer::Create(uint64_t capacity) {
  if (capacity == 0) return Status::Error(Code::kTooBig, "memory budget is 0 bytes");
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return Status::FromErrno("reserving " + HumanBytes(capacity) + " for the image", errno);
  }
  // Transparent huge pages (most kernels give them only where asked): one page fault per 2 MiB
  // instead of per 4 KiB. Faulting in 4 KiB pages cost more than the receive itself: a 2 GiB
  // download over loopback took 3.6 s without this and 1.7 s with it (tests/bench/fetch_bench.py).
  // Advice only; without THP nothing changes.
  (void)::madvise(p, capacity, MADV_HUGEPAGE);
  ImageBuffer b;
  b.data_ = static_cast<uint8_t*>(p);
  b.capacity_ = capacity;
  return b;
}

ImageBuffer::ImageBuffer(ImageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

ImageBuffer& ImageBuffer::operator=(ImageBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, capacity_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

ImageBuffer::~ImageBuffer() {
  if (data_ != nullptr) ::munmap(data_, capacity_);
}

Status ImageBuffer::Append(std::span<const uint8_t> bytes) {
  if (bytes.size() > capacity_ - size_) {
    return Status::Error(
        Code::kTooBig, "image passes the memory budget of " + std::to_string(capacity_) + " bytes");
  }
  std::memcpy(data_ + size_, bytes.data(), bytes.size());
  size_ += bytes.size();
  return Status::Ok();
}

std::span<uint8_t> ImageBuffer::Tail() {
  return {data_ + size_, static_cast<size_t>(capacity_ - size_)};
}

void ImageBuffer::Commit(uint64_t n) { size_ += n; }

void ImageBuffer::Truncate(uint64_t size) {
  if (size >= size_) return;
  // Give whole pages past the new end back; MADV_DONTNEED makes them read as zeros again.
  const uint64_t page = 4096;
  uint64_t from = (size + page - 1) / page * page;
  if (from < size_) ::madvise(data_ + from, size_ - from, MADV_DONTNEED);
  size_ = size;
}

Result<uint64_t> DefaultMemoryBudget() {
  BYOI_ASSIGN_OR_RETURN(std::string meminfo, ReadSmallFile("/proc/meminfo"));
  return MemoryBudgetFromMeminfo(meminfo);
}

Result<uint64_t> MemoryBudgetFromMeminfo(std::string_view meminfo) {
  std::istringstream in{std::string(meminfo)};
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemTotal:") {
      uint64_t total = kib * kKiB;
      return total > 3 * kGiB ? total - 3 * kGiB : 0;
    }
  }
  return Status::Error(Code::kIo, "reading /proc/meminfo: no MemTotal");
}

Result<ImageBuffer> LoadFile(const std::string& path, uint64_t budget) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("examining " + path, errno);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > budget) {
    return Status::Error(Code::kTooBig, path + " has " + std::to_string(size) +
                                            " bytes, more than the memory budget of " +
                                            std::to_string(budget));
  }
  BYOI_ASSIGN_OR_RETURN(ImageBuffer buffer, ImageBuffer::Create(size > 0 ? size : 1));
  auto tail = buffer.Tail();
  BYOI_RETURN_IF_ERROR(PreadAll(fd.get(), tail.first(size), 0).Context("reading " + path));
  buffer.Commit(size);
  return buffer;
}

}  // namespace byoi
