// Stream mode's VMDK reader (docs/pipeline.md, "Write modes"): reads a streamOptimized VMDK front
// to back, once, and gives its virtual disk to a VirtualDiskSink while the bytes pass. The RAM
// reader (vmdk.hpp) is its model: the same header checks and refusals, the same grain rule, the
// same virtual disk. A stream-optimized file is made for this (VMware's "Virtual Disk Format 5.0"):
// every grain is deflated behind a marker that names its LBA, in increasing LBA order.
//
// How the bytes are used as they pass (vmdk_format.hpp has the format):
// - Everything before the first grain (grain_offset sectors: the header, the descriptor and, in
//   the files qemu-img writes, the grain directories and tables) is held, at most the memory
//   budget, and checked as the RAM reader checks it (the header, a parent disk in the descriptor,
//   tables inside this part). Then the head callback runs, before anything reaches the sink.
// - From grain_offset on, markers follow one another on sector boundaries. A grain marker's data
//   is gathered, inflated (exactly a grain, or the part of the last grain inside the disk) and
//   given to the sink at its LBA, the gap before it as zeros; LBAs must increase, grain by grain
//   aligned and inside the disk. Metadata markers (grain tables, the grain directory, the footer)
//   are gathered; the end-of-stream marker ends the file, and what follows it is ignored.
// - At the end, the grain tables (those held at the start, or those the markers carried and the
//   footer's directory points to) must map exactly the grains the markers gave, each at the sector
//   of its marker: what the RAM reader reads from the tables is then what was written. A footer,
//   when the header puts the directory at the end, must repeat the header's geometry.
//
// Refused in stream mode only (the RAM reader reads them): monolithicSparse VMDKs (their grains
// may come in any order), a directory or table that lies at or after grain_offset in a file whose
// header gives its offset (qemu-img never writes one), grains out of LBA order. Errors found
// after bytes reached the sink leave the sink partly written: the caller (StreamWriter holds the
// first MiB back) decides what to do with it.
//
// Memory, counted against the budget (kTooBig with msg::TooBigForMemory(type) past it): the part
// before grain_offset, one compressed grain and its inflated grain, the grain tables (4 bytes a
// grain of the disk: 64 MiB for 1 TiB of 64 KiB grains) and a record of the grains seen (as much).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/status.hpp"
#include "agent/image/virtual_disk_sink.hpp"
#include "agent/image/virtual_reader.hpp"
#include "agent/image/vmdk.hpp"
#include "agent/image/vmdk_format.hpp"

namespace byoi {

struct VmdkStreamOptions {
  uint64_t memory_budget = 256ull << 20;
  // The image's type in the too-big message ("vmdk", or "ova" for an OVA's disk).
  std::string type = "vmdk";
};

class VmdkStreamReader : public ByteSink {
 public:
  // Called once, when everything before the first grain passed every check and before anything
  // reaches the sink, with what the header says (the byte counts are still 0). An error stops the
  // reader and is returned by Write/Finish as is.
  using HeaderFn = std::function<Status(const VmdkInfo&)>;

  // `sink` is borrowed and must outlive the reader; it is called on the thread that calls
  // Write/Finish only.
  VmdkStreamReader(VirtualDiskSink& sink, VmdkStreamOptions options, HeaderFn on_header);
  ~VmdkStreamReader() override;
  VmdkStreamReader(const VmdkStreamReader&) = delete;
  VmdkStreamReader& operator=(const VmdkStreamReader&) = delete;

  // `total`: the file's length when known.
  Status Start(std::optional<uint64_t> total) override;
  // The file's next bytes. Errors: kUnsupported/kInvalid (the file), kTooBig (the budget), the
  // sink's and the header callback's errors unchanged. After an error every later call returns it.
  Status Write(std::span<const uint8_t> bytes) override;
  // The file ended: checks what only the end can show (above), zeroes the disk after the last
  // grain and returns the virtual size; every byte of [0, virtual size) was given to the sink
  // exactly once.
  Result<uint64_t> Finish();

  // What the header said, and once Finish succeeded the byte counts.
  const VmdkInfo& info() const { return info_; }
  uint64_t memory_peak() const { return peak_; }

 private:
  Status Fail(Status s);
  Status TruncatedBeforeGrains(uint64_t file_bytes) const;
  Status TooBig() const;
  Status Charge(uint64_t n);
  void Release(uint64_t n);
  Status OpenPrefix();
  Status Beyond(const std::string& what, uint64_t sector, uint64_t bytes) const;
  Status Take(std::span<const uint8_t>& bytes);
  Status EndMarker();
  Status EndGrain();
  Status EndMetadata();
  Status CheckTables();

  VirtualDiskSink& sink_;
  const VmdkStreamOptions options_;
  HeaderFn on_header_;
  Status error_;
  std::optional<uint64_t> total_;
  uint64_t pos_ = 0;  // file bytes taken
  uint64_t used_ = 0, peak_ = 0;

  VmdkHeader h_;
  VmdkInfo info_;
  std::vector<uint8_t> prefix_;  // the file before grain_offset (qemu-img's tables are there)
  bool header_read_ = false;
  bool sparse_ = false;  // the file starts with "KDMV"
  bool opened_ = false;
  uint64_t grain_bytes_ = 0;
  uint64_t grains_ = 0;  // grains of the virtual disk

  // The marker being read: its first bytes, then a grain's data or a metadata's sectors.
  enum class Phase { kMarker, kGrain, kMetadata, kEnded };
  Phase phase_ = Phase::kMarker;
  uint64_t marker_at_ = 0;  // file offset of the current marker
  std::vector<uint8_t> marker_;
  VmdkMarker current_;
  std::vector<uint8_t> body_;  // a grain's zlib data, or a metadata marker's sectors
  uint64_t body_needed_ = 0;
  uint64_t skip_ = 0;  // padding to the next sector

  uint64_t written_ = 0;  // virtual bytes given to the sink
  struct Seen {
    uint64_t grain = 0;   // index in the virtual disk
    uint32_t sector = 0;  // of its marker
  };
  std::vector<Seen> seen_;  // the grains the markers gave, in increasing order
  // The grain directory and tables: those before grain_offset (kept in `prefix_`), or those the
  // markers carried (by the sector of their data) and the directory the footer points to.
  std::vector<uint32_t> gd_;
  std::map<uint64_t, std::vector<uint8_t>> gt_markers_;
  uint64_t gd_sector_ = 0;  // of the directory marker's data
  std::optional<VmdkHeader> footer_;
  uint64_t footer_at_ = 0;          // file offset of the footer marker
  uint64_t footer_sectors_ = 0;     // the sectors it says follow it
  std::optional<uint64_t> eos_at_;  // file offset of the end-of-stream marker
  uint64_t eos_value_ = 0;

  ClusterDecompressor inflater_;
  std::vector<uint8_t> grain_;
};

}  // namespace byoi
