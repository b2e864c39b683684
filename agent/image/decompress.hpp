// Compressed raw images (docs/manifest.md "type"): a raw disk image shipped as one gzip, xz, zstd
// or bzip2 stream (Fedora CoreOS, Flatcar, Talos and many appliances ship `.raw.xz`,
// `.raw.zst`, `.raw.gz`). The container is recognised by its magic bytes, never by the URL, and
// decoded as a stream: bytes in, the raw disk's bytes out in order, with a fixed amount of memory
// whatever the image's size (the decoder's window: at most 64 MiB for xz presets up to -9e, what
// zstd allows by default, 900 KB for bzip2, 32 KiB for gzip).
//
// Concatenated streams decode as one (gzip members, xz streams with their padding, zstd frames,
// bzip2 streams), as `zcat`, `xzcat`, `zstdcat` and `bzcat` do. Anything after the last stream
// that is not another stream is refused, as is a stream that ends early.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

enum class Compressor { kNone, kGzip, kXz, kZstd, kBzip2 };

// "none", "gzip", "xz", "zstd", "bzip2".
std::string_view CompressorName(Compressor c);

// The container of a file that starts with `head` (at least 6 bytes to tell them all apart):
//   gzip 1f 8b 08 · xz fd 37 7a 58 5a 00 · zstd 28 b5 2f fd · bzip2 "BZh" + '1'..'9'
Compressor DetectCompressor(std::span<const uint8_t> head);

// The decoded size of the whole file `file` when its container records it without decoding: every
// zstd frame's header gives its content size, the xz index gives every stream's; nullopt for
// gzip and bzip2 (gzip's ISIZE is the size modulo 4 GiB of the last member only), for a file
// whose records are missing or broken, and for kNone.
std::optional<uint64_t> RecordedDecodedSize(Compressor c, std::span<const uint8_t> file);

// Receives decoded bytes in order; the span is valid only during the call. An error stops the
// decoder and is returned by Feed/Finish as is.
using DecodedFn = std::function<Status(std::span<const uint8_t> bytes)>;

class StreamDecoder {
 public:
  // REQUIRES: c != kNone. kInternal when the library cannot set up a decoder (out of memory).
  static Result<std::unique_ptr<StreamDecoder>> Create(Compressor c);
  virtual ~StreamDecoder() = default;

  // Decodes the next compressed bytes, calling `out` for what they yield. kInvalid (with the
  // library's reason and the compressed offset in detail) for corrupt data or data after the
  // end; errors of `out` are returned unchanged.
  virtual Status Feed(std::span<const uint8_t> in, const DecodedFn& out) = 0;
  // The compressed input ended. kInvalid when it ended inside a stream (a truncated file).
  virtual Status Finish(const DecodedFn& out) = 0;

  // Compressed bytes fed so far, and decoded bytes produced so far.
  uint64_t bytes_in() const { return in_; }
  uint64_t bytes_out() const { return out_; }

 protected:
  uint64_t in_ = 0;
  uint64_t out_ = 0;
};

}  // namespace byoi
