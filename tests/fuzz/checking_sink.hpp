// What the stream readers' fuzz targets share: a VirtualDiskSink that traps on anything that breaks
// the contract (a byte given twice, a byte past the virtual size) and keeps the disk in memory when
// it is small enough to compare with the RAM reader's (at most kKeepLimit), the feeding loop and
// the comparison with the RAM reader.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "agent/image/extent.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_disk_sink.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi::fuzz {

using byoi::Status;

inline constexpr uint64_t kKeepLimit = 16ull << 20;

class CheckingSink : public byoi::VirtualDiskSink {
 public:
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
    Mark(offset, bytes.size());
    if (keep_) std::memcpy(disk_.data() + offset, bytes.data(), bytes.size());
    return Status::Ok();
  }
  Status Zero(uint64_t offset, uint64_t length) override {
    Mark(offset, length);
    if (keep_) std::memset(disk_.data() + offset, 0, length);
    return Status::Ok();
  }
  void SetSize(uint64_t size) {
    size_ = size;
    keep_ = size <= kKeepLimit;
    if (keep_) disk_.assign(size, 0xee);
  }
  uint64_t given() const { return given_; }
  const std::vector<uint8_t>& disk() const { return disk_; }
  bool keep() const { return keep_; }

 private:
  void Mark(uint64_t offset, uint64_t length) {
    if (length == 0 || offset > size_ || length > size_ - offset) __builtin_trap();
    // Ranges given so far, by start: a new one must not overlap any.
    auto next = ranges_.upper_bound(offset);
    if (next != ranges_.end() && next->first < offset + length) __builtin_trap();
    if (next != ranges_.begin() && std::prev(next)->second > offset) __builtin_trap();
    ranges_.emplace(offset, offset + length);
    given_ += length;
  }

  uint64_t size_ = 0;
  bool keep_ = false;
  std::vector<uint8_t> disk_;
  std::map<uint64_t, uint64_t> ranges_;
  uint64_t given_ = 0;
};

// Feeds `file` to `reader` (a stream reader: Start, Write, Finish) in pieces of `piece` bytes,
// telling it the total when `total`; its Finish, or the first error.
template <typename Reader>
Result<uint64_t> FeedInPieces(Reader& reader, std::span<const uint8_t> file, size_t piece,
                              bool total) {
  Status s = reader.Start(total ? std::optional<uint64_t>(file.size()) : std::nullopt);
  for (size_t at = 0; s.ok() && at < file.size(); at += piece) {
    s = reader.Write(file.subspan(at, std::min(piece, file.size() - at)));
  }
  if (!s.ok()) return s;
  return reader.Finish();
}

// Traps unless the RAM reader's `layout` is the disk the stream reader gave `sink` (`vsize`
// bytes, every one of them): the same size and, when the sink kept it, the same bytes, every
// compressed cluster inflating.
inline void CheckSameDisk(const ImageLayout& layout, uint64_t vsize, const CheckingSink& sink) {
  if (sink.given() != vsize || layout.virtual_size() != vsize) __builtin_trap();
  if (!sink.keep() || vsize == 0) return;
  CancelToken cancel;
  if (!VerifyCompressedClusters(layout, 1, cancel).ok()) __builtin_trap();
  VirtualReader ram(layout);
  std::vector<uint8_t> disk(vsize);
  if (!ram.Read(0, disk).ok()) __builtin_trap();
  if (disk != sink.disk()) __builtin_trap();
}

}  // namespace byoi::fuzz
