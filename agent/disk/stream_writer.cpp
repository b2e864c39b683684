#include "agent/disk/stream_writer.hpp"

#include <fmt/format.h>
#include <libdeflate.h>

#include <algorithm>
#include <cstring>

#include "agent/base/bytes.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"

namespace byoi {
namespace {

// Zero ranges up to this size that continue the run being gathered are copied into it: short
// holes (qcow2 subclusters, small unallocated clusters) then cost no request of their own.
constexpr uint64_t kInlineZeros = kMiB;
// Buffers are aligned for O_DIRECT on any device and file system.
constexpr uint64_t kBufferAlignment = 4096;

const uint8_t* Zeros() {
  static const std::vector<uint8_t> zeros(kInlineZeros, 0);
  return zeros.data();
}

}  // namespace

StreamWriter::StreamWriter(Target& target, uint64_t virtual_size, StreamWriteOptions options,
                           const CancelToken& cancel)
    : target_(target),
      virtual_size_(virtual_size),
      options_(std::move(options)),
      cancel_(cancel),
      align_(target.alignment()),
      chunk_(std::max(kMiB, options_.chunk_size / kMiB * kMiB)),
      held_(options_.hold_bytes, 0) {}

Result<std::unique_ptr<StreamWriter>> StreamWriter::Create(Target& target, uint64_t virtual_size,
                                                           StreamWriteOptions options,
                                                           const CancelToken& cancel) {
  std::unique_ptr<StreamWriter> w(
      new StreamWriter(target, virtual_size, std::move(options), cancel));
  if (virtual_size != 0) BYOI_RETURN_IF_ERROR(w->CheckFits(virtual_size));
  unsigned threads = w->options_.threads != 0 ? w->options_.threads
                                              : std::max(4u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < threads + 2; ++i) {
    // Only bytes a piece put there are ever written from a chunk buffer.
    w->buffers_.push_back(AlignedBuffer::Uninitialized(w->chunk_, kBufferAlignment));
    w->free_buffers_.push_back(static_cast<int>(i));
  }
  w->buffer_users_.assign(w->buffers_.size(), 0);
  for (unsigned i = 0; i < threads; ++i)
    w->workers_.emplace_back([p = w.get()] { p->WorkerLoop(); });
  return w;
}

StreamWriter::~StreamWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (Job& job : queue_) ReleaseLocked(job);
    queue_.clear();
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

Status StreamWriter::CheckFits(uint64_t end) const {
  if (end <= target_.size()) return Status::Ok();
  uint64_t image = std::max(end, virtual_size_);
  return Status::Error(
      Code::kTooBig,
      fmt::format("{} has {} bytes, the image at least {}", target_.path(), target_.size(), image),
      msg::ImageLargerThanDisk(image, target_.path(), target_.size()));
}

Status StreamWriter::Healthy() {
  BYOI_RETURN_IF_ERROR(cancel_.Check());
  std::lock_guard lock(mu_);
  return error_;
}

uint64_t StreamWriter::TakeHeld(uint64_t offset, const uint8_t* data, uint64_t n) {
  if (offset >= held_.size()) return 0;
  uint64_t k = std::min<uint64_t>(n, held_.size() - offset);
  if (data != nullptr) std::memcpy(held_.data() + offset, data, k);
  held_filled_ += k;
  return k;
}

Status StreamWriter::Write(uint64_t offset, std::span<const uint8_t> bytes) {
  BYOI_RETURN_IF_ERROR(Healthy());
  BYOI_RETURN_IF_ERROR(CheckFits(offset + bytes.size()));
  accepted_ += bytes.size();
  uint64_t held = TakeHeld(offset, bytes.data(), bytes.size());
  offset += held;
  const uint8_t* data = bytes.data() + held;
  uint64_t n = bytes.size() - held;
  // Whole blocks of lent bytes, at an aligned offset and address, go to the disk from where they
  // are; the loan is returned once they are written.
  const uint64_t lent = AlignDown(n, align_);
  if (lent > 0 && options_.loans != nullptr && target_.direct() && offset % align_ == 0 &&
      reinterpret_cast<uintptr_t>(data) % align_ == 0 && options_.loans->Lends(data, lent)) {
    BYOI_RETURN_IF_ERROR(QueueData(offset, data, lent, -1));
    offset += lent;
    data += lent;
    n -= lent;
  }
  return n == 0 ? Status::Ok() : AppendRun(offset, data, n);
}

Status StreamWriter::Zero(uint64_t offset, uint64_t length) {
  BYOI_RETURN_IF_ERROR(Healthy());
  BYOI_RETURN_IF_ERROR(CheckFits(offset + length));
  accepted_ += length;
  uint64_t held = TakeHeld(offset, nullptr, length);  // held_ starts zeroed
  offset += held;
  length -= held;
  if (length == 0) return Status::Ok();
  if (run_buffer_ >= 0 && offset == run_end_ && length <= kInlineZeros) {
    return AppendRun(offset, Zeros(), length);
  }
  BYOI_RETURN_IF_ERROR(DispatchRun());
  const uint64_t end = offset + length;
  const uint64_t body_begin = std::min(AlignUp(offset, align_), end);
  const uint64_t body_end = std::max(body_begin, AlignDown(end, align_));
  for (uint64_t pos = offset; pos < body_begin;) {
    uint64_t k = std::min(body_begin - pos, kInlineZeros);
    BYOI_RETURN_IF_ERROR(AddPartial(pos, Zeros(), k));
    pos += k;
  }
  if (body_end > body_begin) BYOI_RETURN_IF_ERROR(ZeroBlocks(body_begin, body_end));
  for (uint64_t pos = body_end; pos < end;) {
    uint64_t k = std::min(end - pos, kInlineZeros);
    BYOI_RETURN_IF_ERROR(AddPartial(pos, Zeros(), k));
    pos += k;
  }
  return Status::Ok();
}

Status StreamWriter::ZeroBlocks(uint64_t begin, uint64_t end) {
  return QueueZeros(zeros_.Add(begin, end));
}

Status StreamWriter::QueueZeros(const std::vector<ZeroRuns::Request>& due) {
  for (const ZeroRuns::Request& r : due) {
    Job job;
    job.zero = true;
    job.offset = r.offset;
    job.length = r.length;
    BYOI_RETURN_IF_ERROR(Enqueue(std::move(job)));
  }
  return Status::Ok();
}

Status StreamWriter::AppendRun(uint64_t offset, const uint8_t* data, uint64_t n) {
  while (n > 0) {
    if (run_buffer_ >= 0 && offset == run_end_ && run_end_ < run_base_ + chunk_) {
      uint64_t k = std::min(n, run_base_ + chunk_ - run_end_);
      std::memcpy(buffers_[run_buffer_].data() + (run_end_ - run_base_), data, k);
      run_end_ += k;
      offset += k;
      data += k;
      n -= k;
      if (run_end_ == run_base_ + chunk_) BYOI_RETURN_IF_ERROR(DispatchRun());
      continue;
    }
    BYOI_RETURN_IF_ERROR(DispatchRun());
    BYOI_ASSIGN_OR_RETURN(run_buffer_, TakeBuffer());
    run_base_ = AlignDown(offset, align_);
    run_begin_ = run_end_ = offset;
  }
  return Status::Ok();
}

// Hands the gathered run to the workers: its whole blocks as one write straight from the chunk
// buffer (or to the zero run when they are all zeros), its partial first and last blocks to the
// per-block buffers.
Status StreamWriter::DispatchRun() {
  if (run_buffer_ < 0) return Status::Ok();
  const int buffer = std::exchange(run_buffer_, -1);
  const uint8_t* base = buffers_[buffer].data();
  const uint64_t head_end = std::min(AlignUp(run_begin_, align_), run_end_);
  const uint64_t body_end = std::max(head_end, AlignDown(run_end_, align_));
  const uint8_t* body = base + (head_end - run_base_);
  Status s = AddPartial(run_begin_, base + (run_begin_ - run_base_), head_end - run_begin_);
  if (s.ok() && body_end > head_end) s = QueueData(head_end, body, body_end - head_end, buffer);
  // Head, body, tail in order, so that zeros join. The tail is read after the body was queued:
  // this run still holds the buffer.
  if (s.ok()) s = AddPartial(body_end, base + (body_end - run_base_), run_end_ - body_end);
  std::lock_guard lock(mu_);
  ReleaseBufferLocked(buffer);
  done_cv_.notify_all();
  return s;
}

Status StreamWriter::QueueData(uint64_t offset, const uint8_t* data, uint64_t n, int buffer) {
  uint64_t at = 0;
  auto queue = [&](uint64_t end) {
    if (end == at) return Status::Ok();
    Job job;
    job.offset = offset + at;
    job.length = end - at;
    job.data = data + at;
    job.buffer = buffer;
    if (buffer < 0) job.loan = options_.loans->Borrow();
    return Enqueue(std::move(job));
  };
  for (const auto& [begin, end] : FindHoles({data, n}, kHoleBlock, kMinHole)) {
    BYOI_RETURN_IF_ERROR(queue(begin));
    BYOI_RETURN_IF_ERROR(ZeroBlocks(offset + begin, offset + end));
    at = end;
  }
  return queue(n);
}

Status StreamWriter::AddPartial(uint64_t offset, const uint8_t* data, uint64_t n) {
  while (n > 0) {
    const uint64_t block = offset / align_;
    const uint64_t block_start = block * align_;
    const uint64_t k = std::min(n, block_start + align_ - offset);
    auto [it, fresh] = partials_.try_emplace(block);
    if (fresh) it->second.bytes = AlignedBuffer(align_, kBufferAlignment);
    std::memcpy(it->second.bytes.data() + (offset - block_start), data, k);
    it->second.filled += k;
    if (it->second.filled == align_) {
      auto bytes = std::make_unique<AlignedBuffer>(std::move(it->second.bytes));
      partials_.erase(it);
      if (IsAllZero(bytes->data(), align_)) {
        BYOI_RETURN_IF_ERROR(ZeroBlocks(block_start, block_start + align_));
      } else {
        Job job;
        job.offset = block_start;
        job.length = align_;
        job.data = bytes->data();
        job.owned = std::move(bytes);
        BYOI_RETURN_IF_ERROR(Enqueue(std::move(job)));
      }
    }
    offset += k;
    data += k;
    n -= k;
  }
  return Status::Ok();
}

Result<int> StreamWriter::TakeBuffer() {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return !free_buffers_.empty() || !error_.ok(); });
  if (!error_.ok()) return error_;
  int b = free_buffers_.back();
  free_buffers_.pop_back();
  buffer_users_[b] = 1;  // the run gathered in it
  return b;
}

Status StreamWriter::Enqueue(Job job) {
  {
    std::lock_guard lock(mu_);
    if (job.buffer >= 0) ++buffer_users_[job.buffer];
    if (!error_.ok()) {
      ReleaseLocked(job);
      return error_;
    }
    queue_.push_back(std::move(job));
  }
  work_cv_.notify_one();
  return Status::Ok();
}

void StreamWriter::WorkerLoop() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping
    Job job = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    const bool skip = !error_.ok();
    lock.unlock();
    Result<uint64_t> written = skip ? Result<uint64_t>(uint64_t{0}) : RunJob(job);
    lock.lock();
    // The buffer and the loan come back before a flush of the device (Written) that may take
    // seconds: the converter and the download go on meanwhile.
    ReleaseLocked(job);
    done_cv_.notify_all();
    lock.unlock();
    Status s = written.ok() ? (*written > 0 ? target_.Written(*written) : Status::Ok())
                            : std::move(written).status();
    lock.lock();
    --busy_;
    if (!s.ok() && error_.ok()) error_ = std::move(s);
    done_cv_.notify_all();
  }
}

void StreamWriter::ReleaseLocked(Job& job) {
  if (job.buffer >= 0) ReleaseBufferLocked(std::exchange(job.buffer, -1));
  if (job.loan != 0) options_.loans->Return(std::exchange(job.loan, 0));
}

void StreamWriter::ReleaseBufferLocked(int buffer) {
  if (--buffer_users_[buffer] == 0) free_buffers_.push_back(buffer);
}

Result<uint64_t> StreamWriter::RunJob(const Job& job) {
  BYOI_RETURN_IF_ERROR(cancel_.Check());
  if (job.zero) {
    BYOI_RETURN_IF_ERROR(target_.ZeroRange(job.offset, job.length)
                             .Context(fmt::format("zeroing {:#x}+{:#x}", job.offset, job.length)));
    Remember(job.offset, job.length, true, nullptr);
    std::lock_guard lock(mu_);
    stats_.bytes_zeroed += job.length;
    ++stats_.zero_requests;
    return uint64_t{0};
  }
  int fd = job.buffered ? target_.buffered_fd() : target_.fd();
  BYOI_RETURN_IF_ERROR(PwriteAll(fd, {job.data, job.length}, job.offset)
                           .Context(fmt::format("writing {:#x}+{:#x}", job.offset, job.length)));
  Remember(job.offset, job.length, false, job.data);
  {
    std::lock_guard lock(mu_);
    stats_.bytes_written += job.length;
  }
  return job.length;
}

void StreamWriter::Remember(uint64_t offset, uint64_t length, bool zero, const uint8_t* data) {
  if (!options_.verify_written) return;
  Record r{offset, length, zero, 0};
  if (!zero) r.crc = libdeflate_crc32(0, data, length);
  std::lock_guard lock(mu_);
  records_.push_back(r);
}

Status StreamWriter::WaitIdle() {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return queue_.empty() && busy_ == 0; });
  return error_;
}

Status StreamWriter::Flush(uint64_t virtual_size) {
  if (virtual_size_ != 0 && virtual_size != virtual_size_) {
    return Status::Error(Code::kInternal, fmt::format("virtual size {} announced, {} at the end",
                                                      virtual_size_, virtual_size));
  }
  virtual_size_ = virtual_size;
  BYOI_RETURN_IF_ERROR(CheckFits(virtual_size));
  BYOI_RETURN_IF_ERROR(DispatchRun());
  if (held_.size() > virtual_size) held_.resize(virtual_size);
  // The last block of a virtual disk that ends between blocks goes through the page cache: the
  // bytes after the end are not ours.
  const uint64_t last_block = virtual_size / align_;
  if (virtual_size % align_ != 0 && virtual_size > held_.size()) {
    auto it = partials_.find(last_block);
    if (it != partials_.end() && it->second.filled == virtual_size - last_block * align_) {
      Job job;
      job.offset = last_block * align_;
      job.length = it->second.filled;
      job.buffered = true;
      job.owned = std::make_unique<AlignedBuffer>(std::move(it->second.bytes));
      job.data = job.owned->data();
      partials_.erase(it);
      BYOI_RETURN_IF_ERROR(Enqueue(std::move(job)));
    }
  }
  BYOI_RETURN_IF_ERROR(QueueZeros(zeros_.TakeAll()));
  if (!partials_.empty() || held_filled_ != held_.size() || accepted_ != virtual_size) {
    uint64_t where = partials_.empty() ? 0 : partials_.begin()->first * align_;
    return Status::Error(Code::kInternal,
                         fmt::format("{} of {} bytes of the virtual disk were given; the block at "
                                     "{:#x} is incomplete",
                                     accepted_, virtual_size, where));
  }
  BYOI_RETURN_IF_ERROR(WaitIdle());
  return target_.Sync();
}

Status StreamWriter::Commit() {
  BYOI_RETURN_IF_ERROR(cancel_.Check());
  const uint64_t n = held_.size();
  const uint64_t aligned = AlignDown(n, align_);
  AlignedBuffer head(std::max<uint64_t>(AlignUp(n, align_), align_), kBufferAlignment);
  std::memcpy(head.data(), held_.data(), n);
  if (aligned > 0) {
    BYOI_RETURN_IF_ERROR(
        PwriteAll(target_.fd(), {head.data(), aligned}, 0).Context("writing the first MiB"));
  }
  if (n > aligned) {
    BYOI_RETURN_IF_ERROR(
        PwriteAll(target_.buffered_fd(), {head.data() + aligned, n - aligned}, aligned)
            .Context("writing the end of the first MiB"));
  }
  Remember(0, n, false, head.data());
  {
    std::lock_guard lock(mu_);
    stats_.bytes_written += n;
  }
  BYOI_RETURN_IF_ERROR(target_.Sync());
  committed_ = true;
  return Status::Ok();
}

Status StreamWriter::VerifyWritten(const ProgressFn& progress) {
  std::vector<Record> records;
  {
    std::lock_guard lock(mu_);
    records = records_;
  }
  std::sort(records.begin(), records.end(),
            [](const Record& a, const Record& b) { return a.offset < b.offset; });
  uint64_t total = 0, done = 0;
  for (const Record& r : records) total += r.length;
  AlignedBuffer buf(chunk_, kBufferAlignment);
  for (const Record& r : records) {
    uint32_t crc = 0;
    // Every record starts on a block (whole blocks are what the workers write), so each piece
    // read here does too; the last one may end inside a block.
    for (uint64_t pos = r.offset; pos < r.offset + r.length;) {
      BYOI_RETURN_IF_ERROR(cancel_.Check());
      const uint64_t use = std::min<uint64_t>(r.offset + r.length - pos, chunk_);
      const uint64_t whole = AlignUp(use, align_);
      // O_DIRECT reads whole blocks; the block holding the end of a file that ends inside it is
      // read through the page cache instead.
      const bool direct = pos + whole <= target_.size();
      Status read = PreadAll(direct ? target_.fd() : target_.buffered_fd(),
                             {buf.data(), direct ? whole : use}, pos);
      if (!read.ok()) {
        return std::move(read)
            .Context(fmt::format("reading back {:#x}+{:#x}", pos, use))
            .DefaultMessage(msg::CantWrite(options_.image_type));
      }
      const uint8_t* p = buf.data();
      if (r.zero && !IsAllZero(p, use)) {
        return Status::Error(
            Code::kIo,
            fmt::format("read-back: {:#x}+{:#x} should read as zeros and does not", pos, use),
            msg::CantWrite(options_.image_type));
      }
      if (!r.zero) crc = libdeflate_crc32(crc, p, use);
      pos += use;
      done += use;
      if (progress) progress(done, total);
    }
    if (!r.zero && crc != r.crc) {
      return Status::Error(
          Code::kIo,
          fmt::format("read-back: {:#x}+{:#x} differs from what was written", r.offset, r.length),
          msg::CantWrite(options_.image_type));
    }
  }
  return Status::Ok();
}

StreamWriteStats StreamWriter::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace byoi
