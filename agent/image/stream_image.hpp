// Stream mode's image reader (docs/pipeline.md, "Write modes"): a ByteSink that takes an image
// file's bytes in order (a download, a file read front to back) and gives its virtual disk to a
// VirtualDiskSink while they pass, so that an image of any size is written with bounded memory.
//
// What it does with the bytes:
//   1. The first bytes tell the container (DetectCompressor): a gzip, xz, zstd or bzip2 file is
//      decoded as it passes (StreamDecoder); anything else is the content itself.
//   2. The content's first 64 KiB + 4 KiB (or all of it when shorter) are held back and named by
//      DetectFormat, as the RAM path names a whole image.
//   3. Content with the qcow2 magic goes through the qcow2 stream reader (qcow2_stream.hpp),
//      which checks the first cluster before anything reaches the sink; an OVA through the OVA
//      stream reader (ova_stream.hpp) and a VMDK through the VMDK one (vmdk_stream.hpp), which
//      check the descriptor and the VMDK's header first; anything else is raw:
//      passed through in order (the virtual disk is the content, padded with zeros to a whole
//      512-byte sector, as RawLayout does).
//   4. Before the first byte reaches the sink, the head callback is called with what is known
//      (StreamHead), so that the caller refuses a wrong declared type, an image larger than the
//      disk, a backing file, encryption... while the disk is still untouched. An error from it
//      stops the reader and is returned as is.
//
// Memory: the held head (68 KiB), and within StreamImageOptions::memory_budget the decoder's
// state (decompress.hpp: an xz or zstd stream that asks for more is refused, kTooBig with
// msg::TooBigForMemory(type)) and what the qcow2, OVA or VMDK stream reader holds, which may use
// what the decoder left (kTooBig with msg::TooBigForMemory past it). The decoder then keeps to
// what it held, or to half the budget when that is more: a later xz stream or zstd frame that asks
// for more is refused the same way. The sink's own buffers are the sink's.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/status.hpp"
#include "agent/image/decompress.hpp"
#include "agent/image/format.hpp"
#include "agent/image/ova.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/virtual_disk_sink.hpp"
#include "agent/image/vmdk.hpp"

namespace byoi {

class OvaStreamReader;
class Qcow2StreamReader;
class VmdkStreamReader;

// What is known of an image before its first byte is written.
struct StreamHead {
  // DetectFormat of the (decoded) content's first bytes; format.virtual_size is not set (see
  // virtual_size).
  FormatInfo format;
  Compressor container = Compressor::kNone;  // the file's container, kNone for a plain file
  // The virtual disk's size when known: a qcow2 header's (rounded down to 512 bytes); a plain raw
  // file's length from Start() rounded up to 512 bytes; unknown for a compressed raw file.
  std::optional<uint64_t> virtual_size;
  std::optional<Qcow2Info> qcow2;  // the qcow2 header's facts (the byte counts are still 0)
  std::optional<VmdkInfo> vmdk;    // a VMDK's (an OVA's disk's) header facts, likewise
};

struct StreamImageOptions {
  // What the decoder and the qcow2, OVA or VMDK stream reader may hold together. Default 256 MiB.
  uint64_t memory_budget = 256ull << 20;
  // The declared type's name, for the catalogue's too-big sentence.
  std::string type = "raw";
  // Threads inflating compressed qcow2 clusters; 0: one per core.
  unsigned threads = 0;
};

class StreamImage : public ByteSink {
 public:
  using HeadFn = std::function<Status(const StreamHead&)>;

  // `sink` is borrowed and must outlive the reader; it is called from the thread that calls
  // Write/Finish only.
  StreamImage(VirtualDiskSink& sink, StreamImageOptions options, HeadFn on_head);
  ~StreamImage() override;
  StreamImage(const StreamImage&) = delete;
  StreamImage& operator=(const StreamImage&) = delete;

  // `total`: the file's length when known.
  Status Start(std::optional<uint64_t> total) override;
  // The file's next bytes. Errors: the container's (kInvalid: corrupt compressed data), the
  // qcow2 reader's, the head callback's and the sink's, unchanged. After an error every later
  // call returns it again.
  Status Write(std::span<const uint8_t> bytes) override;
  // The file ended. Checks what only the end shows (a compressed stream cut short, a truncated
  // qcow2), gives the sink the last bytes and returns the virtual size: every byte of
  // [0, virtual size) was given to the sink exactly once.
  Result<uint64_t> Finish();

  // What the head callback was given (empty before it was called).
  const StreamHead& head() const { return head_; }
  // File bytes taken so far (before decoding).
  uint64_t bytes_in() const { return in_; }
  // An OVA's members and the disk it installed, once Finish succeeded (nullptr for other images).
  const OvaInfo* ova() const;
  // The qcow2, OVA or VMDK reader's memory peak (0 for raw images).
  uint64_t memory_peak() const;

 private:
  Status Fail(Status s);
  Status Container(std::span<const uint8_t> bytes);  // file bytes once the container is known
  Status Content(std::span<const uint8_t> bytes);    // decoded bytes, in order
  Status Identify();
  // What the qcow2, OVA or VMDK reader may hold: the budget less what the decoder keeps to from
  // then on.
  uint64_t ReaderBudget();
  Status Forward(std::span<const uint8_t> bytes);
  Status CallHead();

  VirtualDiskSink& sink_;
  const StreamImageOptions options_;
  HeadFn on_head_;
  Status error_;
  std::optional<uint64_t> total_;
  uint64_t in_ = 0;

  std::vector<uint8_t> file_head_;  // until the container is known
  bool container_known_ = false;
  std::unique_ptr<StreamDecoder> decoder_;

  std::vector<uint8_t> content_head_;  // until the format is known
  bool identified_ = false;
  bool head_called_ = false;
  StreamHead head_;
  std::unique_ptr<Qcow2StreamReader> qcow2_;
  std::unique_ptr<OvaStreamReader> ova_;
  std::unique_ptr<VmdkStreamReader> vmdk_;
  uint64_t raw_pos_ = 0;  // raw: bytes of the virtual disk given so far
};

}  // namespace byoi
