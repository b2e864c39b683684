#include "agent/base/aligned_buffer.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace byoi {

uint8_t* AlignedBuffer::Allocate(size_t size, size_t alignment) {
  void* p = nullptr;
  if (::posix_memalign(&p, alignment, std::max<size_t>(size, 1)) != 0) return nullptr;
  return static_cast<uint8_t*>(p);
}

AlignedBuffer::AlignedBuffer(size_t size, size_t alignment)
    : AlignedBuffer(Uninitialized(size, alignment)) {
  std::memset(data_, 0, size_);
}

AlignedBuffer AlignedBuffer::Uninitialized(size_t size, size_t alignment) {
  std::optional<AlignedBuffer> b = TryUninitialized(size, alignment);
  if (!b) throw std::bad_alloc();
  return std::move(*b);
}

std::optional<AlignedBuffer> AlignedBuffer::TryUninitialized(size_t size, size_t alignment) {
  uint8_t* p = Allocate(size, alignment);
  if (p == nullptr) return std::nullopt;
  return AlignedBuffer(p, size);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

}  // namespace byoi
