// Compressed raw images (docs/manifest.md "type"): a raw disk image shipped as one gzip, xz, zstd
// or bzip2 stream (Fedora CoreOS, Flatcar, Talos and many appliances ship `.raw.xz`,
// `.raw.zst`, `.raw.gz`). The container is recognised by its magic bytes, never by the URL, and
// decoded as a stream: bytes in, the raw disk's bytes out in order, with a fixed amount of memory
// whatever the image's size: the decoder's state, which the stream's header sets (xz's dictionary:
// 65 MiB for `xz -9`; zstd's window: 8 MiB for `zstd -19`, 128 MiB for `--long=27`), and 1 MiB of
// output. xz and zstd decoders refuse a stream that asks for more than the caller's limit; gzip's
// state (44 KiB) and bzip2's (at most 3.5 MiB) are fixed and always allowed.
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

// What an xz or zstd decoder may take at most, whatever the caller allows: xz's is what `xz -9e`
// needs with room for other encoders' headers, zstd's window what `zstd -d` accepts without
// `--memory`. They bound what a crafted header can make the decoder take.
inline constexpr uint64_t kXzMemoryCap = 256ull << 20;
inline constexpr uint64_t kZstdWindowCap = 128ull << 20;

class StreamDecoder {
 public:
  // A decoder whose state stays within `memory_limit` bytes (and the caps above).
  // REQUIRES: c != kNone. kInternal when the library cannot set up a decoder (out of memory).
  static Result<std::unique_ptr<StreamDecoder>> Create(Compressor c, uint64_t memory_limit);
  virtual ~StreamDecoder() = default;

  // Decodes the next compressed bytes, calling `out` for what they yield. kInvalid (with the
  // library's reason and the compressed offset in detail) for corrupt data or data after the
  // end; kTooBig when the stream's header asks for more memory than the limit; errors of `out`
  // are returned unchanged.
  virtual Status Feed(std::span<const uint8_t> in, const DecodedFn& out) = 0;
  // The compressed input ended. kInvalid when it ended inside a stream (a truncated file).
  virtual Status Finish(const DecodedFn& out) = 0;

  // The memory the decoder holds now: its state and its output buffer.
  virtual uint64_t memory() const = 0;
  // Lowers the limit to `memory_limit` (never under memory()): a later xz stream or block, or zstd
  // frame, whose header asks for more is refused (kTooBig). Returns what the decoder may hold
  // from now on, so that the rest of a budget can go to another holder (the image reader) without
  // the decoder growing into it. gzip and bzip2 do not grow.
  virtual uint64_t Lower(uint64_t memory_limit) {
    (void)memory_limit;
    return memory();
  }

  // Compressed bytes fed so far, and decoded bytes produced so far.
  uint64_t bytes_in() const { return in_; }
  uint64_t bytes_out() const { return out_; }

 protected:
  uint64_t in_ = 0;
  uint64_t out_ = 0;
};

}  // namespace byoi
