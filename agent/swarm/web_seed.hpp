// The swarm's web seed (docs/pipeline.md, "Swarm downloads"), in byoi-swarm: the manifest's URL,
// asked for pieces with HTTP Range requests by the helper itself (libcurl), each piece handed to
// libtorrent with torrent_handle::add_piece, which checks it against the torrent's hash like a
// peer's. It replaces libtorrent's BEP 19 url seed, which picks pieces knowing nothing of what
// the rack's other agents ask the origin for (a rack that starts together made the origin send
// about 3 x the image for 20 agents) and cannot carry the manifest's headers after a ban.
//
// Dividing the origin's work without talking (rendezvous hashing): the image is cut into units of
// at least 256 KiB (whole pieces). A unit is "open" while one of its pieces is wanted (priority >
// 0), not held, not held by any connected peer that serves us, not being downloaded from a peer
// and not asked of the origin by us. A peer serves us unless it kept us choked for 3 s while we
// wanted its pieces (a streaming agent, or a peer announcing what it will never send). The rack's
// agents that are still downloading (connected peers that serve us whose peer id carries
// kAgentPeerIdPrefix, not seeds, and this agent) rank themselves for each
// unit by hash(peer id, unit): the first takes it from the origin; the one ranked r takes it only
// after it stayed open r x (3 s + the owner's expected queue): its owner is gone, slow or stuck.
// An owner leaving the peer set gives its units to the next. Each agent takes its own units
// highest hash first: those it stays the owner of as more agents appear (a rack's agents see
// each other over a second or two); before it sees another, long runs from the start of groups
// of units taken in that order, and alone the lowest open unit first (a run asked before another
// appears is cut at the first unit that is the other's). Every other piece comes from the peers.
//
// Connections: alone (no other agent connected for kAloneAfter), `connections` at once, each a
// long contiguous run, as a plain HTTP download; in a rack, connections / agents (at least one),
// runs of at most 4 MiB. An origin that ignores Range: one request at a time, whose answer takes
// the whole image, in order (in stream mode pausing at the window's end). In a rack one such answer
// feeds the others: of the rack's first answers only the agent ranked first for the image keeps
// its own, an answer that reaches a piece a peer came to hold (another's is ahead) ends, and the
// next request waits until the rack's front (the pieces held or offered by peers) stood
// still for this agent's turn (by rank of hash(peer id) among the agents, with time for re-reading
// the held prefix). Every request follows the agent's download rules (agent/fetch/fetch.hpp):
// redirects through RedirectChain (the manifest's headers to the URL's origin only, https never to
// http, at most 5), the proxy chosen by ChooseProxy, TLS verification unless `insecure`, the CA
// bundle. Nothing it writes to stderr holds the URL's secrets.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <libtorrent/peer_info.hpp>
#include <libtorrent/torrent_handle.hpp>
#include <libtorrent/torrent_info.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/fetch/http_headers.hpp"

namespace byoi {

// The start of the peer id of every byoi-swarm in ram mode (the rest is random): how an agent
// tells the rack's other agents, which share the origin's work, from other peers.
inline constexpr char kAgentPeerIdPrefix[] = "-BY0100-";
// The start of a streaming agent's peer id: it serves nobody (stream_window.hpp), so its pieces
// are never counted as offered and it takes no share of the origin's work.
inline constexpr char kStreamingPeerIdPrefix[] = "-BY0101-";

// The largest piece taken: the web seed holds whole pieces while they arrive, as does libtorrent.
inline constexpr int64_t kMaxPieceBytes = 64 << 20;

// A fresh 20-byte peer id: kAgentPeerIdPrefix (kStreamingPeerIdPrefix when `streaming`) and 12
// random letters and digits.
std::string NewAgentPeerId(bool streaming);

struct WebSeedConfig {
  std::string url;                  // the manifest's URL: may hold userinfo, never shown
  std::vector<HttpHeader> headers;  // the manifest's headers (secrets)
  std::string proxy;                // the agent's --proxy (may hold credentials), or empty
  std::string ca_bundle;            // PEM file of CAs to trust, or empty for the system's
  bool insecure = false;            // no TLS verification (--insecure)
  int connections = 4;              // at once when alone (--connections, 1-16)
  bool streaming = false;           // stream mode (not from the file): the window only
};

// Reads the helper's --web-seed-file: the URL on the first line; then the headers, `Name: value`
// one a line; then optionally an empty line and settings, `key value` one a line: `proxy URL`,
// `ca-bundle PATH`, `insecure 1`, `connections N`. kInvalid with the reason (never a value) when
// the file is missing or a line is malformed.
Result<WebSeedConfig> ReadWebSeedFile(const std::string& path);

class WebSeed {
 public:
  // The web seed of `handle`, whose peer id is `self_id`. It asks nothing until Start.
  WebSeed(WebSeedConfig config, lt::torrent_handle handle, std::string self_id);
  ~WebSeed();  // Stop()
  WebSeed(const WebSeed&) = delete;
  WebSeed& operator=(const WebSeed&) = delete;

  // Starts fetching pieces of `ti` (the torrent's metadata, once known) on a thread of its own.
  void Start(std::shared_ptr<const lt::torrent_info> ti);
  // Abandons the transfers and joins the thread. Idempotent.
  void Stop();

  // From the alert loop: true when `piece`, just finished, was handed over by the web seed (once
  // per hand-over).
  bool TakeHanded(int piece);
  // From the alert loop: `piece` failed its hash check; if it came from the web seed, it is open
  // again.
  void HashFailed(int piece);

 private:
  struct Transfer;
  void Run();
  struct Refusal {
    std::chrono::steady_clock::time_point choked_since{
        std::chrono::steady_clock::time_point::max()};
    bool refuses = false;
  };
  bool Serves(const lt::peer_info& peer, std::chrono::steady_clock::time_point now,
              std::map<std::string, Refusal>& refusals) const;
  void Refresh();
  void StartTransfers();
  Status Launch(Transfer& t);
  void Finish(Transfer& t, int curl_code);
  void Hand(int piece, std::vector<char>&& bytes, int kind);
  bool Overtaken(const Transfer& t, int piece) const;
  void Resume();
  void Abandon(Transfer& t, int curl_code);          // ends a transfer outside curl's callbacks
  void DropEnded();                                  // forgets the transfers that ended
  size_t LeaveToRack(Transfer& t, const char* why);  // ends a whole-image answer, for another's
  bool RackFeedsWhole(std::chrono::steady_clock::time_point now) const;
  bool Forget(int piece);  // REQUIRES: mu_ held. Whether `piece` was awaiting a verdict.
  size_t Write(Transfer& t, const char* data, size_t size);
  void Log(const std::string& what);
  void LogShares();

  static size_t WriteThunk(char* data, size_t size, size_t n, void* user);
  static size_t HeaderThunk(char* data, size_t size, size_t n, void* user);

  const WebSeedConfig config_;
  lt::torrent_handle handle_;
  const std::string self_id_;
  std::shared_ptr<const lt::torrent_info> ti_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  const bool debug_ = std::getenv("BYOI_SWARM_WEB_SEED_DEBUG") != nullptr;
  size_t debug_peers_ = 0;

  std::mutex mu_;  // guards handed_, handed_bytes_
  std::condition_variable handed_changed_;
  std::map<int, int64_t> handed_;  // pieces handed to libtorrent, not yet finished or failed: size
  int64_t handed_bytes_ = 0;

  // The thread's own state.
  struct Piece;
  std::vector<Piece> pieces_;
  std::vector<std::chrono::steady_clock::time_point> open_since_;  // per unit; max(): not open
  int unit_pieces_ = 1;
  int agents_ = 1;            // this agent and the connected agents still downloading
  int incomplete_ = -1;       // peers downloading, by the tracker's last answer (-1: none yet)
  bool has_tracker_ = false;  // the torrent names a tracker: its first answer is awaited
  bool asked_ = false;        // a request went to the origin
  bool no_ranges_ = false;    // the origin answered a Range request with the whole image
  std::chrono::steady_clock::time_point started_{std::chrono::steady_clock::time_point::max()};
  std::chrono::steady_clock::time_point alone_since_;
  std::vector<std::string> members_;  // peer ids of those agents, this one's included
  // Peers (by endpoint and id) choking us while we want their pieces, or refusing to serve us.
  std::map<std::string, Refusal> refusals_;
  std::vector<int> ranks_;  // per unit: this agent's rank among them (0: the owner)
  int whole_rank_ = 0;      // its rank for the whole image, from an origin that ignores Range
  int front_ = 0;           // pieces held or offered by peers that serve us, at the last look
  std::chrono::steady_clock::time_point front_moved_;  // when front_ last grew
  std::chrono::steady_clock::time_point left_at_;      // when a whole answer last gave way
  std::vector<std::unique_ptr<Transfer>> transfers_;
  bool finished_ = false;
  int failures_ = 0;  // requests in a row that brought no piece
  std::chrono::steady_clock::time_point retry_at_;
  std::chrono::steady_clock::duration unit_time_{};  // a recent unit's time from the origin
  void* multi_ = nullptr;                            // CURLM*
  // Bytes handed over, by how they were taken: while alone, as a unit's owner, from another's.
  enum { kAlone, kOwned, kTakenOver };
  int64_t fetched_[3] = {};
};

}  // namespace byoi
