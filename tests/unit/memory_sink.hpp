// A VirtualDiskSink that keeps the virtual disk in memory and refuses a byte given twice, for the
// tests of stream mode's readers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "agent/image/virtual_disk_sink.hpp"

namespace byoi::testing {

// The virtual disk as a sink gives it, each byte at most once.
class MemorySink : public VirtualDiskSink {
 public:
  explicit MemorySink(uint64_t size) : disk(size, 0xee), given(size, false) {}
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
    ++calls;
    BYOI_RETURN_IF_ERROR(Mark(offset, bytes.size()));
    std::memcpy(disk.data() + offset, bytes.data(), bytes.size());
    return Status::Ok();
  }
  Status Zero(uint64_t offset, uint64_t length) override {
    ++calls;
    BYOI_RETURN_IF_ERROR(Mark(offset, length));
    std::memset(disk.data() + offset, 0, length);
    return Status::Ok();
  }
  bool Complete() const {
    return std::all_of(given.begin(), given.end(), [](bool b) { return b; });
  }

  std::vector<uint8_t> disk;
  std::vector<bool> given;
  int calls = 0;

 private:
  Status Mark(uint64_t offset, uint64_t length) {
    if (offset + length > disk.size()) return Status::Error(Code::kInternal, "past the disk");
    for (uint64_t i = offset; i < offset + length; ++i) {
      if (given[i]) return Status::Error(Code::kInternal, "byte given twice");
      given[i] = true;
    }
    return Status::Ok();
  }
};

}  // namespace byoi::testing
