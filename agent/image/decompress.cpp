#include "agent/image/decompress.hpp"

#include <bzlib.h>
#include <fmt/format.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <vector>

#include "agent/base/units.hpp"

namespace byoi {
namespace {

// Decoded bytes are handed over in pieces of at most this size.
constexpr size_t kOutBytes = 1 << 20;
// zlib's inflate state with its 32 KiB window; libbz2's decoder for 900 KB blocks (bzip2 -9).
constexpr uint64_t kGzipState = 44 << 10;
constexpr uint64_t kBzip2State = 3'700'000;
// zstd's decoder holds its context and block buffers beside the window (478 KiB with libzstd
// 1.5).
constexpr uint64_t kZstdOverhead = 512 << 10;

Status NeedsMore(std::string_view format, uint64_t offset, uint64_t limit) {
  return Status::Error(Code::kTooBig,
                       fmt::format("{} stream at compressed byte {} needs more than {} to decode",
                                   format, offset, HumanBytes(limit)));
}

Status Corrupt(std::string_view format, uint64_t offset, std::string_view why) {
  return Status::Error(Code::kInvalid,
                       fmt::format("{} data at compressed byte {}: {}", format, offset, why));
}

Status Truncated(std::string_view format, uint64_t offset) {
  return Status::Error(
      Code::kInvalid,
      fmt::format("{} stream ends early, after {} compressed bytes", format, offset));
}

class GzipDecoder : public StreamDecoder {
 public:
  GzipDecoder() : out_buf_(kOutBytes) {}
  ~GzipDecoder() override {
    if (ready_) inflateEnd(&z_);
  }

  Status Init() {
    // 15 + 16: a 32 KiB window and the gzip wrapper (header and CRC-32/ISIZE trailer).
    if (inflateInit2(&z_, 15 + 16) != Z_OK) {
      return Status::Error(Code::kInternal, "zlib: cannot set up a decoder");
    }
    ready_ = true;
    return Status::Ok();
  }

  Status Feed(std::span<const uint8_t> in, const DecodedFn& out) override {
    z_.next_in = const_cast<Bytef*>(in.data());
    z_.avail_in = static_cast<uInt>(in.size());
    for (;;) {
      if (member_ended_) {
        if (z_.avail_in == 0) return Status::Ok();
        // Another member follows (`cat a.gz b.gz`): the same decoder, reset.
        inflateReset(&z_);
        member_ended_ = false;
      }
      z_.next_out = out_buf_.data();
      z_.avail_out = static_cast<uInt>(out_buf_.size());
      const uInt before = z_.avail_in;
      int rc = inflate(&z_, Z_NO_FLUSH);
      in_ += before - z_.avail_in;
      BYOI_RETURN_IF_ERROR(Emit(out));
      if (rc == Z_STREAM_END) {
        member_ended_ = true;
        continue;
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return Corrupt("gzip", in_, z_.msg != nullptr ? z_.msg : "invalid data");
      }
      // A full output buffer may leave more output inside zlib: go round until it is not full.
      if (z_.avail_in == 0 && z_.avail_out != 0) return Status::Ok();
    }
  }

  Status Finish(const DecodedFn&) override {
    // Feed left nothing inside zlib (it stops only when the output buffer was not filled).
    if (!member_ended_) return Truncated("gzip", in_);
    return Status::Ok();
  }
  uint64_t memory() const override { return kGzipState + out_buf_.size(); }

 private:
  Status Emit(const DecodedFn& out) {
    size_t n = out_buf_.size() - z_.avail_out;
    if (n == 0) return Status::Ok();
    out_ += n;
    return out(std::span<const uint8_t>(out_buf_.data(), n));
  }

  z_stream z_{};
  bool ready_ = false;
  bool member_ended_ = false;
  std::vector<uint8_t> out_buf_;
};

class XzDecoder : public StreamDecoder {
 public:
  explicit XzDecoder(uint64_t memory_limit)
      : limit_(std::clamp<uint64_t>(memory_limit, 1, kXzMemoryCap)), out_buf_(kOutBytes) {}
  ~XzDecoder() override { lzma_end(&s_); }

  Status Init() {
    // LZMA_CONCATENATED: several .xz streams (and their padding) decode as one, like xzcat.
    if (lzma_stream_decoder(&s_, limit_, LZMA_CONCATENATED) != LZMA_OK) {
      return Status::Error(Code::kInternal, "liblzma: cannot set up a decoder");
    }
    return Status::Ok();
  }

  Status Feed(std::span<const uint8_t> in, const DecodedFn& out) override {
    s_.next_in = in.data();
    s_.avail_in = in.size();
    // A full output buffer may leave more output inside liblzma: go round until it is not full.
    do {
      BYOI_RETURN_IF_ERROR(Step(LZMA_RUN, out));
    } while (s_.avail_in > 0 || s_.avail_out == 0);
    return Status::Ok();
  }

  Status Finish(const DecodedFn& out) override {
    s_.next_in = nullptr;
    s_.avail_in = 0;
    while (!ended_) BYOI_RETURN_IF_ERROR(Step(LZMA_FINISH, out));
    return Status::Ok();
  }
  uint64_t memory() const override { return lzma_memusage(&s_) + out_buf_.size(); }
  uint64_t Lower(uint64_t memory_limit) override {
    const uint64_t state = std::max<uint64_t>(
        memory_limit - std::min<uint64_t>(memory_limit, out_buf_.size()), lzma_memusage(&s_));
    if (state < limit_ && lzma_memlimit_set(&s_, state) == LZMA_OK) limit_ = state;
    return limit_ + out_buf_.size();
  }

 private:
  Status Step(lzma_action action, const DecodedFn& out) {
    s_.next_out = out_buf_.data();
    s_.avail_out = out_buf_.size();
    const size_t before = s_.avail_in;
    lzma_ret rc = lzma_code(&s_, action);
    in_ += before - s_.avail_in;
    size_t n = out_buf_.size() - s_.avail_out;
    if (n > 0) {
      out_ += n;
      BYOI_RETURN_IF_ERROR(out(std::span<const uint8_t>(out_buf_.data(), n)));
    }
    switch (rc) {
      case LZMA_OK:
        return Status::Ok();
      case LZMA_STREAM_END:
        ended_ = true;
        return Status::Ok();
      case LZMA_BUF_ERROR:
        // No progress is possible: at LZMA_FINISH that means the input ended inside a stream.
        if (action == LZMA_FINISH) return Truncated("xz", in_);
        return Status::Ok();
      case LZMA_MEMLIMIT_ERROR:
        return NeedsMore("xz", in_, limit_);
      case LZMA_FORMAT_ERROR:
        return Corrupt("xz", in_, "not an xz stream");
      case LZMA_OPTIONS_ERROR:
        return Corrupt("xz", in_, "unsupported options");
      case LZMA_DATA_ERROR:
        return Corrupt("xz", in_, "corrupt data");
      default:
        return Corrupt("xz", in_, fmt::format("liblzma error {}", static_cast<int>(rc)));
    }
  }

  uint64_t limit_;
  lzma_stream s_ = LZMA_STREAM_INIT;
  bool ended_ = false;
  std::vector<uint8_t> out_buf_;
};

class ZstdDecoder : public StreamDecoder {
 public:
  explicit ZstdDecoder(uint64_t memory_limit)
      : window_log_(WindowLog(memory_limit)), out_buf_(kOutBytes) {}
  ~ZstdDecoder() override { ZSTD_freeDStream(d_); }

  Status Init() {
    d_ = ZSTD_createDStream();
    if (d_ == nullptr ||
        ZSTD_isError(ZSTD_DCtx_setParameter(d_, ZSTD_d_windowLogMax, window_log_))) {
      return Status::Error(Code::kInternal, "libzstd: cannot set up a decoder");
    }
    return Status::Ok();
  }

  uint64_t memory() const override { return ZSTD_sizeof_DStream(d_) + out_buf_.size(); }
  uint64_t Lower(uint64_t memory_limit) override {
    // Never under the window of the frame being decoded: its buffers are in what it holds.
    const int log = WindowLog(std::max(memory_limit, memory() + kZstdOverhead));
    if (log < window_log_) {
      window_log_ = log;
      lower_pending_ = true;
    }
    return std::max(memory(), Needs(window_log_));
  }

  Status Feed(std::span<const uint8_t> in, const DecodedFn& out) override {
    ZSTD_inBuffer input{in.data(), in.size(), 0};
    // Loop until the input is used up and the decoder has nothing more to flush for it.
    for (;;) {
      // libzstd takes a new window limit between frames only.
      if (lower_pending_ && !frame_open_ &&
          !ZSTD_isError(ZSTD_DCtx_setParameter(d_, ZSTD_d_windowLogMax, window_log_))) {
        lower_pending_ = false;
      }
      ZSTD_outBuffer output{out_buf_.data(), out_buf_.size(), 0};
      const size_t before = input.pos;
      size_t rc = ZSTD_decompressStream(d_, &output, &input);
      in_ += input.pos - before;
      if (ZSTD_getErrorCode(rc) == ZSTD_error_frameParameter_windowTooLarge) {
        return NeedsMore("zstd", in_, Needs(window_log_));
      }
      if (ZSTD_isError(rc)) return Corrupt("zstd", in_, ZSTD_getErrorName(rc));
      // A call that took nothing and gave nothing says nothing of the frame: after a frame ended
      // on a full output buffer, the next call finds no input and asks for the next header.
      if (input.pos > before || output.pos > 0) frame_open_ = rc != 0;
      if (output.pos > 0) {
        out_ += output.pos;
        BYOI_RETURN_IF_ERROR(out(std::span<const uint8_t>(out_buf_.data(), output.pos)));
      }
      if (input.pos == input.size && output.pos < output.size) return Status::Ok();
    }
  }

  Status Finish(const DecodedFn&) override {
    // 0 from the last call: every frame begun was decoded and flushed to the end.
    if (frame_open_ || in_ == 0) return Truncated("zstd", in_);
    return Status::Ok();
  }

 private:
  // What a window of 2^log bytes makes the decoder hold, with the output buffer.
  static uint64_t Needs(int log) { return (1ull << log) + kZstdOverhead + kOutBytes; }
  // The largest window (a power of two, at least ZSTD_WINDOWLOG_ABSOLUTEMIN) that fits `limit`.
  static int WindowLog(uint64_t limit) {
    int log = 10;
    while (log < 31 && (2ull << log) <= kZstdWindowCap && Needs(log + 1) <= limit) ++log;
    return log;
  }

  int window_log_;
  ZSTD_DStream* d_ = nullptr;
  bool frame_open_ = false;
  bool lower_pending_ = false;
  std::vector<uint8_t> out_buf_;
};

class Bzip2Decoder : public StreamDecoder {
 public:
  Bzip2Decoder() : out_buf_(kOutBytes) {}
  ~Bzip2Decoder() override {
    if (ready_) BZ2_bzDecompressEnd(&s_);
  }

  Status Init() {
    if (BZ2_bzDecompressInit(&s_, 0, 0) != BZ_OK) {
      return Status::Error(Code::kInternal, "libbz2: cannot set up a decoder");
    }
    ready_ = true;
    return Status::Ok();
  }

  Status Feed(std::span<const uint8_t> in, const DecodedFn& out) override {
    s_.next_in = const_cast<char*>(reinterpret_cast<const char*>(in.data()));
    s_.avail_in = static_cast<unsigned>(in.size());
    for (;;) {
      if (stream_ended_) {
        if (s_.avail_in == 0) return Status::Ok();
        // Another stream follows (pbzip2 writes one per block group; `cat a.bz2 b.bz2`).
        char* next = s_.next_in;
        unsigned avail = s_.avail_in;
        BZ2_bzDecompressEnd(&s_);
        ready_ = false;
        s_ = bz_stream{};
        BYOI_RETURN_IF_ERROR(Init());
        s_.next_in = next;
        s_.avail_in = avail;
        stream_ended_ = false;
      }
      s_.next_out = reinterpret_cast<char*>(out_buf_.data());
      s_.avail_out = static_cast<unsigned>(out_buf_.size());
      const unsigned before = s_.avail_in;
      int rc = BZ2_bzDecompress(&s_);
      in_ += before - s_.avail_in;
      size_t n = out_buf_.size() - s_.avail_out;
      if (n > 0) {
        out_ += n;
        BYOI_RETURN_IF_ERROR(out(std::span<const uint8_t>(out_buf_.data(), n)));
      }
      if (rc == BZ_STREAM_END) {
        stream_ended_ = true;
        continue;
      }
      if (rc != BZ_OK) {
        return Corrupt("bzip2", in_,
                       rc == BZ_DATA_ERROR_MAGIC ? "not a bzip2 stream" : "corrupt data");
      }
      // A full output buffer may leave more output inside libbz2: go round until it is not full.
      if (s_.avail_in == 0 && s_.avail_out != 0) return Status::Ok();
    }
  }

  Status Finish(const DecodedFn&) override {
    if (!stream_ended_) return Truncated("bzip2", in_);
    return Status::Ok();
  }
  uint64_t memory() const override { return kBzip2State + out_buf_.size(); }

 private:
  bz_stream s_{};
  bool ready_ = false;
  bool stream_ended_ = false;
  std::vector<uint8_t> out_buf_;
};

template <typename D, typename... Args>
Result<std::unique_ptr<StreamDecoder>> Make(Args... args) {
  auto d = std::make_unique<D>(args...);
  BYOI_RETURN_IF_ERROR(d->Init());
  return std::unique_ptr<StreamDecoder>(std::move(d));
}

}  // namespace

std::string_view CompressorName(Compressor c) {
  switch (c) {
    case Compressor::kNone:
      return "none";
    case Compressor::kGzip:
      return "gzip";
    case Compressor::kXz:
      return "xz";
    case Compressor::kZstd:
      return "zstd";
    case Compressor::kBzip2:
      return "bzip2";
  }
  return "?";
}

Compressor DetectCompressor(std::span<const uint8_t> b) {
  auto starts = [&](std::initializer_list<uint8_t> magic) {
    return b.size() >= magic.size() && std::equal(magic.begin(), magic.end(), b.begin());
  };
  if (starts({0x1f, 0x8b, 0x08})) return Compressor::kGzip;
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return Compressor::kXz;
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return Compressor::kZstd;
  if (b.size() >= 4 && starts({'B', 'Z', 'h'}) && b[3] >= '1' && b[3] <= '9') {
    return Compressor::kBzip2;
  }
  return Compressor::kNone;
}

Result<std::unique_ptr<StreamDecoder>> StreamDecoder::Create(Compressor c, uint64_t memory_limit) {
  switch (c) {
    case Compressor::kGzip:
      return Make<GzipDecoder>();
    case Compressor::kXz:
      return Make<XzDecoder>(memory_limit);
    case Compressor::kZstd:
      return Make<ZstdDecoder>(memory_limit);
    case Compressor::kBzip2:
      return Make<Bzip2Decoder>();
    case Compressor::kNone:
      break;
  }
  return Status::Error(Code::kInternal, "no decoder for uncompressed data");
}

std::optional<uint64_t> RecordedDecodedSize(Compressor c, std::span<const uint8_t> file) {
  if (c == Compressor::kZstd) {
    // Frame by frame (skippable frames count 0); each header must record its content size.
    uint64_t total = 0;
    for (size_t at = 0; at < file.size();) {
      const unsigned long long n = ZSTD_getFrameContentSize(file.data() + at, file.size() - at);
      if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN) return std::nullopt;
      const size_t frame = ZSTD_findFrameCompressedSize(file.data() + at, file.size() - at);
      if (ZSTD_isError(frame) || frame == 0) return std::nullopt;
      total += n;
      at += frame;
    }
    return total;
  }
  if (c != Compressor::kXz) return std::nullopt;
  // liblzma walks the streams from the end of the file, asking for the positions it needs.
  lzma_stream strm = LZMA_STREAM_INIT;
  lzma_index* index = nullptr;
  if (lzma_file_info_decoder(&strm, &index, kXzMemoryCap, file.size()) != LZMA_OK) {
    return std::nullopt;
  }
  std::optional<uint64_t> size;
  strm.next_in = file.data();
  strm.avail_in = file.size();
  for (int steps = 0; steps < 1000000; ++steps) {
    lzma_ret rc = lzma_code(&strm, LZMA_RUN);
    if (rc == LZMA_SEEK_NEEDED) {
      if (strm.seek_pos > file.size()) break;
      strm.next_in = file.data() + strm.seek_pos;
      strm.avail_in = file.size() - strm.seek_pos;
      continue;
    }
    if (rc == LZMA_STREAM_END) size = lzma_index_uncompressed_size(index);
    break;
  }
  if (index != nullptr) lzma_index_end(index, nullptr);
  lzma_end(&strm);
  return size;
}

}  // namespace byoi
