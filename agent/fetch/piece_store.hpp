// Where the download engine (download.hpp) puts the pieces it receives, and who takes the complete
// prefix of the image in order. Two stores, one engine:
//   - RamStore (FetchImage): the ImageBuffer is the window: each piece is written at its offset in
//     the memfd, and the hasher reads the prefix from the memfd (pread) as it grows;
//   - RingStore (FetchStream): a ring of `window` bytes holds the pieces that arrived ahead of the
//     prefix; the prefix goes to the hasher and the ByteSink in order, and its room is reused.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>

#include "agent/base/aligned_buffer.hpp"
#include "agent/base/byte_sink.hpp"
#include "agent/base/loans.hpp"
#include "agent/base/status.hpp"
#include "agent/fetch/hasher.hpp"
#include "agent/image/image_buffer.hpp"

namespace byoi {

class PieceStore {
 public:
  virtual ~PieceStore() = default;

  // The largest body this store can take (RAM: the budget; a stream: no limit of its own).
  virtual uint64_t capacity() const = 0;
  // The RAM ahead of the prefix that pieces may fill (a ring's size); 0: no such limit (RAM).
  virtual uint64_t window() const = 0;
  // Where the room for a piece that is not the first unfinished one ends: a new such piece must
  // end there or before (RAM: capacity(); a ring: the oldest byte not yet taken + its window).
  virtual uint64_t limit() const = 0;
  // Bytes that can be written from `offset` now (0 when offset >= limit()).
  uint64_t RoomAt(uint64_t offset) const { return offset < limit() ? limit() - offset : 0; }

  // Stores bytes at `offset`. REQUIRES: bytes.size() <= RoomAt(offset). Errors (kIo: the
  // machine ran out of RAM) are the store's.
  virtual Status Write(uint64_t offset, std::span<const uint8_t> bytes) = 0;
  // Every byte before `prefix` is stored (prefix never goes back, except through StartOver):
  // they are hashed, and a stream's sink gets them, in batches, or all of them when `flush`.
  // `total` is the body's length when known (for ByteSink::Start). Errors are the sink's, to be
  // returned as they are.
  virtual Status Advance(uint64_t prefix, std::optional<uint64_t> total, bool flush) = 0;
  // True unless bytes went to a sink already: then the download cannot start over at byte 0.
  virtual bool CanStartOver() const = 0;
  // Forgets every byte (the hasher's too). REQUIRES: CanStartOver().
  virtual void StartOver() = 0;
  // Bytes given to the sink; RAM: bytes hashed.
  virtual uint64_t taken() const = 0;
};

// FetchImage's store. `image` and `hasher` must outlive it; its destructor waits for the hasher,
// which reads the memfd and the store's blocks.
//
// The bytes that extend the prefix (all of them with one connection) are gathered into 1 MiB
// blocks; each block is written into the image while the hasher's thread hashes the same block,
// hot in cache (hashing the mapping instead costs a third more CPU: page faults and cold lines).
// A piece that arrives ahead of the prefix is written at its offset at once, and hashed from the
// memfd (pread) when the prefix reaches it; so are the prefix's bytes while no block is free
// (the hasher is behind): the download never waits for the hasher.
class RamStore : public PieceStore {
 public:
  RamStore(ImageBuffer& image, StreamHasher& hasher);
  RamStore(const RamStore&) = delete;
  RamStore& operator=(const RamStore&) = delete;
  ~RamStore() override { hasher_.Wait(); }

  uint64_t capacity() const override { return image_.capacity(); }
  uint64_t window() const override { return 0; }
  uint64_t limit() const override { return image_.capacity(); }
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override;
  // Errors: the image's (kIo, no message: RAM ran out).
  Status Advance(uint64_t prefix, std::optional<uint64_t> total, bool flush) override;
  bool CanStartOver() const override { return true; }
  void StartOver() override;
  uint64_t taken() const override { return hashed_; }

 private:
  static constexpr size_t kBlock = 1 << 20;
  static constexpr size_t kBlocks = 8;

  // Writes the current block at hashed_ while the hasher hashes it, and moves to the next block
  // (Write fills it only once the hasher is done with it).
  Status StoreBlock();

  ImageBuffer& image_;
  StreamHasher& hasher_;
  std::array<std::unique_ptr<uint8_t[]>, kBlocks> blocks_;
  std::array<uint64_t, kBlocks> tickets_{};  // the hasher's ticket of each block's bytes
  size_t current_ = 0;
  size_t fill_ = 0;      // bytes in blocks_[current_]: the body's bytes from hashed_ on
  uint64_t hashed_ = 0;  // handed to the hasher
};

// FetchStream's store. `sink`, `hasher` and `loans` must outlive it. Memory: the ring, `window`
// bytes, allocated at Create (aligned for O_DIRECT) and committed by the kernel as it is first
// written.
//
// The prefix goes to the sink in 1 MiB blocks while the hasher's thread hashes the same blocks:
// the download does not wait for the hasher (SHA-256 costs about as much CPU as receiving the
// bytes). With `loans`, the ring's bytes are lent to the stages after the sink (the stream writer
// writes them to the disk from the ring). A block's room is reused only once the hasher and every
// borrower are done with it; the destructor waits for both.
class RingStore : public PieceStore {
 public:
  // `window` > 0. kIo when the ring cannot be allocated. `loans` may be null (nothing lent).
  static Result<std::unique_ptr<RingStore>> Create(uint64_t window, ByteSink& sink,
                                                   StreamHasher& hasher, Loans* loans);
  RingStore(const RingStore&) = delete;
  RingStore& operator=(const RingStore&) = delete;
  ~RingStore() override;

  uint64_t capacity() const override { return kUnlimited; }
  uint64_t window() const override { return window_; }
  uint64_t limit() const override;
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override;
  Status Advance(uint64_t prefix, std::optional<uint64_t> total, bool flush) override;
  bool CanStartOver() const override { return !started_; }
  void StartOver() override;
  uint64_t taken() const override { return taken_; }

 private:
  static constexpr uint64_t kUnlimited = ~uint64_t{0};
  RingStore(uint64_t window, AlignedBuffer ring, ByteSink& sink, StreamHasher& hasher, Loans* loans)
      : window_(window), ring_(std::move(ring)), sink_(sink), hasher_(hasher), loans_(loans) {}
  const uint64_t window_;
  AlignedBuffer ring_;  // byte o of the body is at ring_[o % window_]
  ByteSink& sink_;
  StreamHasher& hasher_;
  Loans* const loans_;
  struct Given {
    uint64_t start;   // the block's first byte
    uint64_t ticket;  // the hasher's
    uint64_t mark;    // the loans taken until the sink returned
  };
  // True once the hasher and every borrower are done with the block.
  bool Done(const Given& g) const;
  uint64_t taken_ = 0;  // bytes given to the sink; their room is free once hashed and returned
  // Blocks given to the sink that the hasher or a borrower may still read, oldest first
  // (limit() drops the finished ones).
  mutable std::deque<Given> given_;
  bool started_ = false;  // ByteSink::Start was called
  bool failed_ = false;   // the sink refused: it gets no further call
};

}  // namespace byoi
