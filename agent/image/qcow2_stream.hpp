// Stream mode's qcow2 reader (docs/pipeline.md, "Write modes"): reads a qcow2 file front to back,
// once, and gives its virtual disk to a VirtualDiskSink while the bytes pass, so that an image of
// any size is written with bounded memory. The RAM reader (qcow2.hpp) is its model: the same
// first-cluster checks (qcow2_map.hpp), the same L2 decoder, the same refusals with the same
// reasons, the same virtual disk.
//
// How the bytes are used as they pass (QEMU docs/interop/qcow2.rst):
// - The first cluster is held until it is whole; every refusal it shows (version, cluster size,
//   backing file, data file, encryption, unknown incompatible bits, compression type, extended L2
//   rules, refcount and snapshot table placement, L1 size and placement, header extensions) is
//   made before anything reaches the sink, then the header callback runs.
// - The active L1 table is collected when its bytes pass; an entry of 0 makes its range zero at
//   once. Each L2 table it references is collected when its cluster passes and decoded with the
//   one decoder: zero and unallocated runs go to the sink as Zero at once; data runs become
//   "needs" (host byte range → virtual offset, consecutive ones merged); compressed clusters
//   become compressed needs (a host byte range, not cluster-aligned).
// - Data bytes are written when they pass and their mapping is known; a compressed stream is
//   gathered, then inflated on a pool of threads (a bounded queue) and written.
// - Bytes that pass before the L2 table mapping them (or before the L1 table) wait in RAM, counted
//   against the budget, and are used when their mapping arrives. Once the L1 table and every L2
//   table it references have passed, waiting bytes that nothing maps are dropped, and later ones
//   are skipped.
// - The snapshot table's entries are walked when they pass; the persistent bitmap directory is
//   collected and checked when it passes, each bitmap table's entries when they pass (tables that
//   passed before the directory through a per-cluster record of the first entry that would be
//   invalid, kept only for images that have bitmaps).
// - At the end: the L1 table and every L2 table must have arrived, and every mapped byte must
//   have been in the file; otherwise the RAM reader's refusal with its words
//   ("L2 table at 0x50000 (L1 index 0) lies outside the image", "image is truncated: the cluster
//   at virtual 0x200000 maps to 0x70000, past the end of the file (459752 bytes)").
//
// Differences from the RAM reader, all refusals of crafted images (qemu-img never makes them):
// a host range mapped by two data L2 entries is refused ("mapped twice"), and so is a table or
// a cluster whose bytes were already used as something else before its mapping arrived. Errors
// found after bytes reached the sink leave the sink partly written: the caller (StreamWriter
// holds the first MiB back) decides what to do with it.
//
// Memory, counted against Qcow2StreamOptions::memory_budget (kTooBig with
// msg::TooBigForMemory("qcow2") when it would pass it): the held first cluster, the L1 entries
// that cover the disk (and a sorted copy while they are checked), L2 tables being gathered, the
// needs (kNodeCost bytes each), waiting bytes, compressed streams being gathered and the inflate
// queue's inputs and outputs, the snapshot entry being read, the bitmap directory and the
// per-cluster bitmap record. Not counted: the sink's own buffers, thread stacks, the decompressor
// states (one per thread).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/status.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/qcow2_map.hpp"
#include "agent/image/virtual_disk_sink.hpp"

namespace byoi {

struct Qcow2StreamOptions {
  // Bytes the reader may hold (see above). Default 256 MiB.
  uint64_t memory_budget = 256ull << 20;
  // Threads inflating compressed clusters; 0: one per core.
  unsigned threads = 0;
};

class Qcow2StreamReader : public ByteSink {
 public:
  // Called once, when the first cluster passed every check and before anything reaches the sink,
  // with what the header says (the byte counts are still 0). An error stops the reader and is
  // returned by Write/Finish as is.
  using HeaderFn = std::function<Status(const Qcow2Info&)>;

  // `sink` is borrowed and must outlive the reader; it is called on the thread that calls
  // Write/Finish only.
  Qcow2StreamReader(VirtualDiskSink& sink, Qcow2StreamOptions options, HeaderFn on_header);
  ~Qcow2StreamReader() override;  // stops the inflating threads (queued work is dropped)
  Qcow2StreamReader(const Qcow2StreamReader&) = delete;
  Qcow2StreamReader& operator=(const Qcow2StreamReader&) = delete;

  // `total`: the file's length when known (a file, a download's Content-Length): placement and
  // truncation are then refused as soon as the tables show them.
  Status Start(std::optional<uint64_t> total) override;
  // The file's next bytes. Errors: kUnsupported/kInvalid (the image), kTooBig (the budget),
  // the sink's and the header callback's errors unchanged. After an error the reader takes no
  // more bytes (every later call returns the same error).
  Status Write(std::span<const uint8_t> bytes) override;
  // The file ended: checks what only the end can show (above), writes the last clusters and
  // returns the virtual size; every byte of [0, virtual size) was given to the sink exactly once.
  Result<uint64_t> Finish();

  // What the header said, and once Finish succeeded the byte counts of the map.
  const Qcow2Info& info() const { return info_; }
  // The most bytes held at once (see above), for tests and the benchmark.
  uint64_t memory_peak() const { return peak_; }

  // Bytes charged for each need, waiting segment or pending table (a map node and its fields).
  static constexpr uint64_t kNodeCost = 96;

 private:
  struct DataNeed {
    uint64_t length = 0;
    uint64_t virt = 0;    // of the need's first byte still to come
    uint64_t origin = 0;  // of the first piece the need was made of (for the truncation message)
  };
  struct CompressedNeed {
    uint64_t virt = 0;    // the cluster's virtual offset
    uint64_t length = 0;  // bytes of the virtual disk (less than a cluster at the disk's end)
    uint64_t compressed_length = 0;
    std::vector<uint8_t> bytes;  // gathered so far
    uint64_t host = 0;
    bool short_input = false;  // see InflateJob
  };
  struct PendingL2 {
    uint64_t l1_index = 0;
    std::vector<uint8_t> bytes;
  };
  struct InflateJob {
    uint64_t host = 0;
    bool short_input = false;  // the end of its sectors was used by another mapping
    uint64_t consumed = 0;     // input bytes the stream took, when it inflated
    uint64_t virt = 0;
    uint64_t length = 0;
    std::vector<uint8_t> in;
    std::vector<uint8_t> out;
    uint64_t charged = 0;  // budget bytes to give back when written
    Status status;
  };
  class Pool;

  Status Fail(Status s);
  Status Charge(uint64_t n);
  void Release(uint64_t n);
  Status OpenHeader(bool at_end);
  Status Pass(uint64_t offset, std::span<const uint8_t> bytes);
  uint64_t NextBoundary(uint64_t q, uint64_t end) const;
  Status ProcessSpan(uint64_t q, std::span<const uint8_t> bytes);
  Status ServeData(uint64_t q, std::span<const uint8_t> bytes,
                   std::vector<std::pair<uint64_t, uint64_t>>& used);
  Status ServeCompressed(uint64_t q, std::span<const uint8_t> bytes,
                         std::vector<std::pair<uint64_t, uint64_t>>& used);
  Status Retain(uint64_t q, std::span<const uint8_t> bytes,
                const std::vector<std::pair<uint64_t, uint64_t>>& used);
  Status Completions();
  Status ProcessL1();
  Status FeedL2(uint64_t host, PendingL2& t, uint64_t q, std::span<const uint8_t> bytes);
  Status DecodeL2(uint64_t host, PendingL2& t);
  Status AddPiece(uint64_t offset, const Qcow2Piece& p);
  Status AddData(uint64_t host, uint64_t length, uint64_t virt);
  Status AddCompressed(uint64_t host, uint64_t clen, uint64_t virt, uint64_t length);
  Status Dispatch(CompressedNeed need);
  Status ZeroRun(uint64_t virt, uint64_t length);
  Status FlushZeros();
  Status GiveData(uint64_t virt, std::span<const uint8_t> bytes);
  // Calls fn(offset, bytes) for the retained bytes in [begin, end) and returns how many there
  // were; those also inside `drop` are then dropped (they were used), their memory released.
  template <typename Fn>
  uint64_t FromRetained(uint64_t begin, uint64_t end, std::pair<uint64_t, uint64_t> drop, Fn&& fn);
  // Drops the retained bytes in [begin, end), keeping what is left of a piece on either side.
  void DropRetained(uint64_t begin, uint64_t end);
  void DropRetained();
  // Where the last sector of a compressed stream at `host` begins: the next stream may start
  // there, and which of its bytes are this one's is known once it has inflated.
  static uint64_t LastSector(uint64_t host, uint64_t compressed_length);
  Status FeedSnapshots(uint64_t q, std::span<const uint8_t> bytes);
  Status FeedBitmaps(uint64_t q, std::span<const uint8_t> bytes);
  Status ParseBitmapDirectory();
  Status CheckPassedBitmapTables();
  Status FinishTruncation();
  Status DrainPool(bool all);

  VirtualDiskSink& sink_;
  const Qcow2StreamOptions options_;
  HeaderFn on_header_;
  Status error_;

  std::optional<uint64_t> total_;
  uint64_t pos_ = 0;       // file bytes received
  uint64_t frontier_ = 0;  // file bytes fully processed (everything below is used or waiting)
  uint64_t used_ = 0, peak_ = 0;

  // Before the header is checked.
  std::vector<uint8_t> head_;
  bool opened_ = false;
  Qcow2Opened open_;
  Qcow2Info info_;
  Qcow2Geometry g_;

  // The L1 table (only the entries that cover the disk).
  std::vector<uint8_t> l1_;
  uint64_t l1_begin_ = 0, l1_end_ = 0;
  bool l1_done_ = false;
  bool all_l2_seen_ = false;

  std::map<uint64_t, PendingL2> l2_;                    // by host offset
  std::map<uint64_t, DataNeed> data_;                   // by host offset; never overlapping
  std::multimap<uint64_t, CompressedNeed> compressed_;  // by host offset; may overlap
  uint64_t max_compressed_ = 0;                         // longest compressed stream registered
  std::map<uint64_t, std::vector<uint8_t>> retained_;   // waiting bytes by file offset

  uint64_t zero_begin_ = 0, zero_end_ = 0;  // a run of zeros not yet given to the sink
  uint64_t given_ = 0;                      // virtual bytes given to the sink

  // The snapshot table walk.
  uint32_t snapshot_index_ = 0;
  uint64_t snapshot_pos_ = 0;
  uint8_t snapshot_entry_[kQcow2SnapshotHeaderSize] = {};
  uint64_t snapshot_filled_ = 0;

  // Persistent bitmaps.
  std::vector<uint8_t> bitmap_dir_;  // the directory's bytes gathered so far
  bool bitmap_dir_parsed_ = false;
  std::vector<Qcow2BitmapTable> bitmap_tables_;
  // Per file cluster passed before the directory: the first 8-byte word that would be an invalid
  // bitmap table entry (UINT32_MAX: none), and its value.
  std::vector<uint32_t> bad_word_;
  std::vector<uint64_t> bad_value_;
  uint8_t carry_[8] = {};
  uint64_t carry_filled_ = 0;

  std::unique_ptr<Pool> pool_;
};

}  // namespace byoi
