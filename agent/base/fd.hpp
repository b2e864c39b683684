// RAII owner of a file descriptor, and the small helpers every stage needs around one.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>

#include "agent/base/status.hpp"

namespace byoi {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(std::exchange(other.fd_, -1));
    return *this;
  }
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// open(2) with the path named in the error: "opening /dev/sda: Device or resource busy".
Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode = 0);

// Reads or writes all of `data` at `offset`, retrying short transfers and EINTR.
Status PreadAll(int fd, std::span<uint8_t> data, uint64_t offset);
Status PwriteAll(int fd, std::span<const uint8_t> data, uint64_t offset);

// The one way the agent's parsers read bytes of an image or a disk (partition tables, the FAT
// reader, the ESP finder): `out.size()` bytes at `offset`, all of them or an error.
using ReadAtFn = std::function<Status(uint64_t offset, std::span<uint8_t> out)>;

// A ReadAtFn over `fd` (PreadAll); `fd` is borrowed and must outlive it.
ReadAtFn ReadFromFd(int fd);

// The size of the open file or block device `fd` (BLKGETSIZE64 for a device), for `what` in
// messages. kIo on failure.
Result<uint64_t> FileSize(int fd, const std::string& what);

// Whole small file (sysfs attributes, /proc files, config); refuses more than `limit` bytes.
Result<std::string> ReadSmallFile(const std::string& path, size_t limit = 1 << 20);

// Where scratch files go: $TMPDIR when it is set and not empty, else /tmp.
std::string TempDir();

// Writes `contents` to `path` atomically: temp file in the same directory, fsync, rename, fsync
// dir.
Status WriteFileAtomic(const std::string& path, std::string_view contents);

}  // namespace byoi
