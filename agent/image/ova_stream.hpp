// Stream mode's OVA reader (docs/pipeline.md, "Write modes"): reads an OVA front to back, once,
// and gives the virtual disk of the disk it installs to a VirtualDiskSink while the bytes pass. An
// OVA made for streaming (DSP0243 §5.3, what ovftool writes) has its descriptor first, then its
// manifest, then the disks, each disk a streamOptimized VMDK whose grains come in order.
//
// How the bytes are used as they pass:
// - The tar archive is taken header by header: a header's blocks (with the pax or GNU extension
//   blocks before it, at most 1 MiB) are gathered and read by libarchive (the RAM reader's tar
//   reader), then the member's data passes, then its padding, up to the end-of-archive block.
// - The first file must be the `.ovf` (held, at most 1 MiB, and parsed as it ends: it names the
//   disk to install); the `.mf` is held (at most 1 MiB); the disk's data goes through the VMDK
//   stream reader (vmdk_stream.hpp), whose header callback is this reader's; other files pass.
// - Every file is hashed as it passes: with the algorithms the manifest gives it when the manifest
//   came before it (ovftool's order), else with SHA1 and SHA256 (what ovftool and VirtualBox
//   write); a manifest that comes later and asks SHA512 of an earlier file (other than the
//   descriptor, which is held) is refused.
// - At the end the archive is checked by DescribeOva (ova.hpp), as the RAM reader checks it (the
//   same refusals with the same words), then the VMDK reader's end, then every digest.
//
// Refused in stream mode only: a disk whose data comes before the descriptor names it (it cannot:
// the descriptor is first), two files named like the disk. Errors found after bytes reached the
// sink leave the sink partly written: the caller (StreamWriter holds the first MiB back) decides
// what to do with it. Memory: the descriptor, the manifest and a header's blocks (1 MiB each at
// most), the hashers, and what the VMDK stream reader holds (its budget).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/status.hpp"
#include "agent/image/ova.hpp"
#include "agent/image/ova_manifest.hpp"
#include "agent/image/ovf.hpp"
#include "agent/image/virtual_disk_sink.hpp"
#include "agent/image/vmdk_stream.hpp"

namespace byoi {

struct OvaStreamOptions {
  // What the disk's VMDK stream reader may hold (vmdk_stream.hpp). Default 256 MiB.
  uint64_t memory_budget = 256ull << 20;
};

class OvaStreamReader : public ByteSink {
 public:
  // Called once, with the installed disk's VMDK header facts, before anything reaches the sink.
  using HeaderFn = VmdkStreamReader::HeaderFn;

  // `sink` is borrowed and must outlive the reader; it is called on the thread that calls
  // Write/Finish only.
  OvaStreamReader(VirtualDiskSink& sink, OvaStreamOptions options, HeaderFn on_header);
  ~OvaStreamReader() override;
  OvaStreamReader(const OvaStreamReader&) = delete;
  OvaStreamReader& operator=(const OvaStreamReader&) = delete;

  Status Start(std::optional<uint64_t> total) override;
  // The archive's next bytes. Errors: kInvalid/kUnsupported (the archive, its descriptor or its
  // disk), kTooBig, the sink's and the header callback's errors unchanged. After an error every
  // later call returns it.
  Status Write(std::span<const uint8_t> bytes) override;
  // The archive ended: the checks above, then the disk's virtual size (every byte of it was given
  // to the sink exactly once). A digest that differs: kInvalid with msg::OvaChecksumMismatch.
  Result<uint64_t> Finish();

  // What the archive held (set by a successful Finish).
  const OvaInfo& info() const { return info_; }
  uint64_t memory_peak() const { return disk_ ? disk_->memory_peak() : 0; }

 private:
  Status Fail(Status s);
  Status Take(std::span<const uint8_t>& bytes);
  Status EndHeaderBlock();
  Status BeginMember(std::string name, uint64_t size);
  Status MemberData(std::span<const uint8_t> bytes);
  Status EndMember();

  VirtualDiskSink& sink_;
  const OvaStreamOptions options_;
  HeaderFn on_header_;
  Status error_;
  uint64_t pos_ = 0;  // archive bytes taken

  enum class Phase { kHeader, kData, kEnded };
  Phase phase_ = Phase::kHeader;
  std::vector<uint8_t> block_;    // the header block being gathered
  std::vector<uint8_t> headers_;  // the blocks of the header being gathered
  uint64_t extension_ = 0;        // bytes of an extension's data still to gather into headers_
  uint64_t data_left_ = 0;        // of the current member
  uint64_t padding_ = 0;          // after it

  std::vector<OvaMember> members_;
  std::vector<std::vector<std::pair<std::string, std::string>>> digests_;  // per member: algo, hex
  std::string current_name_;
  bool current_is_disk_ = false;
  std::optional<ManifestHasher> hasher_;
  std::string descriptor_;  // the `.ovf`'s text
  std::string manifest_;    // the `.mf`'s text
  std::optional<size_t> manifest_index_;
  std::vector<OvaManifestLine> manifest_lines_;  // once the manifest ended
  std::optional<OvfDescriptor> ovf_;
  std::string disk_name_;  // the member to install, once the descriptor is read
  std::unique_ptr<VmdkStreamReader> disk_;
  OvaInfo info_;
  uint64_t virtual_size_ = 0;
};

}  // namespace byoi
