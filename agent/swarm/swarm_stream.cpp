// StreamSwarm (swarm.hpp): stream mode through the swarm, the agent's side of the window that
// agent/swarm/stream_window.hpp keeps in the helper.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "agent/base/messages.hpp"
#include "agent/fetch/hasher.hpp"
#include "agent/swarm/swarm.hpp"

namespace byoi {

namespace {

// The sink takes the front in spans of at most this (the hasher's thread hashes one span while
// the sink converts and writes the same bytes).
constexpr uint64_t kSpan = 4 << 20;

// The memfd's read-only mapping: the helper writes pieces into the memfd, the agent reads them
// here and punches them out.
class Mapping {
 public:
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  // The memfd sized to `size` (sparse: tmpfs allocates only what the helper writes) and mapped.
  Status Map(int fd, uint64_t size) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      return Status::FromErrno("sizing the swarm's memfd", errno);
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) return Status::FromErrno("mapping the swarm's memfd", errno);
    data_ = static_cast<uint8_t*>(p);
    size_ = size;
    return Status::Ok();
  }
  const uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Tells the helper that every piece before `front` is taken and gone. A helper that exited is
// found by the reader thread (its stdout ends), not here.
void SendFront(int fd, uint64_t front) {
  const std::string line = "front " + std::to_string(front) + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

Result<FetchStreamResult> StreamSwarm(const SwarmRequest& req, const FetchOptions& opts,
                                      const SwarmOptions& swarm_opts, uint64_t window_bytes,
                                      ByteSink& sink, const ProgressFn& progress,
                                      const CancelToken& cancel, SwarmStats* stats) {
  const std::string failed = msg::DownloadFailed(req.image.url);
  const auto t0 = std::chrono::steady_clock::now();
  UniqueFd memfd(::memfd_create("byoi-swarm-stream", MFD_CLOEXEC));
  if (!memfd.valid())
    return Status::FromErrno("creating the swarm's memfd", errno).DefaultMessage(failed);
  BYOI_ASSIGN_OR_RETURN(auto hasher, StreamHasher::Create(req.image.hashes, /*threaded=*/true));
  // Nothing is seeded in stream mode, even once every piece passed.
  SwarmOptions streaming = swarm_opts;
  if (swarm_opts.on_stats) {
    streaming.on_stats = [&swarm_opts](const SwarmStats& now, bool) {
      swarm_opts.on_stats(now, false);
    };
  }
  // The image may be larger than RAM: the helper's capacity is the window, not the image.
  BYOI_ASSIGN_OR_RETURN(
      std::unique_ptr<Swarm> s,
      Swarm::Start(req, opts, streaming, memfd.get(), static_cast<uint64_t>(LLONG_MAX),
                   {"--stream-window", std::to_string(window_bytes)}, cancel));
  auto figures = [&] {
    if (stats != nullptr) *stats = s->stats();
  };

  Mapping map;
  uint64_t total = 0, piece_length = 0, pieces = 0;
  PassedFront front;  // before it: gone to the sink and out of the memfd
  uint64_t last_done = 0;
  auto last_new = std::chrono::steady_clock::now();
  std::vector<int> arrived;
  for (;;) {
    SwarmStats now;
    {
      std::unique_lock lock(s->mu_);
      if (s->passed_.empty() && s->error_kind_.empty() && !s->ended_) {
        s->changed_.wait_for(lock, std::chrono::milliseconds(200));
      }
      now = s->stats_;
      arrived.swap(s->passed_);
      s->passed_.clear();
      if (pieces == 0 && s->pieces_ > 0) {
        total = s->stats_.total;
        piece_length = s->piece_length_;
        pieces = s->pieces_;
      }
      const bool stopped = !s->error_kind_.empty() || s->ended_;
      const bool stalled = now.done == last_done && arrived.empty() &&
                           std::chrono::steady_clock::now() - last_new > opts.stall_timeout;
      if (stopped || stalled || cancel.cancelled()) {
        lock.unlock();
        Status why = s->Failure(req, opts, cancel);
        figures();
        return why;
      }
    }
    if (now.done > last_done || !arrived.empty()) {
      last_done = now.done;
      last_new = std::chrono::steady_clock::now();
    }
    if (progress) progress(now.done, now.total);
    if (pieces == 0) continue;  // a magnet link's metadata has not arrived yet
    if (!front.started()) {
      // The helper's figures are its own, but a mapping is sized on them: they must agree.
      if (total == 0 || piece_length == 0 || (total + piece_length - 1) / piece_length != pieces) {
        figures();
        return Status::Error(Code::kIo,
                             "swarm: the helper reports " + std::to_string(pieces) + " pieces of " +
                                 std::to_string(piece_length) + " bytes for " +
                                 std::to_string(total) + " bytes",
                             failed);
      }
      if (Status mapped = map.Map(memfd.get(), total); !mapped.ok()) {
        figures();
        return std::move(mapped).DefaultMessage(failed);
      }
      front.Start(pieces);
      BYOI_RETURN_IF_ERROR(sink.Start(total));
    }
    // The in-order front: to the hasher and the sink, then out of the memfd.
    const uint64_t start = front.Advance(arrived);
    if (front.front() == start) continue;
    const uint64_t from = start * piece_length;
    const uint64_t to = std::min(total, front.front() * piece_length);
    for (uint64_t pos = from; pos < to; pos += kSpan) {
      BYOI_RETURN_IF_ERROR(cancel.Check());
      const std::span<const uint8_t> span(map.data() + pos, std::min(kSpan, to - pos));
      const uint64_t ticket = hasher->Update(span);
      Status written = sink.Write(span);
      hasher->WaitFor(ticket);
      if (!written.ok()) {
        figures();
        return written;
      }
    }
    if (::fallocate(memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(from), static_cast<off_t>(to - from)) != 0) {
      figures();
      return Status::FromErrno("freeing the pieces taken from the swarm's memfd", errno)
          .DefaultMessage(failed);
    }
    // A slow disk is not a stalled swarm: the window was full while the sink worked.
    last_new = std::chrono::steady_clock::now();
    if (front.front() == pieces) break;
    SendFront(s->helper_.in.get(), front.front());
  }
  {
    // The helper's last figures come with its `complete`, right after the last piece's event.
    std::unique_lock lock(s->mu_);
    s->changed_.wait_for(lock, std::chrono::seconds(2),
                         [&] { return s->complete_ || s->ended_ || !s->error_kind_.empty(); });
  }
  figures();
  s.reset();  // stops the helper: nothing whole is left to seed
  BYOI_ASSIGN_OR_RETURN(std::vector<Digest> digests, hasher->Finish());
  if (progress) progress(total, total);
  FetchStreamResult result;
  result.bytes = total;
  result.digests = std::move(digests);
  result.requests = 0;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace byoi
