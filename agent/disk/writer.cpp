#include "agent/disk/writer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "agent/base/aligned_buffer.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/zero_runs.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

// Runs of zero chunks found in the image's bytes that wait for their neighbours: the workers find
// them out of order, a few chunks apart.
constexpr size_t kPendingZeroRuns = 16;
constexpr uint64_t kSourceAlignment = 4096;

struct Op {
  bool zero = false;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Visits the extents of [offset, offset + length) while `more` returns true.
Status VisitWhile(const ImageLayout& layout, uint64_t offset, uint64_t length,
                  const std::function<bool(const Extent&)>& more) {
  bool stopped = false;
  Status s = layout.ForEachExtent(offset, length, [&](const Extent& e) -> Status {
    if (more(e)) return Status::Ok();
    stopped = true;
    return Status::Error(Code::kCancelled, "stopped by the visitor");
  });
  return stopped ? Status::Ok() : s;
}

// Cuts [begin, end) (both aligned to the target) into write and zero operations as the workers
// ask for them: writes of at most a chunk, and zero runs, merged up to kMaxZeroRequest. A write
// stops where a run of the layout's zeros of kMinHole or more begins inside its chunk, so those
// zeros are zeroed, not written. Nothing is planned ahead, so memory does not grow with the disk.
// Thread-safe.
class Planner {
 public:
  Planner(const ImageLayout& layout, uint64_t begin, uint64_t end, uint64_t chunk, uint64_t align)
      : layout_(layout), end_(end), chunk_(chunk), align_(align), pos_(begin) {}

  // The next operation in disk order; false when everything has been handed out.
  Result<bool> Next(Op* op) {
    std::lock_guard lock(mu_);
    if (pos_ >= end_) return false;
    const uint64_t next = std::min(end_, pos_ + chunk_);
    // The first zero extent in this chunk with kMinHole or more on the target's grid.
    uint64_t zero_begin = next, zero_end = next;
    BYOI_RETURN_IF_ERROR(VisitWhile(layout_, pos_, next - pos_, [&](const Extent& e) {
      if (e.kind != Extent::Kind::kZero) return true;
      const uint64_t b = AlignUp(e.offset, align_), z = e.offset + e.length;
      if (AlignDown(z, align_) < b + kMinHole) return true;
      zero_begin = b;
      zero_end = z;
      return false;
    }));
    if (zero_begin > pos_) {
      *op = {false, pos_, zero_begin - pos_};  // data up to the zeros (or the whole chunk)
    } else {
      if (zero_end >= next) {
        // Zeros to the chunk's end: follow them up to the largest zeroing request.
        const uint64_t cap = std::min(end_, pos_ + std::max(chunk_, kMaxZeroRequest));
        if (next < cap) {
          BYOI_RETURN_IF_ERROR(VisitWhile(layout_, next, cap - next, [&](const Extent& e) {
            if (e.kind != Extent::Kind::kZero) return false;
            zero_end = e.offset + e.length;
            return true;
          }));
        }
      }
      const uint64_t stop = zero_end >= end_ ? end_ : AlignDown(zero_end, align_);
      *op = {true, pos_, stop - pos_};
    }
    pos_ = op->offset + op->length;
    return true;
  }

 private:
  const ImageLayout& layout_;
  const uint64_t end_, chunk_, align_;
  std::mutex mu_;
  uint64_t pos_;
};

class Writer {
 public:
  Writer(const ImageLayout& layout, Target& target, const WriteOptions& options,
         const CancelToken& cancel)
      : layout_(layout), target_(target), options_(options), cancel_(cancel) {}

  Result<WriteStats> Run(const ProgressFn& progress);

 private:
  struct Worker {
    explicit Worker(const ImageLayout& layout, size_t buffer_size)
        : reader(layout), buffer_size(buffer_size) {}
    // Made at the first chunk that needs it: a raw image's chunks are written from the image
    // itself, and zeroing (faulting in) a buffer per worker cost a 24 MiB deploy a quarter of its
    // CPU.
    uint8_t* Buffer() {
      if (buffer.size() == 0) buffer = AlignedBuffer(buffer_size, kSourceAlignment);
      return buffer.data();
    }
    VirtualReader reader;
    size_t buffer_size;
    AlignedBuffer buffer;
  };

  Status RunOp(const Op& op, Worker& w);
  // Image bytes at an aligned offset and address, to the disk.
  Status WriteData(uint64_t offset, const uint8_t* src, uint64_t length);
  Status Zero(const ZeroRuns::Request& r);
  // A chunk of zeros (the layout's or the bytes') joins the pending runs next to it; what that
  // makes due is zeroed now (zero_runs.hpp).
  Status JoinZeros(const Op& op);
  // Zeroes what still waits (once no worker runs), reporting each request's progress.
  Status ZeroPending(const ProgressFn& progress);
  // Bytes on the disk: written, or zeroed by a request that returned. A chunk of zeros waiting in
  // a run is not done yet.
  uint64_t done() const { return written_.load() + zeroed_.load(); }
  void WorkerLoop(Worker& w);
  Status WriteTail(uint64_t offset);
  void SetError(Status s);
  Status Fail(Status cause);

  const ImageLayout& layout_;
  Target& target_;
  const WriteOptions& options_;
  const CancelToken& cancel_;

  std::unique_ptr<Planner> planner_;
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> zeroed_{0};
  std::atomic<uint64_t> zero_requests_{0};
  std::mutex zeros_mu_;
  ZeroRuns zero_runs_{kPendingZeroRuns};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  Status error_;
  unsigned running_ = 0;
};

void Writer::SetError(Status s) {
  std::lock_guard lock(mu_);
  if (error_.ok()) error_ = std::move(s);
  stop_ = true;
  cv_.notify_all();
}

// Zeroed by the device (write-zeroes, discard with zeroing) instead of moving the bytes.
Status Writer::Zero(const ZeroRuns::Request& r) {
  BYOI_RETURN_IF_ERROR(cancel_.Check());
  BYOI_RETURN_IF_ERROR(target_.ZeroRange(r.offset, r.length)
                           .Context(fmt::format("zeroing {:#x}+{:#x}", r.offset, r.length)));
  zeroed_ += r.length;
  ++zero_requests_;
  return Status::Ok();
}

Status Writer::JoinZeros(const Op& op) {
  std::vector<ZeroRuns::Request> due;
  {
    std::lock_guard lock(zeros_mu_);
    due = zero_runs_.Add(op.offset, op.offset + op.length);
  }
  for (const ZeroRuns::Request& r : due) BYOI_RETURN_IF_ERROR(Zero(r));
  return Status::Ok();
}

Status Writer::ZeroPending(const ProgressFn& progress) {
  for (const ZeroRuns::Request& r : zero_runs_.TakeAll()) {
    BYOI_RETURN_IF_ERROR(Zero(r));
    if (progress) progress(done(), layout_.virtual_size());
  }
  return Status::Ok();
}

Status Writer::RunOp(const Op& op, Worker& w) {
  if (op.zero) return JoinZeros(op);
  // One run of image bytes, suitably aligned: write it from the image buffer itself.
  const uint8_t* src = nullptr;
  BYOI_RETURN_IF_ERROR(VisitWhile(layout_, op.offset, op.length, [&](const Extent& e) {
    if (e.kind == Extent::Kind::kData && e.length == op.length &&
        reinterpret_cast<uintptr_t>(e.data) % kSourceAlignment == 0) {
      src = e.data;
    }
    return false;
  }));
  if (src == nullptr) {
    BYOI_RETURN_IF_ERROR(w.reader.Read(op.offset, {w.Buffer(), op.length}));
    src = w.buffer.data();
  }
  // Raw images and fully allocated qcow2 clusters carry runs of zeros: a file system's free space.
  uint64_t at = 0;
  for (const auto& [begin, end] : FindHoles({src, op.length}, kHoleBlock, kMinHole)) {
    BYOI_RETURN_IF_ERROR(WriteData(op.offset + at, src + at, begin - at));
    BYOI_RETURN_IF_ERROR(JoinZeros({true, op.offset + begin, end - begin}));
    at = end;
  }
  return WriteData(op.offset + at, src + at, op.length - at);
}

Status Writer::WriteData(uint64_t offset, const uint8_t* src, uint64_t length) {
  if (length == 0) return Status::Ok();
  BYOI_RETURN_IF_ERROR(PwriteAll(target_.fd(), {src, length}, offset));
  written_ += length;
  return target_.Written(length);
}

void Writer::WorkerLoop(Worker& w) {
  while (!stop_.load(std::memory_order_relaxed)) {
    Op op;
    Result<bool> more = planner_->Next(&op);
    if (!more.ok()) {
      SetError(std::move(more).status());
      break;
    }
    if (!*more) break;
    if (cancel_.cancelled()) {
      SetError(cancel_.Check());
      break;
    }
    Status s = RunOp(op, w);
    if (!s.ok()) {
      SetError(std::move(s));
      break;
    }
  }
  std::lock_guard lock(mu_);
  --running_;
  cv_.notify_all();
}

// The bytes past the last aligned offset, written through the page cache (the kernel does the
// read-modify-write of the partial sector).
Status Writer::WriteTail(uint64_t offset) {
  uint64_t n = layout_.virtual_size() - offset;
  if (n == 0) return Status::Ok();
  std::vector<uint8_t> bytes(n);
  VirtualReader reader(layout_);
  BYOI_RETURN_IF_ERROR(reader.Read(offset, bytes));
  BYOI_RETURN_IF_ERROR(PwriteAll(target_.buffered_fd(), bytes, offset)
                           .Context(fmt::format("writing the last {} bytes", n)));
  written_ += n;
  return Status::Ok();
}

// The disk holds a mix of old and new data; the runner makes it unbootable (docs/pipeline.md).
Status Writer::Fail(Status cause) {
  return std::move(cause).DefaultMessage(msg::CantWrite(options_.image_type));
}

Result<WriteStats> Writer::Run(const ProgressFn& progress) {
  auto t0 = std::chrono::steady_clock::now();
  const uint64_t vsize = layout_.virtual_size();
  if (target_.size() < vsize) {
    return Status::Error(
        Code::kTooBig,
        fmt::format("{} has {} bytes, the image {}", target_.path(), target_.size(), vsize),
        msg::ImageLargerThanDisk(vsize, target_.path(), target_.size()));
  }
  const uint64_t chunk = std::max(kMiB, options_.chunk_size / kMiB * kMiB);
  const uint64_t align = target_.alignment();
  const uint64_t aligned_end = AlignDown(vsize, align);
  const uint64_t head_end = std::min(kMiB, aligned_end);
  planner_ = std::make_unique<Planner>(layout_, head_end, aligned_end, chunk, align);
  if (progress) progress(0, vsize);

  // Writing begins here: from now on a failure wipes the first and last MiB.
  unsigned threads =
      options_.threads != 0 ? options_.threads : std::max(4u, std::thread::hardware_concurrency());
  const uint64_t chunks = (aligned_end - head_end + chunk - 1) / chunk;
  threads = static_cast<unsigned>(std::min<uint64_t>(threads, std::max<uint64_t>(chunks, 1)));
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> pool;
  running_ = threads;
  for (unsigned t = 0; t < threads; ++t) {
    workers.push_back(std::make_unique<Worker>(layout_, chunk));
  }
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([this, w = workers[t].get()] { WorkerLoop(*w); });
  }
  {
    std::unique_lock lock(mu_);
    while (running_ > 0) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (cancel_.cancelled() && error_.ok()) {
        error_ = cancel_.Check();
        stop_ = true;
      }
      if (progress) {
        lock.unlock();
        progress(done(), vsize);
        lock.lock();
      }
    }
  }
  for (auto& t : pool) t.join();
  if (!error_.ok()) return Fail(std::move(error_));

  // Everything but the first MiB is written; make it durable before the first MiB goes down.
  Status s = ZeroPending(progress);
  if (s.ok() && aligned_end >= kMiB) s = WriteTail(aligned_end);
  if (s.ok()) s = target_.Sync();
  Planner head(layout_, 0, head_end, chunk, align);
  while (s.ok()) {
    Op op;
    Result<bool> more = head.Next(&op);
    if (!more.ok()) s = std::move(more).status();
    if (!s.ok() || !*more) break;
    s = cancel_.Check();
    if (s.ok()) s = RunOp(op, *workers.front());
  }
  if (s.ok()) s = ZeroPending(progress);
  if (s.ok() && aligned_end < kMiB) s = WriteTail(aligned_end);
  if (s.ok()) s = target_.Sync();
  if (!s.ok()) return Fail(std::move(s));
  if (progress) progress(vsize, vsize);

  WriteStats stats;
  stats.bytes_written = written_.load();
  stats.bytes_zeroed = zeroed_.load();
  stats.zero_requests = zero_requests_.load();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace

Status ZeroDiskEnds(Target& target) {
  uint64_t wipe = std::min(kMiB, target.size());
  Status s = target.WriteZeros(0, wipe);
  if (s.ok()) s = target.WriteZeros(target.size() - wipe, wipe);
  if (s.ok()) s = target.Sync();
  return s;
}

Status VerifyImageWritten(const ImageLayout& layout, Target& target, const WriteOptions& options,
                          const ProgressFn& progress, const CancelToken& cancel) {
  const uint64_t vsize = layout.virtual_size();
  const uint64_t chunk = std::max(kMiB, options.chunk_size / kMiB * kMiB);
  const uint64_t align = target.alignment();
  AlignedBuffer disk(chunk, kSourceAlignment);
  std::vector<uint8_t> image(chunk);
  VirtualReader reader(layout);
  auto fail = [&](Status s) {
    return std::move(s).DefaultMessage(msg::CantWrite(options.image_type));
  };
  for (uint64_t pos = 0; pos < vsize;) {
    BYOI_RETURN_IF_ERROR(cancel.Check());
    const uint64_t n = std::min(chunk, vsize - pos);
    const uint64_t whole = AlignUp(n, align);
    // O_DIRECT reads whole blocks; the block holding the end of a file that ends inside it is read
    // through the page cache instead.
    const bool direct = pos + whole <= target.size();
    Status read = PreadAll(direct ? target.fd() : target.buffered_fd(),
                           {disk.data(), direct ? whole : n}, pos);
    if (!read.ok()) return fail(std::move(read).Context(fmt::format("reading back {:#x}", pos)));
    BYOI_RETURN_IF_ERROR(reader.Read(pos, {image.data(), n}));
    if (std::memcmp(disk.data(), image.data(), n) != 0) {
      uint64_t at = 0;
      while (disk.data()[at] == image[at]) ++at;
      return fail(Status::Error(
          Code::kIo, fmt::format("read-back: the disk differs from the image at {:#x}", pos + at)));
    }
    pos += n;
    if (progress) progress(pos, vsize);
  }
  return Status::Ok();
}

Result<WriteStats> WriteImage(const ImageLayout& layout, Target& target,
                              const WriteOptions& options, const ProgressFn& progress,
                              const CancelToken& cancel) {
  Writer writer(layout, target, options, cancel);
  return writer.Run(progress);
}

}  // namespace byoi
