#include "agent/fetch/piece_store.hpp"

#include <algorithm>
#include <cstring>
#include <new>

#include "agent/base/units.hpp"

namespace byoi {

namespace {

// The prefix goes to the hasher (and a sink) 1 MiB at a time: a hand-over to the hasher's thread
// costs more than hashing a few KiB (hasher.hpp), and a sink writes large blocks best.
constexpr uint64_t kBatch = 1 << 20;
// The ring's alignment: O_DIRECT's rule on every device and file system.
constexpr size_t kRingAlignment = 4096;

}  // namespace

RamStore::RamStore(ImageBuffer& image, StreamHasher& hasher) : image_(image), hasher_(hasher) {
  // Not value-initialised: the kernel commits a block's pages as they are first written, so a
  // small body (a .torrent) costs a page, not 8 MiB of zeroing and copying.
  for (auto& block : blocks_) block.reset(new uint8_t[kBlock]);
}

Status RamStore::Write(uint64_t offset, std::span<const uint8_t> bytes) {
  // Only the first unfinished piece writes right after the gathered bytes: every other piece
  // starts past the prefix. When the hasher still reads the next block (it may be hashing a
  // long run of pieces from the mapping), the bytes go straight into the image and are hashed
  // from there later: the download never waits for the hasher.
  while (!bytes.empty() && offset == hashed_ + fill_ &&
         (fill_ > 0 || hasher_.Done(tickets_[current_]))) {
    const size_t n = std::min(bytes.size(), kBlock - fill_);
    std::memcpy(blocks_[current_].get() + fill_, bytes.data(), n);
    fill_ += n;
    offset += n;
    bytes = bytes.subspan(n);
    if (fill_ == kBlock) BYOI_RETURN_IF_ERROR(StoreBlock());
  }
  return bytes.empty() ? Status::Ok() : image_.WriteAt(offset, bytes);
}

Status RamStore::StoreBlock() {
  std::span<const uint8_t> block(blocks_[current_].get(), fill_);
  tickets_[current_] = hasher_.Update(block);
  Status s = image_.WriteAt(hashed_, block);
  hashed_ += fill_;
  fill_ = 0;
  current_ = (current_ + 1) % kBlocks;
  return s;
}

Status RamStore::Advance(uint64_t prefix, std::optional<uint64_t>, bool flush) {
  if (prefix > hashed_ + fill_) {
    // Pieces written at their offsets joined the prefix: the gathered bytes come before them.
    if (fill_ > 0) BYOI_RETURN_IF_ERROR(StoreBlock());
    if (flush || prefix - hashed_ >= kBatch) {
      // These bytes stay unchanged until StartOver, which waits for the hasher first: no ticket
      // to wait for here.
      (void)hasher_.UpdateFromFile(image_.fd(), hashed_, prefix - hashed_);
      hashed_ = prefix;
    }
  }
  if (flush && fill_ > 0) BYOI_RETURN_IF_ERROR(StoreBlock());
  return Status::Ok();
}

void RamStore::StartOver() {
  hasher_.Reset();
  image_.Truncate(0);
  fill_ = 0;
  hashed_ = 0;
}

Result<std::unique_ptr<RingStore>> RingStore::Create(uint64_t window, ByteSink& sink,
                                                     StreamHasher& hasher, Loans* loans) {
  // Not value-initialised: the kernel commits the ring's pages as they are first written. Aligned
  // for O_DIRECT on any device: a borrower writes blocks to the disk from here.
  std::optional<AlignedBuffer> ring =
      AlignedBuffer::TryUninitialized(static_cast<size_t>(window), kRingAlignment);
  if (!ring) {
    return Status::Error(Code::kIo,
                         "allocating the download window of " + HumanBytes(window) + " in RAM");
  }
  if (loans != nullptr) loans->Open({ring->data(), ring->size()});
  return std::unique_ptr<RingStore>(new RingStore(window, std::move(*ring), sink, hasher, loans));
}

RingStore::~RingStore() {
  hasher_.Wait();
  if (loans_ != nullptr) loans_->Close();
}

Status RingStore::Write(uint64_t offset, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    const uint64_t at = offset % window_;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size(), window_ - at));
    std::memcpy(ring_.data() + at, bytes.data(), n);
    offset += n;
    bytes = bytes.subspan(n);
  }
  return Status::Ok();
}

Status RingStore::Advance(uint64_t prefix, std::optional<uint64_t> total, bool flush) {
  if (failed_) return Status::Ok();
  auto due = [&] { return prefix - taken_ >= kBatch || (flush && prefix > taken_); };
  if (!started_ && (flush || due())) {
    started_ = true;
    if (Status s = sink_.Start(total); !s.ok()) {
      failed_ = true;
      return s;
    }
  }
  while (due()) {
    const uint64_t at = taken_ % window_;
    const uint64_t n = std::min({prefix - taken_, kBatch, window_ - at});
    // The hasher reads the block on its thread while the sink takes it here and the download
    // goes on; the block's room is reused once the hasher is done (limit()).
    std::span<const uint8_t> block(ring_.data() + at, static_cast<size_t>(n));
    const uint64_t ticket = hasher_.Update(block);
    if (Status s = sink_.Write(block); !s.ok()) {
      failed_ = true;
      return s;
    }
    const uint64_t mark = loans_ != nullptr ? loans_->Mark() : 0;
    if (ticket != 0 || mark != 0)
      given_.push_back({.start = taken_, .ticket = ticket, .mark = mark});
    taken_ += n;
  }
  if (flush) {
    // The window is full (or the body ended): room is needed now. The oldest lent block's is
    // enough; waiting for every write would leave the disk idle until the ring refills.
    hasher_.Wait();
    if (loans_ != nullptr && limit() <= prefix && !given_.empty()) {
      loans_->WaitReturned(given_.front().mark);
    }
  }
  return Status::Ok();
}

bool RingStore::Done(const Given& g) const {
  return hasher_.Done(g.ticket) && (loans_ == nullptr || loans_->Returned(g.mark));
}

uint64_t RingStore::limit() const {
  while (!given_.empty() && Done(given_.front())) given_.pop_front();
  return (given_.empty() ? taken_ : given_.front().start) + window_;
}

void RingStore::StartOver() {
  // Nothing reached the sink (CanStartOver), so nothing was lent either.
  hasher_.Reset();
  given_.clear();
}

}  // namespace byoi
