// The writer of stream mode (docs/pipeline.md, "Write modes"): the virtual disk arrives while the
// image is still downloading, as pieces of data and ranges of zeros at any offset and in any order
// (a qcow2 whose clusters are out of order), and goes to the Target as it comes, with bounded
// memory.
//
// How: contiguous pieces are gathered into chunk buffers (chunk_size) that worker threads write
// with O_DIRECT, several at a time. Whole blocks of zeros, whether given as zeros or as bytes (a
// raw image's free space, lent or gathered), are not written: each run of them that follows on
// becomes one zeroing request (BLKZEROOUT, fallocate) of up to 256 MiB. A piece of whole aligned
// blocks whose bytes are lent (options.loans: a download's window) is written from where it is,
// without a copy. The bytes of a piece that do not fill whole blocks of the target's alignment wait
// in a small per-block buffer until the rest of the block arrives. Memory: the chunk buffers
// (threads + 2) × chunk, committed as they are first used, the held-back first MiB, and the blocks
// still partial.
//
// Safety order: the first MiB of the virtual disk (boot code, the protective MBR, the primary
// partition table) is held back in RAM and written only by Commit(), which the runner calls after
// the whole image arrived and its checksum matched. Until then the disk never holds a partition
// table of the new image, so a failed or interrupted job leaves nothing that boots. The writer
// never wipes anything itself: on failure the caller zeroes the disk's ends (docs/pipeline.md).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/aligned_buffer.hpp"
#include "agent/base/cancel.hpp"
#include "agent/base/loans.hpp"
#include "agent/base/status.hpp"
#include "agent/disk/target.hpp"
#include "agent/disk/zero_runs.hpp"
#include "agent/image/virtual_disk_sink.hpp"

namespace byoi {

struct StreamWriteOptions {
  // The image's format name for the catalogue message "Can't write <type> on disk.".
  std::string image_type = "raw";
  // Bytes gathered per write; a multiple of 1 MiB. Default 4 MiB.
  uint64_t chunk_size = 4ull << 20;
  // Writes in flight (one worker thread each); 0 means max(4, number of cores).
  unsigned threads = 0;
  // Bytes at the start of the virtual disk held back until Commit(); a multiple of the target's
  // alignment.
  uint64_t hold_bytes = 1ull << 20;
  // Keep a CRC-32 of every write, so that VerifyWritten() can read the disk back.
  bool verify_written = false;
  // Bytes lent by the stage that gives them (loans.hpp): a piece inside the lent region is written
  // from there, and its loan returned once written. Null: every piece is copied. Must outlive the
  // writer.
  Loans* loans = nullptr;
};

struct StreamWriteStats {
  uint64_t bytes_written = 0;  // data written (held-back bytes included once committed)
  uint64_t bytes_zeroed = 0;   // zeroed by the device or file system (or their fallback)
  uint64_t zero_requests = 0;  // the zeroing requests that did it
};

class StreamWriter : public VirtualDiskSink {
 public:
  // Starts the workers. `target` and `cancel` are borrowed and must outlive the writer.
  // `virtual_size` is the virtual disk's size when known (a qcow2 header, a raw image's length),
  // else 0 (a compressed raw image: its size is known at the end). kTooBig with
  // msg::ImageLargerThanDisk when a known size exceeds the target.
  static Result<std::unique_ptr<StreamWriter>> Create(Target& target, uint64_t virtual_size,
                                                      StreamWriteOptions options,
                                                      const CancelToken& cancel);
  // Stops the workers (what is queued is dropped if Flush was not called).
  ~StreamWriter() override;
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // The virtual disk's bytes at [offset, offset + bytes.size()), copied before return unless lent
  // (options.loans). Pieces must not overlap each other or zero ranges. Blocks while every chunk
  // buffer is in flight. Errors: kTooBig (msg::ImageLargerThanDisk) when the piece passes the
  // target's end; the first error of an earlier write (kIo), or kCancelled. Single-threaded: one
  // caller at a time.
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override;
  // [offset, offset + length) of the virtual disk reads as zeros. Errors as Write.
  Status Zero(uint64_t offset, uint64_t length) override;

  // The stream ended; the virtual disk is [0, virtual_size). Writes what is gathered, waits for
  // every write, and fdatasyncs; the held-back bytes stay in RAM. kInternal when a byte of the
  // virtual disk was never given (a converter bug: nothing may be skipped), kTooBig as Write.
  Status Flush(uint64_t virtual_size);
  // Writes the held-back first bytes and fdatasyncs: the disk is complete. REQUIRES: Flush
  // succeeded and the image is verified.
  Status Commit();
  // Reads every written range back with O_DIRECT (bypassing the page cache) and compares it with
  // the CRC-32 kept when it was written (zeros for zeroed ranges). kIo with the first differing
  // range's offset in detail. REQUIRES: verify_written, Commit succeeded.
  Status VerifyWritten(const ProgressFn& progress);

  // The held-back first bytes of the virtual disk (the partition table is there), for checks
  // before Commit. Complete once Flush succeeded.
  std::span<const uint8_t> held() const { return held_; }
  // Bytes of the virtual disk given so far (Write and Zero), for progress.
  uint64_t bytes_accepted() const { return accepted_; }
  StreamWriteStats stats() const;

 private:
  struct Job {
    bool zero = false;
    uint64_t offset = 0;
    uint64_t length = 0;
    const uint8_t* data = nullptr;
    int buffer = -1;        // index into buffers_, shared until its last job is done; -1: none
    uint64_t loan = 0;      // `data` is lent (Loans::Borrow), returned when written; 0: none
    bool buffered = false;  // through the page cache (the unaligned end of the virtual disk)
    std::unique_ptr<AlignedBuffer> owned;  // a completed partial block
  };
  struct Partial {
    AlignedBuffer bytes;
    uint64_t filled = 0;
  };
  struct Record {
    uint64_t offset = 0;
    uint64_t length = 0;
    bool zero = false;
    uint32_t crc = 0;
  };

  StreamWriter(Target& target, uint64_t virtual_size, StreamWriteOptions options,
               const CancelToken& cancel);
  Status CheckFits(uint64_t end) const;
  Status Healthy();
  // Takes the bytes of [offset, offset + n) that fall in the held-back range; returns how many of
  // the piece's first bytes it took.
  uint64_t TakeHeld(uint64_t offset, const uint8_t* data, uint64_t n);
  // Zeroes the whole blocks [begin, end), joined to the pending run when it continues it: a raw
  // image's run of zeros arrives as many blocks and becomes one request per kMaxZeroRequest.
  Status ZeroBlocks(uint64_t begin, uint64_t end);
  Status QueueZeros(const std::vector<ZeroRuns::Request>& due);
  Status AppendRun(uint64_t offset, const uint8_t* data, uint64_t n);
  Status DispatchRun();
  // Image bytes [offset, offset + n), whole blocks at an aligned address: their holes (FindHoles)
  // join the zero runs, the rest is queued from where it is, each job holding a share of
  // `buffer`, or a loan when it is -1 (the bytes are lent).
  Status QueueData(uint64_t offset, const uint8_t* data, uint64_t n, int buffer);
  Status AddPartial(uint64_t offset, const uint8_t* data, uint64_t n);
  Status Enqueue(Job job);
  Result<int> TakeBuffer();
  void WorkerLoop();
  // Writes (or zeroes) the job's range; returns the bytes written, for Target::Written.
  Result<uint64_t> RunJob(const Job& job);
  // Gives the job's buffer and loan back. REQUIRES: mu_ held.
  void ReleaseLocked(Job& job);
  // A chunk buffer goes back to the pool once its last user let it go. REQUIRES: mu_ held.
  void ReleaseBufferLocked(int buffer);
  void Remember(uint64_t offset, uint64_t length, bool zero, const uint8_t* data);
  Status WaitIdle();

  Target& target_;
  uint64_t virtual_size_;
  const StreamWriteOptions options_;
  const CancelToken& cancel_;
  const uint64_t align_;
  const uint64_t chunk_;

  // Held-back first bytes.
  std::vector<uint8_t> held_;
  uint64_t held_filled_ = 0;
  bool committed_ = false;

  // The run being gathered (converter's thread only).
  int run_buffer_ = -1;
  uint64_t run_base_ = 0;  // the buffer's first byte is this virtual offset (aligned)
  uint64_t run_begin_ = 0, run_end_ = 0;
  ZeroRuns zeros_{1};                     // whole blocks to zero, not queued yet
  std::map<uint64_t, Partial> partials_;  // by block index
  uint64_t accepted_ = 0;

  // Shared with the workers.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a job was queued, or stopping
  std::condition_variable done_cv_;  // a job ended (a buffer came back, the queue drained)
  std::vector<AlignedBuffer> buffers_;
  std::vector<int> free_buffers_;
  std::vector<int> buffer_users_;  // by buffer: queued jobs, and the run while it is dispatched
  std::deque<Job> queue_;
  unsigned busy_ = 0;
  bool stopping_ = false;
  Status error_;
  StreamWriteStats stats_;
  std::vector<Record> records_;
  std::vector<std::thread> workers_;
};

}  // namespace byoi
