// What the C++ integration tests share: running a tool (no shell), a loop device over a file that
// is detached at the end, a small tmpfs that fills up, seeded random bytes, and reading a range of
// a file or device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace byoi::testing {

// Runs argv (no shell, RunProgram) and returns its output without trailing newlines; empty when it
// cannot be started or exits non-zero.
std::string Output(const std::vector<std::string>& argv);

// `n` seeded pseudo-random bytes (the same for the same seed).
std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed);

// `length` bytes of `path` at `offset` (a failure is a test failure, with zeros returned).
std::vector<uint8_t> ReadRange(const std::string& path, uint64_t offset, uint64_t length);

// A loop device over `file` with `sector_size`-byte logical sectors, detached at the end.
class LoopDevice {
 public:
  LoopDevice(const std::string& file, uint32_t sector_size);
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A tmpfs of `size` bytes mounted for the test and unmounted at the end: a disk whose backing file
// lives there runs out of space when more than that is written to it, a real failing device.
class SmallTmpfs {
 public:
  explicit SmallTmpfs(uint64_t size);
  ~SmallTmpfs();
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  std::string path(const std::string& name) const;

 private:
  std::string dir_;
  bool mounted_ = false;
};

}  // namespace byoi::testing
