// Where stream mode's image reader (stream_image.hpp) puts the virtual disk it decodes: pieces of
// data and ranges of zeros, at any offset and in any order (a qcow2 file's clusters need not be in
// the order of the disk), each byte of the virtual disk given exactly once. The block writer of
// stream mode (agent/disk/stream_writer.hpp) is one; tests keep the disk in memory.
#pragma once

#include <cstdint>
#include <span>

#include "agent/base/status.hpp"

namespace byoi {

class VirtualDiskSink {
 public:
  virtual ~VirtualDiskSink() = default;
  // The virtual disk's bytes at [offset, offset + bytes.size()); `bytes` is valid during the call
  // only. Errors stop the reader and are returned by it as they are.
  virtual Status Write(uint64_t offset, std::span<const uint8_t> bytes) = 0;
  // [offset, offset + length) of the virtual disk reads as zeros.
  virtual Status Zero(uint64_t offset, uint64_t length) = 0;
};

}  // namespace byoi
