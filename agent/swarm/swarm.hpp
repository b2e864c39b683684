// Step 2 of a job through a BitTorrent swarm (docs/pipeline.md, "Swarm downloads"): the image's
// pieces from the rack's other agents, and from the manifest's URL as the torrent's web seed
// (the helper's own, under FetchImage's rules: agent/swarm/web_seed.hpp), into the RAM image
// buffer; then this agent seeds what it holds while it writes, and for a bounded time after the
// job is done (FetchSwarm, ram mode). In stream mode (StreamSwarm) only a window of pieces ahead
// of the write is held, streamed to the disk, and nothing is seeded.
//
// The peer is byoi-swarm (main.cpp), a program that writes the pieces into the image
// buffer's memfd itself, libtorrent checking each against the torrent's hashes (a peer that sent a
// bad one is banned). Nothing from the swarm is trusted more than an HTTP download: the caller
// checks the whole image against the manifest's checksum as it does for FetchImage's.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/fetch/fetch.hpp"
#include "agent/swarm/swarm_helper.hpp"

namespace byoi {

struct SwarmRequest {
  FetchRequest image;   // the image: its URL is the web seed, its headers go with it
  std::string torrent;  // the manifest's `torrent`: an http(s) URL of a .torrent, or a magnet link
};

struct SwarmStats;

struct SwarmOptions {
  // Upload limit in bytes per second, 0 for none (--upload-rate).
  uint64_t upload_rate = 0;
  // Local Service Discovery (multicast on the rack's LAN) on (docs/pipeline.md).
  bool lsd = true;
  // The rack's private DHT: its bootstrap nodes, HOST:PORT comma-separated (--swarm-dht); empty:
  // the DHT is off. Never the public DHT's routers.
  std::string dht_nodes;
  // libtorrent's listen_interfaces ("0.0.0.0:0,[::]:0": every address, a free port).
  std::string listen = "0.0.0.0:0,[::]:0";
  // Peers to connect to at once, IP:PORT (tests; a rack finds its peers through its tracker).
  std::vector<std::string> peers;
  // A piece that fails its hash check this many times has no good source: the download fails.
  int max_hash_failures = 3;
  // Told the figures at each of the helper's reports (about 5 a second) until it stops, from the
  // swarm's reader thread; `seeding` once the image is complete. May be empty.
  std::function<void(const SwarmStats& stats, bool seeding)> on_stats;
};

// What the swarm did, for the status and /metrics (docs/status.md).
struct SwarmStats {
  uint64_t done = 0;           // bytes of the image held, checked
  uint64_t total = 0;          // the image's size (0 until the torrent is known)
  int peers = 0;               // BitTorrent peers connected now (web seeds not counted)
  uint64_t from_peers = 0;     // bytes received from peers
  uint64_t from_web_seed = 0;  // bytes received from the web seed (the origin, or its cache)
  uint64_t uploaded = 0;       // bytes sent to peers
  int hash_failures = 0;       // pieces that failed their hash check (their senders banned)
};

// The pieces that passed their hash check (the helper's `piece N` events) and the front: the
// first piece that has not. Both fetches hash, and stream mode writes, the bytes before the front
// as it moves.
class PassedFront {
 public:
  void Start(uint64_t pieces) { passed_.assign(pieces, false); }
  bool started() const { return !passed_.empty(); }
  // Marks `arrived` (pieces outside the image ignored) and clears it; moves the front past every
  // passed piece. Returns where the front was.
  uint64_t Advance(std::vector<int>& arrived);
  uint64_t front() const { return front_; }

 private:
  std::vector<bool> passed_;
  uint64_t front_ = 0;
};

// The helper while it runs: it downloads, then seeds until Stop.
class Swarm {
 public:
  ~Swarm();
  SwarmStats stats() const;
  // Seeds for at most `seed_time` more (returning early when `cancel` is set), then stops the
  // helper. Idempotent.
  void SeedThenStop(std::chrono::seconds seed_time, const CancelToken& cancel);

 private:
  friend Result<FetchResult> FetchSwarm(const SwarmRequest&, const FetchOptions&,
                                        const SwarmOptions&, const ProgressFn&, const CancelToken&,
                                        std::unique_ptr<Swarm>*);
  friend Result<FetchStreamResult> StreamSwarm(const SwarmRequest&, const FetchOptions&,
                                               const SwarmOptions&, uint64_t, ByteSink&,
                                               const ProgressFn&, const CancelToken&, SwarmStats*);
  // Fetches the .torrent (a magnet link goes as it is) and starts the helper with `image_fd` as
  // its descriptor 3 and `extra` arguments after the common ones; the reader thread runs.
  // Errors carry the download failed message.
  static Result<std::unique_ptr<Swarm>> Start(const SwarmRequest& req, const FetchOptions& opts,
                                              const SwarmOptions& swarm_opts, int image_fd,
                                              uint64_t capacity,
                                              const std::vector<std::string>& extra,
                                              const CancelToken& cancel);
  // Why the helper stopped before the image was complete: its error, its exit, a stall after
  // `stall_timeout`, the cancel. Stops the helper first. REQUIRES: mu_ not held.
  Status Failure(const SwarmRequest& req, const FetchOptions& opts, const CancelToken& cancel);
  // The reader thread: the helper's events, one a line, until its stdout ends.
  void Read();
  void Handle(const std::string& line);  // REQUIRES: mu_ held

  HelperProcess helper_;
  std::function<void(const SwarmStats&, bool)> on_stats_;
  std::thread reader_;
  mutable std::mutex mu_;
  std::condition_variable changed_;  // an event arrived, or the helper's stdout ended
  SwarmStats stats_;
  bool complete_ = false;
  uint64_t piece_length_ = 0;  // from the `info` event
  uint64_t pieces_ = 0;        // from the `info` event
  std::vector<int> passed_;    // `piece N` events not yet taken by FetchSwarm or StreamSwarm
  bool ended_ = false;         // the helper's stdout ended: it exited
  std::string error_kind_;     // from an `error` event: invalid, too_big, failed
  std::string error_detail_;
};

// Downloads the image through the swarm into a new ImageBuffer of `opts.memory_budget` bytes,
// digests as FetchImage computes them (the in-order front of the pieces that passed, as they
// pass). The .torrent is fetched with FetchImage's rules (the image request's headers, TLS and
// redirects), at most 64 MiB; the web seed follows them too (opts.proxy, ca_bundle, insecure,
// connections go to the helper).
// `progress` and `cancel` as for FetchImage; the download fails when no new byte arrived for
// `opts.stall_timeout`. On success `*swarm` holds the running helper, seeding; on failure there
// is no helper left and nothing is kept, and the Status has the catalogue message (download
// failed with the image's URL, too big, cancelled) and the cause in `detail`.
Result<FetchResult> FetchSwarm(const SwarmRequest& req, const FetchOptions& opts,
                               const SwarmOptions& swarm_opts, const ProgressFn& progress,
                               const CancelToken& cancel, std::unique_ptr<Swarm>* swarm);

// Stream mode through the swarm (docs/pipeline.md, "Swarm downloads"): the helper downloads into
// a sparse memfd only the pieces of a window of `window_bytes` ahead of the front; the front goes
// to `sink` in byte order (ByteSink's contract), with the digests computed over the same bytes,
// and is then punched out of the memfd. The helper uploads nothing and is stopped on return:
// there is nothing whole to seed. `progress` and `cancel` as for FetchSwarm; `*stats` (may be
// null) gets the swarm's figures at the end, on success or failure.
// Errors: the sink's as they are; the swarm's as FetchSwarm's (download failed, cancelled), with
// the sink holding a prefix of the image. Memory: at most `window_bytes` of pieces (a torrent
// whose piece is larger fails), plus the helper's own (libtorrent's buffers).
Result<FetchStreamResult> StreamSwarm(const SwarmRequest& req, const FetchOptions& opts,
                                      const SwarmOptions& swarm_opts, uint64_t window_bytes,
                                      ByteSink& sink, const ProgressFn& progress,
                                      const CancelToken& cancel, SwarmStats* stats);

}  // namespace byoi
