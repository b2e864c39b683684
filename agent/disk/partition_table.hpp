// A disk's partition table through libfdisk, for the repartition step: an RAII handle on a libfdisk
// context bound to an fd we own, and reading the table into `Partition` values.
//
// libfdisk reports problems through its "ask" callback rather than return values; the handle
// collects those messages so that a failure's detail says what libfdisk saw ("The backup GPT
// table is not on the end of the device.").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/disk/disk.hpp"

struct fdisk_context;
struct fdisk_ask;

namespace byoi {

class FdiskTable {
 public:
  // Binds libfdisk to `fd` (not taken over: it must outlive the table) for `path` (shown in
  // messages). `writable` allows WriteChanges. Fails with kIo when libfdisk cannot read the device.
  static Result<std::unique_ptr<FdiskTable>> Open(int fd, const std::string& path, bool writable);
  ~FdiskTable();
  FdiskTable(const FdiskTable&) = delete;
  FdiskTable& operator=(const FdiskTable&) = delete;

  PartitionTableType kind() const;
  uint32_t sector_size() const;
  uint64_t total_sectors() const;
  uint64_t grain_sectors() const;  // alignment libfdisk uses (1 MiB normally)

  // The used partitions, by number. MBR extended containers are included (type "0x05"/"0x0f"/
  // "0x85"); logical partitions are numbered from 5.
  Result<std::vector<Partition>> Partitions() const;

  // GPT header fields; 0 when not GPT.
  uint64_t GptAlternativeLba() const;
  uint64_t GptLastUsableLba() const;

  // True when libfdisk changed the in-memory table since Open (e.g. it moved the backup GPT).
  bool Changed() const;
  // Writes the in-memory table to the device and fsyncs it. kIo with libfdisk's messages on
  // failure.
  Status WriteChanges();

  fdisk_context* context() { return cxt_; }
  // Messages libfdisk printed so far, joined with "; ".
  std::string Messages() const;

 private:
  FdiskTable() = default;
  static int AskCallback(fdisk_context* cxt, fdisk_ask* ask, void* data);

  fdisk_context* cxt_ = nullptr;
  std::string path_;
  int fd_ = -1;
  std::vector<std::string> messages_;
};

}  // namespace byoi
