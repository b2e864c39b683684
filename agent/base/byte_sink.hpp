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
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "agent/base/cancel.hpp"
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

struct FeedOptions {
  // What the file is, for a failed read's context ("reading <source>").
  std::string source = "the image";
  // Bytes per Write.
  size_t piece = 4 << 20;
  // Drop the pages read from the page cache as the feed goes (a file read once must not end up
  // held there, whatever its size).
  bool drop_cache = false;
  // Told the offset reached after each Write.
  std::function<void(uint64_t)> progress;
};

// Feeds `sink` the bytes [0, size) of the file `fd` (an image on disk, or the memfd of an image in
// RAM): Start(size), then one Write per piece, `cancel` checked before each. The pieces are read
// with pread into a buffer, never taken from a mapping of the file: a decoder reads every byte,
// and through a mapping it read them at a third to half of the speed (a memfd, and a file in the
// page cache alike). Errors: the sink's and cancel's as they are; kIo, in the context of
// `source`, when a read fails or the file ends before `size`.
Status FeedFile(int fd, uint64_t size, ByteSink& sink, const CancelToken& cancel,
                const FeedOptions& options = {});

}  // namespace byoi
