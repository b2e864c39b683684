#include "agent/swarm/swarm.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <map>
#include <sstream>

#include "agent/base/messages.hpp"
#include "agent/fetch/hasher.hpp"

namespace byoi {

namespace {

// A .torrent is small: 64 MiB of piece hashes describe a terabyte in 256 KiB pieces.
constexpr uint64_t kMaxTorrentBytes = 64 << 20;

// A memfd holding `bytes`, for the helper to read as /proc/self/fd/N: the .torrent and the web
// seed's URL and headers (secrets: never on a command line, where any process could read them).
Result<UniqueFd> MemfdWith(const char* name, std::string_view bytes) {
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(std::string("memfd_create for ") + name, errno);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(std::string("writing ") + name, errno);
    done += static_cast<size_t>(n);
  }
  return fd;
}

Result<std::string> FetchTorrentFile(const SwarmRequest& req, const FetchOptions& opts,
                                     const CancelToken& cancel) {
  FetchRequest t;
  t.url = req.torrent;
  t.headers = req.image.headers;
  t.type = req.image.type;
  FetchOptions small = opts;
  small.memory_budget = kMaxTorrentBytes;
  small.connections = 1;
  Result<FetchResult> got = FetchImage(t, small, nullptr, cancel);
  if (!got.ok()) {
    Status s = std::move(got).status();
    if (s.code() == Code::kCancelled) return s;
    return Status::Error(s.code() == Code::kTooBig ? Code::kInvalid : s.code(),
                         "fetching the torrent " +
                             msg::ShownUrl(req.torrent, msg::UrlSecrets::kMasked) + ": " +
                             (s.detail().empty() ? s.message() : s.detail()));
  }
  auto bytes = got->image.bytes();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

uint64_t Field(const std::map<std::string, std::string>& f, const std::string& key) {
  auto it = f.find(key);
  uint64_t v = 0;
  if (it != f.end()) std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  return v;
}

}  // namespace

Swarm::~Swarm() {
  helper_.in.Reset();  // the helper stops seeding and exits; its stdout ends
  if (reader_.joinable()) reader_.join();
  helper_.Stop();
}

SwarmStats Swarm::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Swarm::Read() {
  std::string pending;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(helper_.out.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      SwarmStats now;
      bool complete = false;
      {
        std::lock_guard lock(mu_);
        Handle(line);
        now = stats_;
        complete = complete_;
        changed_.notify_all();
      }
      if (on_stats_) on_stats_(now, complete);
    }
    // A line longer than this is not the helper's.
    if (pending.size() > 65536) pending.clear();
  }
  std::lock_guard lock(mu_);
  ended_ = true;
  changed_.notify_all();
}

void Swarm::Handle(const std::string& line) {
  std::istringstream words(line);
  std::string kind;
  words >> kind;
  if (kind == "error") {
    std::string first;
    words >> first;
    error_kind_ = first.rfind("kind=", 0) == 0 ? first.substr(5) : "failed";
    std::getline(words, error_detail_);
    if (!error_detail_.empty() && error_detail_.front() == ' ') error_detail_.erase(0, 1);
    return;
  }
  if (kind == "complete") {
    complete_ = true;
    return;
  }
  if (kind == "piece") {
    int piece = -1;
    words >> piece;
    // At most one event per piece of the image: bounded by the torrent's piece count.
    if (piece >= 0 && static_cast<uint64_t>(piece) < pieces_) passed_.push_back(piece);
    return;
  }
  std::map<std::string, std::string> f;
  std::string word;
  while (words >> word) {
    auto eq = word.find('=');
    if (eq != std::string::npos) f[word.substr(0, eq)] = word.substr(eq + 1);
  }
  if (kind == "info") {
    stats_.total = Field(f, "size");
    piece_length_ = Field(f, "piece_length");
    pieces_ = Field(f, "pieces");
  } else if (kind == "progress") {
    stats_.done = Field(f, "done");
    if (Field(f, "total") > 0) stats_.total = Field(f, "total");
    stats_.peers = static_cast<int>(Field(f, "peers"));
    stats_.from_peers = Field(f, "from_peers");
    stats_.from_web_seed = Field(f, "from_web_seed");
    stats_.uploaded = Field(f, "uploaded");
    stats_.hash_failures = static_cast<int>(Field(f, "hash_failures"));
  }
}

void Swarm::SeedThenStop(std::chrono::seconds seed_time, const CancelToken& cancel) {
  const auto until = std::chrono::steady_clock::now() + seed_time;
  std::unique_lock lock(mu_);
  while (!ended_ && !cancel.cancelled() && std::chrono::steady_clock::now() < until) {
    changed_.wait_for(lock, std::chrono::milliseconds(200));
  }
  lock.unlock();
  helper_.in.Reset();
  if (reader_.joinable()) reader_.join();
  helper_.Stop();
}

Result<std::unique_ptr<Swarm>> Swarm::Start(const SwarmRequest& req, const FetchOptions& opts,
                                            const SwarmOptions& swarm_opts, int image_fd,
                                            uint64_t capacity,
                                            const std::vector<std::string>& extra,
                                            const CancelToken& cancel) {
  const std::string failed = msg::DownloadFailed(req.image.url);
  auto fail = [&failed](Status s) { return std::move(s).DefaultMessage(failed); };
  Result<std::string> helper_path = SwarmHelperPath();
  if (!helper_path.ok()) return fail(std::move(helper_path).status());
  const std::string helper = *helper_path;

  std::vector<std::string> argv = {helper, "fetch"};
  UniqueFd torrent_fd;
  if (req.torrent.rfind("magnet:", 0) == 0) {
    argv.insert(argv.end(), {"--magnet", req.torrent});
  } else {
    Result<std::string> torrent = FetchTorrentFile(req, opts, cancel);
    if (!torrent.ok()) return fail(std::move(torrent).status());
    Result<UniqueFd> torrent_fd_or = MemfdWith("byoi-torrent", *torrent);
    if (!torrent_fd_or.ok()) return fail(std::move(torrent_fd_or).status());
    torrent_fd = std::move(*torrent_fd_or);
    argv.insert(argv.end(), {"--torrent", "/proc/self/fd/4"});
  }
  std::string seed = req.image.url + "\n";
  for (const HttpHeader& h : req.image.headers) seed += h.name + ": " + h.value + "\n";
  // Then the download settings the helper's web seed follows as FetchImage does (the proxy may
  // hold credentials: never on the command line). agent/swarm/web_seed.hpp reads them.
  seed += "\nconnections " + std::to_string(opts.connections) + "\n";
  if (!opts.proxy.empty()) seed += "proxy " + opts.proxy + "\n";
  if (!opts.ca_bundle.empty()) seed += "ca-bundle " + opts.ca_bundle + "\n";
  if (opts.insecure) seed += "insecure 1\n";
  Result<UniqueFd> seed_fd_or = MemfdWith("byoi-web-seed", seed);
  if (!seed_fd_or.ok()) return fail(std::move(seed_fd_or).status());
  UniqueFd seed_fd = std::move(*seed_fd_or);
  argv.insert(argv.end(), {"--web-seed-file", "/proc/self/fd/5"});
  argv.insert(argv.end(),
              {"--capacity", std::to_string(capacity), "--upload-rate",
               std::to_string(swarm_opts.upload_rate), "--lsd", swarm_opts.lsd ? "1" : "0",
               "--dht-nodes", swarm_opts.dht_nodes, "--listen", swarm_opts.listen,
               "--max-hash-failures", std::to_string(swarm_opts.max_hash_failures)});
  for (const std::string& peer : swarm_opts.peers) argv.insert(argv.end(), {"--peer", peer});
  argv.insert(argv.end(), extra.begin(), extra.end());

  auto s = std::unique_ptr<Swarm>(new Swarm());
  s->on_stats_ = swarm_opts.on_stats;
  // fd 4 must be the torrent even without one: a magnet link passes the image's memfd again.
  BYOI_RETURN_IF_ERROR(
      StartHelper(argv, {image_fd, torrent_fd.valid() ? torrent_fd.get() : image_fd, seed_fd.get()},
                  s->helper_));
  s->reader_ = std::thread([raw = s.get()] { raw->Read(); });
  return s;
}

Status Swarm::Failure(const SwarmRequest& req, const FetchOptions& opts,
                      const CancelToken& cancel) {
  std::unique_lock lock(mu_);
  const std::string kind = error_kind_, detail = error_detail_;
  const bool ended = ended_;
  const SwarmStats now = stats_;
  lock.unlock();
  helper_.in.Reset();  // stops the helper
  if (reader_.joinable()) reader_.join();
  helper_.Stop();
  BYOI_RETURN_IF_ERROR(cancel.Check());
  const std::string failed = msg::DownloadFailed(req.image.url);
  if (kind == "too_big") {
    return Status::Error(Code::kTooBig, detail,
                         msg::TooBigForMemory(ImageTypeName(req.image.type)));
  }
  if (!kind.empty()) {
    return Status::Error(kind == "invalid" ? Code::kInvalid : Code::kIo, "swarm: " + detail,
                         failed);
  }
  if (ended) return Status::Error(Code::kIo, "swarm: the helper exited unexpectedly", failed);
  return Status::Error(
      Code::kIo,
      "swarm: no new piece for " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::seconds>(opts.stall_timeout).count()) +
          " s (" + std::to_string(now.done) + " of " + std::to_string(now.total) + " bytes)",
      failed);
}

uint64_t PassedFront::Advance(std::vector<int>& arrived) {
  for (int piece : arrived) {
    if (piece >= 0 && static_cast<uint64_t>(piece) < passed_.size()) passed_[piece] = true;
  }
  arrived.clear();
  const uint64_t was = front_;
  while (front_ < passed_.size() && passed_[front_]) ++front_;
  return was;
}

Result<FetchResult> FetchSwarm(const SwarmRequest& req, const FetchOptions& opts,
                               const SwarmOptions& swarm_opts, const ProgressFn& progress,
                               const CancelToken& cancel, std::unique_ptr<Swarm>* swarm) {
  const std::string failed = msg::DownloadFailed(req.image.url);
  auto fail = [&failed](Status s) { return std::move(s).DefaultMessage(failed); };
  const auto t0 = std::chrono::steady_clock::now();
  Result<ImageBuffer> image_or = ImageBuffer::Create(opts.memory_budget);
  if (!image_or.ok()) return fail(std::move(image_or).status());
  ImageBuffer image = std::move(*image_or);
  BYOI_ASSIGN_OR_RETURN(std::unique_ptr<Swarm> s, Swarm::Start(req, opts, swarm_opts, image.fd(),
                                                               image.capacity(), {}, cancel));

  // The image is hashed as it arrives, as an HTTP download's is: the in-order front of the pieces
  // that passed their hash check (the helper reports each), on the hasher's thread.
  BYOI_ASSIGN_OR_RETURN(auto hasher, StreamHasher::Create(req.image.hashes, /*threaded=*/true));
  uint64_t total = 0, piece_length = 0;
  PassedFront front;  // started once the torrent is known
  std::vector<int> arrived;
  auto hash_front = [&] {
    const uint64_t from = std::min(total, front.Advance(arrived) * piece_length);
    const uint64_t to = std::min(total, front.front() * piece_length);
    if (to > from) hasher->UpdateFromFile(image.fd(), from, to - from);
  };

  // Until complete: progress, the stall timer, cancellation.
  uint64_t last_done = 0;
  auto last_new = std::chrono::steady_clock::now();
  SwarmStats now;
  {
    std::unique_lock lock(s->mu_);
    for (;;) {
      if (s->passed_.empty()) s->changed_.wait_for(lock, std::chrono::milliseconds(200));
      now = s->stats_;
      arrived.swap(s->passed_);
      s->passed_.clear();
      if (!front.started() && s->pieces_ > 0 && s->piece_length_ > 0 &&
          s->stats_.total <= image.capacity()) {
        total = s->stats_.total;
        piece_length = s->piece_length_;
        front.Start(s->pieces_);
      }
      if (s->complete_ || !s->error_kind_.empty() || s->ended_) break;
      if (cancel.cancelled()) break;
      if (now.done > last_done) {
        last_done = now.done;
        last_new = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - last_new > opts.stall_timeout) {
        break;
      }
      lock.unlock();
      hash_front();
      if (progress) progress(now.done, now.total);
      lock.lock();
    }
    if (!s->complete_) {
      lock.unlock();
      return s->Failure(req, opts, cancel);
    }
  }
  if (progress) progress(now.total, now.total);

  // The helper wrote into the memfd; the buffer learns its size from the last byte.
  if (now.total == 0) return Status::Error(Code::kIo, "swarm: an empty image", failed);
  const uint8_t last = image.data()[now.total - 1];
  if (Status size = image.WriteAt(now.total - 1, {&last, 1}); !size.ok()) {
    return fail(std::move(size));
  }

  // What the front had not reached: the rest, whatever the helper reported.
  hash_front();
  const uint64_t hashed = total == now.total ? std::min(total, front.front() * piece_length) : 0;
  if (hashed == 0) hasher->Reset();
  hasher->UpdateFromFile(image.fd(), hashed, image.size() - hashed);
  FetchResult result;
  BYOI_ASSIGN_OR_RETURN(result.digests, hasher->Finish());
  result.image = std::move(image);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *swarm = std::move(s);
  return result;
}

}  // namespace byoi
