// The stream decoders of compressed raw images, against data compressed by the libraries' own
// encoders here (the command-line tools are the oracle in tests/integration/test_stream.py).
#include <bzlib.h>
#include <gtest/gtest.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <random>
#include <string>
#include <vector>

#include "agent/image/decompress.hpp"

namespace byoi {
namespace {

using Bytes = std::vector<uint8_t>;

// Compressible but not trivial: runs of random bytes and of repeated ones.
Bytes Sample(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b;
  b.reserve(n);
  while (b.size() < n) {
    size_t run = 1 + rng() % 4096;
    if (rng() % 2) {
      for (size_t i = 0; i < run && b.size() < n; ++i) b.push_back(static_cast<uint8_t>(rng()));
    } else {
      b.insert(b.end(), std::min(run, n - b.size()), static_cast<uint8_t>(rng()));
    }
  }
  return b;
}

Bytes Gzip(const Bytes& in) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&z, in.size()) + 64);
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

Bytes XzPreset(const Bytes& in, uint32_t preset) {
  Bytes out(lzma_stream_buffer_bound(in.size()));
  size_t pos = 0;
  EXPECT_EQ(lzma_easy_buffer_encode(preset, LZMA_CHECK_CRC64, nullptr, in.data(), in.size(),
                                    out.data(), &pos, out.size()),
            LZMA_OK);
  out.resize(pos);
  return out;
}

Bytes Xz(const Bytes& in) { return XzPreset(in, 6); }

// With a content checksum, as the zstd tool writes by default.
Bytes Zstd(const Bytes& in) {
  Bytes out(ZSTD_compressBound(in.size()));
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
  size_t n = ZSTD_compress2(c, out.data(), out.size(), in.data(), in.size());
  ZSTD_freeCCtx(c);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

Bytes Bzip2(const Bytes& in) {
  unsigned n = static_cast<unsigned>(in.size() + in.size() / 100 + 600);
  Bytes out(n);
  EXPECT_EQ(BZ2_bzBuffToBuffCompress(reinterpret_cast<char*>(out.data()), &n,
                                     const_cast<char*>(reinterpret_cast<const char*>(in.data())),
                                     static_cast<unsigned>(in.size()), 9, 0, 0),
            BZ_OK);
  out.resize(n);
  return out;
}

struct Format {
  Compressor c;
  Bytes (*compress)(const Bytes&);
};
const Format kFormats[] = {{Compressor::kGzip, Gzip},
                           {Compressor::kXz, Xz},
                           {Compressor::kZstd, Zstd},
                           {Compressor::kBzip2, Bzip2}};

// A sink that appends what the decoder gives to `out`.
DecodedFn AppendTo(Bytes& out) {
  return [&out](std::span<const uint8_t> b) {
    out.insert(out.end(), b.begin(), b.end());
    return Status::Ok();
  };
}

// Feeds `in` in pieces of `piece` bytes, or of random sizes (1 byte to 64 KiB) when 0, and returns
// the decoded bytes, or the first error.
Result<Bytes> Decode(Compressor c, const Bytes& in, uint32_t seed = 7, size_t piece = 0,
                     uint64_t memory_limit = 256ull << 20) {
  BYOI_ASSIGN_OR_RETURN(std::unique_ptr<StreamDecoder> d, StreamDecoder::Create(c, memory_limit));
  Bytes out;
  const DecodedFn sink = AppendTo(out);
  std::mt19937 rng(seed);
  size_t pos = 0;
  while (pos < in.size()) {
    size_t n = std::min<size_t>(in.size() - pos, piece != 0 ? piece : 1 + rng() % 65536);
    BYOI_RETURN_IF_ERROR(d->Feed(std::span(in).subspan(pos, n), sink));
    pos += n;
  }
  BYOI_RETURN_IF_ERROR(d->Finish(sink));
  EXPECT_EQ(d->bytes_in(), in.size());
  EXPECT_EQ(d->bytes_out(), out.size());
  return out;
}

TEST(StreamDecoderTest, DetectsEachContainerByItsMagic) {
  const Bytes data = Sample(1000, 1);
  for (const Format& f : kFormats) {
    EXPECT_EQ(DetectCompressor(f.compress(data)), f.c) << CompressorName(f.c);
  }
  EXPECT_EQ(DetectCompressor(data), Compressor::kNone);
  EXPECT_EQ(DetectCompressor(Bytes{'B', 'Z', 'h', '0'}), Compressor::kNone);
  EXPECT_EQ(DetectCompressor(Bytes{0x1f, 0x8b}), Compressor::kNone);  // too short to tell
  EXPECT_EQ(DetectCompressor(Bytes{0xfd, '7', 'z', 'X', 'Z', 0x01}), Compressor::kNone);
}

TEST(StreamDecoderTest, DecodesWhateverTheInputPiecesAre) {
  const Bytes data = Sample(3 << 20, 2);
  for (const Format& f : kFormats) {
    Result<Bytes> out = Decode(f.c, f.compress(data));
    ASSERT_TRUE(out.ok()) << CompressorName(f.c) << ": " << out.status().ToString();
    EXPECT_TRUE(*out == data) << CompressorName(f.c);
  }
}

// The decoders hand their output over 1 MiB at a time: a stream whose end fills the last of those
// exactly (a disk image of whole MiB that compresses well, one ending in zeros) is whole, fed in
// one piece as a small file is, or in any other, and so is one followed by another stream.
TEST(StreamDecoderTest, AStreamEndingOnAFullOutputPieceIsWhole) {
  Bytes data = Sample(1 << 20, 5);
  data.resize(4 << 20, 0);
  for (const Format& f : kFormats) {
    const Bytes in = f.compress(data);
    Bytes twice = in;
    twice.insert(twice.end(), in.begin(), in.end());
    for (size_t piece : {in.size(), size_t{1}, size_t{4096}}) {
      Result<Bytes> out = Decode(f.c, in, 7, piece);
      ASSERT_TRUE(out.ok()) << CompressorName(f.c) << ", pieces of " << piece << ": "
                            << out.status().ToString();
      EXPECT_TRUE(*out == data) << CompressorName(f.c);
      Result<Bytes> both = Decode(f.c, twice, 7, piece);
      ASSERT_TRUE(both.ok()) << CompressorName(f.c) << ", two streams in pieces of " << piece
                             << ": " << both.status().ToString();
      EXPECT_EQ(both->size(), 2 * data.size()) << CompressorName(f.c);
    }
  }
}

TEST(StreamDecoderTest, ConcatenatedStreamsDecodeAsOne) {
  const Bytes a = Sample(300000, 3), b = Sample(200000, 4);
  Bytes both = a;
  both.insert(both.end(), b.begin(), b.end());
  for (const Format& f : kFormats) {
    Bytes in = f.compress(a);
    Bytes second = f.compress(b);
    in.insert(in.end(), second.begin(), second.end());
    Result<Bytes> out = Decode(f.c, in);
    ASSERT_TRUE(out.ok()) << CompressorName(f.c) << ": " << out.status().ToString();
    EXPECT_TRUE(*out == both) << CompressorName(f.c);
  }
}

TEST(StreamDecoderTest, ATruncatedStreamIsRefused) {
  const Bytes data = Sample(1 << 20, 5);
  for (const Format& f : kFormats) {
    Bytes in = f.compress(data);
    for (size_t cut : {size_t{1}, size_t{9}, in.size() / 2}) {
      Bytes short_in(in.begin(), in.end() - static_cast<ptrdiff_t>(cut));
      Result<Bytes> out = Decode(f.c, short_in);
      ASSERT_FALSE(out.ok()) << CompressorName(f.c) << " cut " << cut;
      EXPECT_EQ(out.status().code(), Code::kInvalid);
      EXPECT_NE(out.status().detail().find(std::string(CompressorName(f.c))), std::string::npos)
          << out.status().detail();
    }
  }
}

TEST(StreamDecoderTest, CorruptDataIsRefused) {
  const Bytes data = Sample(1 << 20, 6);
  for (const Format& f : kFormats) {
    Bytes in = f.compress(data);
    in[in.size() / 2] ^= 0x55;
    in[in.size() / 2 + 1] ^= 0xaa;
    Result<Bytes> out = Decode(f.c, in);
    ASSERT_FALSE(out.ok()) << CompressorName(f.c);
    EXPECT_EQ(out.status().code(), Code::kInvalid) << out.status().ToString();
  }
}

TEST(StreamDecoderTest, BytesAfterTheLastStreamAreRefused) {
  const Bytes data = Sample(100000, 8);
  const std::string junk = "this is not another stream";
  for (const Format& f : kFormats) {
    Bytes in = f.compress(data);
    in.insert(in.end(), junk.begin(), junk.end());
    Result<Bytes> out = Decode(f.c, in);
    ASSERT_FALSE(out.ok()) << CompressorName(f.c);
    EXPECT_EQ(out.status().code(), Code::kInvalid) << out.status().ToString();
  }
}

TEST(StreamDecoderTest, TheReceiversErrorStopsDecoding) {
  const Bytes data = Sample(1200000, 9);
  for (const Format& f : kFormats) {
    auto d = StreamDecoder::Create(f.c, 256ull << 20);
    ASSERT_TRUE(d.ok());
    Bytes in = f.compress(data);
    int calls = 0;
    Status s = (*d)->Feed(in, [&](std::span<const uint8_t>) {
      ++calls;
      return Status::Error(Code::kTooBig, "disk full");
    });
    EXPECT_EQ(s.code(), Code::kTooBig) << CompressorName(f.c);
    EXPECT_EQ(s.detail(), "disk full");
    EXPECT_EQ(calls, 1);
  }
}

// An xz stream with a 16 MiB dictionary (preset 7), and a zstd frame whose header asks for a
// 16 MiB window (streamed: its size unknown when the header was written, as from a pipe).
Bytes Xz16(const Bytes& in) { return XzPreset(in, 7); }

Bytes Zstd16(const Bytes& in) {
  Bytes out(ZSTD_compressBound(in.size()) + 1024);
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, 24);
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{out.data(), out.size(), 0};
  while (input.pos < input.size) {
    EXPECT_FALSE(ZSTD_isError(ZSTD_compressStream2(c, &output, &input, ZSTD_e_continue)));
  }
  size_t left = 1;
  while (left != 0 && !ZSTD_isError(left))
    left = ZSTD_compressStream2(c, &output, &input, ZSTD_e_end);
  EXPECT_EQ(left, 0u);
  ZSTD_freeCCtx(c);
  out.resize(output.pos);
  return out;
}

// The stream's header sets what the decoder needs: refused (kTooBig, before any output) when it
// passes the caller's limit, decoded when it fits, and the decoder's memory says what it took.
TEST(StreamDecoderTest, AStreamThatNeedsMoreMemoryThanTheLimitIsRefused) {
  const Bytes data = Sample(300000, 10);
  const Format big[] = {{Compressor::kXz, Xz16}, {Compressor::kZstd, Zstd16}};
  for (const Format& f : big) {
    SCOPED_TRACE(CompressorName(f.c));
    const Bytes in = f.compress(data);
    Result<Bytes> refused = Decode(f.c, in, 7, 0, 8ull << 20);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), Code::kTooBig);
    EXPECT_NE(refused.status().detail().find("needs more than"), std::string::npos)
        << refused.status().detail();

    auto d = StreamDecoder::Create(f.c, 32ull << 20);
    ASSERT_TRUE(d.ok());
    Bytes out;
    ASSERT_TRUE((*d)->Feed(in, AppendTo(out)).ok());
    EXPECT_GE((*d)->memory(), 16ull << 20);
    EXPECT_LE((*d)->memory(), 32ull << 20);
    ASSERT_TRUE((*d)->Finish([](std::span<const uint8_t>) { return Status::Ok(); }).ok());
    EXPECT_TRUE(out == data);
  }
  // gzip's and bzip2's state is small and fixed: never refused.
  for (const Format& f : {kFormats[0], kFormats[3]}) {
    Result<Bytes> out = Decode(f.c, f.compress(data), 7, 0, 1);
    ASSERT_TRUE(out.ok()) << CompressorName(f.c) << ": " << out.status().ToString();
  }
}

// Lowered to what it holds, a decoder says it keeps to that, goes on with streams (frames) that
// need no more and refuses one whose header asks for more, though its first limit allowed it.
TEST(StreamDecoderTest, ALoweredLimitRefusesALaterStreamThatAsksForMore) {
  const Bytes data = Sample(300000, 11);
  struct Case {
    Compressor c;
    Bytes small, big;
  };
  const Case cases[] = {{Compressor::kXz, XzPreset(data, 0), Xz16(data)},
                        {Compressor::kZstd, Zstd(data), Zstd16(data)}};
  for (const Case& k : cases) {
    SCOPED_TRACE(CompressorName(k.c));
    for (bool lower : {false, true}) {
      SCOPED_TRACE(lower ? "lowered" : "not lowered");
      auto d = StreamDecoder::Create(k.c, 32ull << 20);
      ASSERT_TRUE(d.ok());
      Bytes out;
      const DecodedFn sink = AppendTo(out);
      ASSERT_TRUE((*d)->Feed(k.small, sink).ok());
      const uint64_t held = (*d)->memory();
      EXPECT_LT(held, 4ull << 20);
      if (lower) {
        // What it keeps to from now on: what it holds, give or take zstd's window rounding.
        const uint64_t kept = (*d)->Lower(held);
        EXPECT_GE(kept, held);
        EXPECT_LE(kept, held + (1ull << 20));
      }
      ASSERT_TRUE((*d)->Feed(k.small, sink).ok());
      Status big = (*d)->Feed(k.big, sink);
      if (lower) {
        EXPECT_EQ(big.code(), Code::kTooBig) << big.ToString();
        EXPECT_NE(big.detail().find("needs more than"), std::string::npos) << big.detail();
        EXPECT_EQ(out.size(), 2 * data.size());
      } else {
        ASSERT_TRUE(big.ok()) << big.ToString();
        ASSERT_TRUE((*d)->Finish(sink).ok());
        EXPECT_EQ(out.size(), 3 * data.size());
        EXPECT_GE((*d)->memory(), 16ull << 20);
      }
    }
  }
}

}  // namespace
}  // namespace byoi
