// libFuzzer target for stream mode's qcow2 reader: the input's first two bytes pick a memory
// budget and the size of the pieces the file arrives in, the rest is the file. The sink traps on
// anything that breaks the VirtualDiskSink contract (a byte given twice, a byte past the virtual
// size), a successful read must have given every byte, and where the RAM reader accepts the same
// file and the disk is small, both readers must produce the same disk. Bounded: the reader's own
// budget is at most 32 MiB; the disk is kept in memory only up to 16 MiB.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <vector>

#include "agent/image/qcow2.hpp"
#include "agent/image/qcow2_stream.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"

namespace {

using byoi::Status;

constexpr uint64_t kKeepLimit = 16ull << 20;

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace byoi;
  if (size < 2) return 0;
  Qcow2StreamOptions options;
  options.memory_budget = uint64_t{1024} << (data[0] % 16);  // 1 KiB .. 32 MiB
  options.threads = 1;
  const size_t piece = data[1] == 0 ? SIZE_MAX : size_t{data[1]} * 37;
  std::span<const uint8_t> file(data + 2, size - 2);

  CheckingSink sink;
  Qcow2StreamReader reader(sink, options, [&](const Qcow2Info& info) {
    sink.SetSize(info.virtual_size);
    return Status::Ok();
  });
  Status s = reader.Start(data[1] % 2 ? std::optional<uint64_t>(file.size()) : std::nullopt);
  for (size_t at = 0; s.ok() && at < file.size(); at += piece) {
    s = reader.Write(file.subspan(at, std::min(piece, file.size() - at)));
  }
  if (!s.ok()) return 0;
  auto vsize = reader.Finish();
  if (!vsize.ok()) return 0;
  if (sink.given() != *vsize) __builtin_trap();

  // The RAM reader must agree: it accepts the file, and its disk is the same.
  auto image = ReadQcow2(file);
  if (!image.ok()) __builtin_trap();
  if (image->layout.virtual_size() != *vsize) __builtin_trap();
  if (sink.keep() && *vsize > 0) {
    CancelToken cancel;
    if (!VerifyCompressedClusters(image->layout, 1, cancel).ok()) __builtin_trap();
    VirtualReader ram(image->layout);
    std::vector<uint8_t> disk(*vsize);
    if (!ram.Read(0, disk).ok()) __builtin_trap();
    if (disk != sink.disk()) __builtin_trap();
  }
  return 0;
}
