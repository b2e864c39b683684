// A consumer of a byte stream in order: where FetchStream (agent/fetch/fetch.hpp) puts an image's
// body as it downloads, and what stream mode's image reader (agent/image/stream_image.hpp) is, so
// that an image is written to the disk while it arrives and never has to fit in RAM
// (docs/pipeline.md). A file read front to back feeds the same interface.
//
// The contract, whatever the source (for a download: however many connections, and however many
// requests fail and resume):
//   - Start is called once, before the first Write (for an empty body: before FetchStream returns
//     successfully), with the body's length when the server announced it;
//   - Write receives the body's bytes strictly in order, each byte exactly once: the first call
//     starts at byte 0 and each call continues where the previous one ended;
//   - every call is made on the thread that called FetchStream;
//   - an error from either stops the download at once: no further call is made, and FetchStream
//     returns that Status as it is (its code, message and detail), for the caller to map;
//   - FetchStream returning Ok means the sink got the whole body; the sink is not told otherwise
//     (the caller flushes or commits it, or discards it on error).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "agent/base/status.hpp"

namespace byoi {

class ByteSink {
 public:
  virtual ~ByteSink() = default;

  // `total`: the body's length from the answer's Content-Range or Content-Length; nullopt when
  // the body ends with the connection. A sink refuses here what it cannot take whole (an image
  // larger than the disk) before a byte is written.
  virtual Status Start(std::optional<uint64_t> total) = 0;
  // The next bytes of the body (never empty). `bytes` is valid during the call only.
  virtual Status Write(std::span<const uint8_t> bytes) = 0;
};

}  // namespace byoi
