#include "agent/swarm/web_seed.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <libtorrent/peer_info.hpp>
#include <libtorrent/torrent_status.hpp>
#include <limits>
#include <optional>
#include <random>

#include "agent/base/text.hpp"
#include "agent/fetch/curl_handles.hpp"
#include "agent/fetch/proxy.hpp"
#include "agent/fetch/redirect_chain.hpp"

namespace byoi {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A unit of the origin's work: whole pieces, at least this many bytes. Small units divide the
// work finely (an agent's first picks, made before it sees the whole rack, rarely collide).
constexpr int64_t kUnitBytes = 256 << 10;
// In a rack, a request asks for at most this many bytes: a unit taken by the wrong agent (two that
// do not yet see each other) costs the origin little.
constexpr int64_t kRackRunBytes = 4 << 20;
// Before it sees another agent, an agent starts its runs at groups of this many units, groups in
// its weights' order (about 4 MiB of 256 KiB units).
constexpr int kGroupUnits = 16;
// Seeing no other agent, a request asks for a long run (between these, about 4 per connection),
// as FetchImage's piece plan does.
constexpr int64_t kAloneRunMin = 4 << 20;
constexpr int64_t kAloneRunMax = 64 << 20;
// A rack's agents start within a second or two of each other and only then see each other: until
// an agent has been alone this long it asks for one run at a time, on one connection.
constexpr auto kAloneAfter = 2s;
// An agent that knows (from its tracker's answer) of more agents downloading than it is connected
// to waits at most this long for them before its first request.
constexpr auto kMaxSettle = 1s;
// The agent ranked r for a unit takes it once it stayed open r x this (at least; 3 x a recent
// unit's time from the origin when that is longer).
constexpr auto kStealAfter = 3s;
// The unit whose rank orders the agents for taking the whole image (from an origin that ignores
// Range): no unit of an image has this index.
constexpr int kWholeImage = std::numeric_limits<int>::min();
constexpr Clock::duration kMaxStealAfter = 2min;
// The pieces being received from the origin, all transfers together (each holds one whole).
constexpr int64_t kPieceBuffers = kMaxPieceBytes;
constexpr auto kRefreshEvery = 200ms;
// Until the first request: the download starts as soon as libtorrent has checked its storage and
// the tracker answered.
constexpr auto kRefreshBeforeFirst = 10ms;
// A peer that kept us choked this long while we wanted its pieces does not serve us: what it holds
// is open to the origin, and it is no rack agent to leave units to.
constexpr auto kRefusalAfter = 3s;
// A piece handed to libtorrent that neither passed nor failed in this time is open again.
constexpr auto kHandedTimeout = 10s;
// Pieces handed to libtorrent and not yet confirmed, at most (one piece at least).
constexpr int64_t kMaxHandedBytes = 32 << 20;
constexpr auto kMaxBackOff = 30s;
constexpr long kConnectTimeoutMs = 30000;
constexpr long kStallSeconds = 30;
constexpr size_t kMaxSettingsBytes = 1 << 20;

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// hash(peer id, unit), the same in every agent.
uint64_t Weight(const std::string& id, int unit) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return Mix(h ^ Mix(static_cast<uint64_t>(unit)));
}

}  // namespace

std::string NewAgentPeerId(bool streaming) {
  static constexpr char kAlphabet[] =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::random_device rd;
  std::string id = streaming ? kStreamingPeerIdPrefix : kAgentPeerIdPrefix;
  std::uniform_int_distribution<int> pick(0, sizeof kAlphabet - 2);
  while (id.size() < 20) id += kAlphabet[pick(rd)];
  return id;
}

Result<WebSeedConfig> ReadWebSeedFile(const std::string& path) {
  std::ifstream f(path);
  WebSeedConfig c;
  if (!f || !std::getline(f, c.url) || c.url.empty()) {
    return Status::Error(Code::kInvalid, "the web seed file has no URL");
  }
  std::string line;
  size_t read = c.url.size();
  bool settings = false;
  while (std::getline(f, line)) {
    read += line.size() + 1;
    if (read > kMaxSettingsBytes)
      return Status::Error(Code::kInvalid, "the web seed file is too long");
    if (!settings && line.empty()) {
      settings = true;
      continue;
    }
    if (!settings) {
      const size_t colon = line.find(':');
      if (colon == std::string::npos || colon == 0) {
        return Status::Error(Code::kInvalid, "a header line of the web seed file has no name");
      }
      c.headers.push_back({line.substr(0, colon),
                           std::string(TrimBlanks(std::string_view(line).substr(colon + 1)))});
      continue;
    }
    const size_t space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string value = space == std::string::npos ? "" : line.substr(space + 1);
    if (key == "proxy") {
      c.proxy = value;
    } else if (key == "ca-bundle") {
      c.ca_bundle = value;
    } else if (key == "insecure") {
      c.insecure = value == "1";
    } else if (key == "connections") {
      c.connections = std::clamp(std::atoi(value.c_str()), 1, 16);
    } else {
      return Status::Error(Code::kInvalid,
                           "unknown setting in the web seed file: " + PrintableText(key, 64));
    }
  }
  return c;
}

// What the thread knows of each piece, from its last look at the torrent.
struct WebSeed::Piece {
  bool have = false;
  bool wanted = true;                                  // priority > 0
  bool available = false;                              // a connected peer has it
  bool downloading = false;                            // libtorrent asks a peer for it
  bool in_flight = false;                              // one of our requests will bring it
  Clock::time_point handed{Clock::time_point::max()};  // handed to libtorrent, not yet confirmed
  bool Held() const { return have || handed != Clock::time_point::max(); }  // or awaiting a verdict
  bool Open() const { return !Held() && wanted && !available && !downloading && !in_flight; }
};

// One request to the origin: pieces [first, last), bytes [pos, end) still to come.
struct WebSeed::Transfer {
  WebSeed* owner = nullptr;
  CurlPtr curl;
  CurlSlistPtr headers;
  std::optional<RedirectChain> chain;
  int first = 0, last = 0;
  int64_t pos = 0, end = 0;
  int64_t at = -1;  // the offset in the image of the answer's next body byte; -1 before the body
  std::vector<char> piece;  // the bytes of the piece at `pos` received so far
  long status = 0;
  std::string location;
  std::optional<ContentRange> range;
  std::optional<uint64_t> length;  // Content-Length
  bool complete = false;
  bool got_piece = false;
  bool whole = false;        // the origin ignored Range: the answer is the whole image, all taken
  bool probe = false;        // asked before the origin was known to ignore Range
  bool feeds_rack = false;   // with `whole`: in ram mode, where the agent serves the rack
  bool paused = false;       // with `whole`: waiting for a streaming agent's window to move
  size_t taken_of_next = 0;  // bytes taken of those curl passes first after the pause
  // With `whole`: the pieces held when the answer began, and, unless it is a probe (then a
  // take-over, asked once the rack's front stood still), those offered by peers.
  std::vector<bool> held_before;
  int kind = 0;     // what the pieces count as: kAlone, kOwned, kTakenOver
  std::string bad;  // why the answer was refused, when it was
  Clock::time_point began;
  char errbuf[CURL_ERROR_SIZE] = {};
};

WebSeed::WebSeed(WebSeedConfig config, lt::torrent_handle handle, std::string self_id)
    : config_(std::move(config)), handle_(std::move(handle)), self_id_(std::move(self_id)) {}

WebSeed::~WebSeed() { Stop(); }

void WebSeed::Start(std::shared_ptr<const lt::torrent_info> ti) {
  if (thread_.joinable() || !ti) return;
  ti_ = std::move(ti);
  has_tracker_ = !handle_.trackers().empty();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  thread_ = std::thread([this] { Run(); });
}

void WebSeed::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    handed_changed_.notify_all();  // a hand-over waiting for room
  }
  if (!thread_.joinable()) return;
  thread_.join();
  if (!finished_) LogShares();
}

void WebSeed::LogShares() {
  // For the agent's log (tests/fleet reads it): how the origin's work was shared.
  Log("fetched " + std::to_string(fetched_[kAlone]) + " bytes alone, " +
      std::to_string(fetched_[kOwned]) + " as the owner, " + std::to_string(fetched_[kTakenOver]) +
      " taken over");
}

bool WebSeed::TakeHanded(int piece) {
  std::lock_guard lock(mu_);
  return Forget(piece);
}

void WebSeed::HashFailed(int piece) {
  std::lock_guard lock(mu_);
  Forget(piece);
}

void WebSeed::Log(const std::string& what) {
  // What the origin sent (a refused Location, say) reaches the agent's log: printable only.
  std::fprintf(stderr, "byoi-swarm: web seed: %s\n", PrintableText(what, 300).c_str());
}

void WebSeed::Run() {
  const int n = ti_->num_pieces();
  pieces_.assign(static_cast<size_t>(n), Piece{});
  unit_pieces_ = static_cast<int>(
      std::max<int64_t>(1, (kUnitBytes + ti_->piece_length() - 1) / ti_->piece_length()));
  open_since_.assign(static_cast<size_t>((n + unit_pieces_ - 1) / unit_pieces_),
                     Clock::time_point::max());
  alone_since_ = Clock::now();
  front_moved_ = alone_since_;
  members_ = {self_id_};
  CurlMultiPtr multi(curl_multi_init());
  // One request per TCP connection, as the agent's downloads (HTTP/2 would put every run on one).
  curl_multi_setopt(multi.get(), CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_NOTHING));
  multi_ = multi.get();
  auto next_refresh = Clock::now();
  while (!stop_) {
    const auto now = Clock::now();
    if (now >= next_refresh) {
      Refresh();
      Resume();
      StartTransfers();
      next_refresh = now + (asked_ ? kRefreshEvery : kRefreshBeforeFirst);
    }
    int running = 0;
    curl_multi_perform(multi.get(), &running);
    bool ended = false;
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi.get(), &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      for (auto& t : transfers_) {
        if (t->curl.get() == m->easy_handle) {
          const CURLcode code = m->data.result;
          curl_multi_remove_handle(multi.get(), t->curl.get());
          Finish(*t, code);
          ended = true;
          break;
        }
      }
    }
    if (ended) {
      DropEnded();
      // The next request at once, not at the next look: in a rack a unit takes about a second.
      Refresh();
      StartTransfers();
      next_refresh = Clock::now() + kRefreshEvery;
    }
    curl_multi_poll(multi.get(), nullptr, 0, 50, nullptr);
  }
  for (auto& t : transfers_) {
    if (t->curl) curl_multi_remove_handle(multi.get(), t->curl.get());
  }
  transfers_.clear();
  multi_ = nullptr;
}

// A peer serves us unless it kept us choked for kRefusalAfter while we wanted what it has: a
// streaming agent (it uploads nothing), or a peer that announces pieces it will never send. The
// rack's agents unchoke every peer at once, so the refusal lasts until it unchokes us.
bool WebSeed::Serves(const lt::peer_info& peer, Clock::time_point now,
                     std::map<std::string, Refusal>& refusals) const {
  const std::string key =
      peer.ip.address().to_string() + ":" + std::to_string(peer.ip.port()) + peer.pid.to_string();
  Refusal r;
  if (auto it = refusals_.find(key); it != refusals_.end()) r = it->second;
  if (!(peer.flags & lt::peer_info::remote_choked)) {
    r = Refusal{};
  } else if (peer.flags & lt::peer_info::interesting) {
    if (r.choked_since == Clock::time_point::max()) r.choked_since = now;
    if (now - r.choked_since >= kRefusalAfter) r.refuses = true;
  } else {
    r.choked_since = Clock::time_point::max();
  }
  if (r.refuses || r.choked_since != Clock::time_point::max()) refusals[key] = r;
  return !r.refuses;
}

void WebSeed::Refresh() {
  if (finished_) return;
  const auto now = Clock::now();
  try {
    // The pieces awaiting libtorrent's verdict, read before its status: a piece gone from them
    // passed (and the status says so) or failed.
    std::set<int> handed;
    {
      std::lock_guard lock(mu_);
      for (const auto& [piece, size] : handed_) handed.insert(piece);
    }
    lt::torrent_status s = handle_.status(lt::torrent_handle::query_pieces);
    // Seeding: every piece is held. Not is_finished, which a stream-mode window makes true
    // each time it drains (every wanted piece held), with more pieces to come.
    if (s.is_seeding) {
      finished_ = true;
      LogShares();
      return;
    }
    if (s.state != lt::torrent_status::downloading) return;
    if (started_ == Clock::time_point::max()) started_ = now;
    const int incomplete_before = std::exchange(incomplete_, s.num_incomplete);
    std::vector<lt::peer_info> peers;
    handle_.get_peer_info(peers);
    // What the peers that serve us hold (libtorrent's own availability counts every peer's).
    std::vector<int> avail(pieces_.size(), 0);
    std::map<std::string, Refusal> refusals;
    std::vector<std::string> members = {self_id_};
    for (const auto& peer : peers) {
      if (peer.connection_type != lt::peer_info::standard_bittorrent) continue;
      if (peer.pid.to_string().rfind(kStreamingPeerIdPrefix, 0) == 0) continue;
      if (!Serves(peer, now, refusals)) continue;
      for (int i = 0; i < static_cast<int>(avail.size()) && i < peer.pieces.size(); ++i) {
        if (peer.pieces[lt::piece_index_t{i}]) ++avail[i];
      }
      if (peer.flags & lt::peer_info::seed) continue;
      std::string id = peer.pid.to_string();
      if (id.rfind(kAgentPeerIdPrefix, 0) == 0) members.push_back(std::move(id));
    }
    refusals_ = std::move(refusals);
    std::vector<lt::partial_piece_info> queue = handle_.get_download_queue();
    std::vector<lt::download_priority_t> prio = handle_.get_piece_priorities();

    for (auto& p : pieces_) p.downloading = false;
    for (const auto& q : queue) {
      // A piece some of whose blocks came from a peer that is gone (banned, disconnected) stays
      // in the queue with no block asked of anyone: it is open (add_piece keeps those blocks).
      if (q.requested == 0 && q.writing == 0) continue;
      const int i = static_cast<int>(q.piece_index);
      if (i >= 0 && i < static_cast<int>(pieces_.size())) pieces_[i].downloading = true;
    }
    for (int i = 0; i < static_cast<int>(pieces_.size()); ++i) {
      Piece& p = pieces_[i];
      p.have = s.pieces.size() > i && s.pieces[lt::piece_index_t{i}];
      p.available = avail[i] > 0;
      p.wanted = i >= static_cast<int>(prio.size()) || prio[i] > lt::dont_download;
      // Confirmed (finished or failed: no longer in handed_), or lost: open again.
      if (p.handed != Clock::time_point::max() &&
          (p.have || handed.count(i) == 0 || now - p.handed > kHandedTimeout)) {
        if (!p.have && handed.count(i) != 0) {
          std::lock_guard lock(mu_);
          Forget(i);  // lost: its room is free again
        }
        p.handed = Clock::time_point::max();
      }
    }
    std::sort(members.begin(), members.end());
    members.erase(std::unique(members.begin(), members.end()), members.end());
    if (members.size() > 1) alone_since_ = Clock::time_point::max();
    if (members.size() == 1 && alone_since_ == Clock::time_point::max()) alone_since_ = now;
    if (debug_ && (peers.size() != debug_peers_ || s.num_incomplete != incomplete_before)) {
      debug_peers_ = peers.size();
      Log("peers " + std::to_string(peers.size()) +
          ", tracker: " + std::to_string(s.num_incomplete) + " downloading, " +
          std::to_string(s.num_complete) + " complete, " + std::to_string(s.list_peers) + " known");
    }
    if (debug_ && members != members_) {
      Log("agents " + std::to_string(members.size()) + " at " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch())
                  .count() %
              100000));
    }
    if (members != members_ || ranks_.empty()) {
      // This agent's rank for each unit among the agents it sees (0: the owner).
      auto rank = [&](int unit) {
        const uint64_t mine = Weight(self_id_, unit);
        return static_cast<int>(std::count_if(members.begin(), members.end(), [&](const auto& m) {
          return m != self_id_ && Weight(m, unit) > mine;
        }));
      };
      ranks_.resize(open_since_.size());
      for (size_t u = 0; u < ranks_.size(); ++u) ranks_[u] = rank(static_cast<int>(u));
      whole_rank_ = rank(kWholeImage);
    }
    const int front = static_cast<int>(std::count_if(
        pieces_.begin(), pieces_.end(), [](const Piece& p) { return p.have || p.available; }));
    if (front > front_) {
      front_ = front;
      front_moved_ = now;
    }
    members_ = std::move(members);
    agents_ = static_cast<int>(members_.size());
  } catch (const std::exception&) {
    return;  // the torrent is being removed: the helper is stopping
  }
  for (size_t u = 0; u < open_since_.size(); ++u) {
    bool open = false;
    const int first = static_cast<int>(u) * unit_pieces_;
    for (int i = first; i < std::min<int>(first + unit_pieces_, pieces_.size()) && !open; ++i) {
      open = pieces_[i].Open();
    }
    if (!open) {
      open_since_[u] = Clock::time_point::max();
    } else if (open_since_[u] == Clock::time_point::max()) {
      open_since_[u] = now;
    }
  }
}

void WebSeed::StartTransfers() {
  const auto now = Clock::now();
  if (finished_ || now < retry_at_ || started_ == Clock::time_point::max()) return;
  // Before the tracker answered, or while it counts more agents downloading than we see (they
  // are connecting): asking now would take units that are theirs.
  if (!asked_ && now - started_ < kMaxSettle &&
      (agents_ < incomplete_ || (incomplete_ < 0 && has_tracker_))) {
    return;
  }
  const bool alone =
      agents_ == 1 && alone_since_ != Clock::time_point::max() && now - alone_since_ >= kAloneAfter;
  // Each transfer holds the piece it is receiving: at most kPieceBuffers in all, whatever the
  // torrent's piece size (one transfer at least).
  const int by_memory = static_cast<int>(std::max<int64_t>(1, kPieceBuffers / ti_->piece_length()));
  const int slots =
      std::min(by_memory, alone          ? config_.connections
                          : agents_ == 1 ? 1
                                         : std::max(1, config_.connections / agents_));
  const int64_t total = ti_->total_size();
  // Seeing no other agent, long runs (from the start of a group before it is alone): if one
  // appears, a run is cut at the first unit that is not this agent's (Write).
  const int64_t max_run = agents_ == 1 ? std::clamp<int64_t>(total / (4 * config_.connections),
                                                             kAloneRunMin, kAloneRunMax)
                                       : kRackRunBytes;
  // The owner of an open unit may have this many to fetch before it: the wait before another
  // takes it over grows with them.
  const int64_t open_units = std::count_if(open_since_.begin(), open_since_.end(),
                                           [](auto t) { return t != Clock::time_point::max(); });
  // A unit takes the origin at least as long as ours in flight have taken so far: before the
  // first one ends (its time unknown) a slow origin would otherwise look like stuck owners.
  auto unit_time = unit_time_;
  for (const auto& t : transfers_) {
    const int units = std::max(1, (t->last - t->first) / unit_pieces_);
    unit_time = std::max<Clock::duration>(unit_time, (now - t->began) / units);
  }
  // Capped: an hour-long transfer times a large image's units must not overflow.
  const auto steal_after = std::min<Clock::duration>(
      kMaxStealAfter, kStealAfter + std::min<Clock::duration>(kMaxStealAfter, unit_time) *
                                        std::min<int64_t>(2 * open_units / agents_ + 1, 1000));
  // Which open units may this agent take now: its own, and others' that stayed open long enough.
  auto may_take = [&](int u) -> int {  // its rank, or -1
    if (open_since_[u] == Clock::time_point::max()) return -1;
    // From an origin that ignores Range every answer is the whole image: RackFeedsWhole orders
    // the agents, not the units.
    if (no_ranges_) return 0;
    const int rank = ranks_[u];
    if (rank > 0 && now - open_since_[u] < rank * steal_after) return -1;
    return rank;
  };
  if (RackFeedsWhole(now)) return;
  // An origin that ignores Range: one answer at a time brings the whole image (Write).
  while (static_cast<int>(transfers_.size()) < (no_ranges_ ? 1 : slots)) {
    // An own unit first, else the one of the lowest rank; among those, the one this agent's
    // weight is highest for. That order differs from agent to agent (as a random one would),
    // and it starts with the units this agent stays the owner of as more agents appear.
    // Before this agent sees another (a rack's agents see each other over a second or two),
    // every unit is its own: it takes them a group at a time, groups in its weights' order, so
    // that if it turns out to be alone what is left is a few long runs (random single units cut
    // the rest into as many short requests). A held unit that turns out to be another's costs
    // nothing: the other sees it held. Alone, the lowest open unit: each run reaches the next
    // held one, and the image is hashed as its in-order front arrives.
    const bool by_group = agents_ == 1;
    int unit = -1;
    int best_rank = std::numeric_limits<int>::max();
    uint64_t best_weight = 0;
    for (int u = 0; u < static_cast<int>(open_since_.size()); ++u) {
      const int rank = may_take(u);
      if (rank < 0 || rank > best_rank) continue;
      // Within a group, the first unit: its weight is the group's less its index.
      const uint64_t w = alone      ? std::numeric_limits<uint64_t>::max() - u
                         : by_group ? Weight(self_id_, -1 - u / kGroupUnits) - u % kGroupUnits
                                    : Weight(self_id_, u);
      if (rank == best_rank && w <= best_weight) continue;
      unit = u;
      best_rank = rank;
      best_weight = w;
    }
    if (unit < 0) return;
    int first = unit * unit_pieces_;
    while (!pieces_[first].Open()) ++first;  // the unit is open: one of its pieces is
    int last = first;
    int64_t bytes = 0;
    while (last < static_cast<int>(pieces_.size()) && pieces_[last].Open() && bytes < max_run &&
           (last / unit_pieces_ == unit || may_take(last / unit_pieces_) >= 0)) {
      bytes += ti_->piece_size(lt::piece_index_t{last});
      ++last;
    }
    auto t = std::make_unique<Transfer>();
    t->owner = this;
    t->first = first;
    t->last = last;
    t->pos = static_cast<int64_t>(first) * ti_->piece_length();
    t->end = std::min<int64_t>(static_cast<int64_t>(last) * ti_->piece_length(), total);
    t->began = now;
    t->kind = agents_ == 1 ? kAlone : best_rank == 0 ? kOwned : kTakenOver;
    t->probe = !no_ranges_;
    if (debug_) {
      Log("ask pieces " + std::to_string(first) + "-" + std::to_string(last - 1) + " rank " +
          std::to_string(best_rank) + " of " + std::to_string(agents_) + " steal " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(steal_after).count()) +
          " unit " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(unit_time).count()) +
          " open " + std::to_string(open_units) + " waited " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(now - open_since_[unit])
                  .count()) +
          " at " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch())
                  .count() %
              100000));
    }
    Result<RedirectChain> chain = RedirectChain::Create(config_.url);
    if (!chain.ok()) {
      Log("the URL cannot be parsed");
      finished_ = true;
      return;
    }
    t->chain.emplace(std::move(*chain));
    for (int i = first; i < last; ++i) pieces_[i].in_flight = true;
    for (int u = first / unit_pieces_; u <= (last - 1) / unit_pieces_; ++u) {
      open_since_[u] = Clock::time_point::max();
    }
    if (Status s = Launch(*t); !s.ok()) {
      for (int i = first; i < last; ++i) pieces_[i].in_flight = false;
      Log(s.detail());
      retry_at_ = now + kMaxBackOff;
      return;
    }
    transfers_.push_back(std::move(t));
    asked_ = true;
  }
}

// An origin that ignores Range sends the whole image to each request: in a rack one answer at a
// time feeds every agent (a seed may too). Another's answer runs while the front moves; once it
// stood still, the agents take the image from the origin in turn, the one ranked r after
// (r + 1) x (3 s + two units' time) + r x the time the front took so far (the new answer brings
// that prefix again before it brings new pieces). Times are the front's own pace. An agent whose
// answer gave way waits a whole turn from then.
bool WebSeed::RackFeedsWhole(Clock::time_point now) const {
  if (!no_ranges_ || config_.streaming || !transfers_.empty()) return false;
  const auto prefix_time =
      front_ > 0 && front_moved_ > started_ ? front_moved_ - started_ : Clock::duration::zero();
  const auto unit_time = front_ > 0 ? prefix_time / front_ * unit_pieces_ : prefix_time;
  return now - std::max(front_moved_, left_at_) <
         (whole_rank_ + 1) * (kStealAfter + 2 * unit_time) + whole_rank_ * prefix_time;
}

size_t WebSeed::HeaderThunk(char* data, size_t size, size_t n, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  const std::string_view line(data, size * n);
  if (auto sl = ParseStatusLine(line)) {
    // Each answer of the request (a proxy's, a redirect's) starts afresh.
    t.status = sl->code;
    t.location.clear();
    t.range.reset();
    t.length.reset();
  } else if (auto loc = HeaderValue(line, "Location")) {
    t.location = std::string(*loc);
  } else if (auto cr = HeaderValue(line, "Content-Range")) {
    t.range = ParseContentRange(*cr);
  } else if (auto cl = HeaderValue(line, "Content-Length")) {
    t.length = ParseContentLength(*cl);
  }
  return size * n;
}

size_t WebSeed::WriteThunk(char* data, size_t size, size_t n, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  return t.owner->Write(t, data, size * n);
}

Status WebSeed::Launch(Transfer& t) {
  t.curl.reset(curl_easy_init());
  if (!t.curl) return Status::Error(Code::kInternal, "curl_easy_init failed");
  t.status = 0;
  t.location.clear();
  t.range.reset();
  t.length.reset();
  t.at = -1;
  t.piece.clear();
  CURL* c = t.curl.get();
  const bool https = config_.url.rfind("https:", 0) == 0;
  // As the agent's downloads (agent/fetch/download.cpp): http and https only, from an https URL
  // https only; redirects are RedirectChain's; the proxy is chosen per request; TLS verified.
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, https ? "https" : "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  // HTTP/1.1: a paused whole-image answer holds its origin back by TCP's own flow control.
  curl_easy_setopt(c, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 1L << 20);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "byoi-agent/" BYOI_VERSION);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, t.errbuf);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &HeaderThunk);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &WriteThunk);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, config_.insecure ? 0L : 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, config_.insecure ? 0L : 2L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "");
  curl_easy_setopt(c, CURLOPT_HEADEROPT, CURLHEADER_SEPARATE);
  curl_easy_setopt(c, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  curl_easy_setopt(c, CURLOPT_PROXYAUTH, CURLAUTH_BASIC);
  curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYPEER, config_.insecure ? 0L : 1L);
  curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYHOST, config_.insecure ? 0L : 2L);
  if (!config_.ca_bundle.empty()) {
    curl_easy_setopt(c, CURLOPT_CAINFO, config_.ca_bundle.c_str());
    curl_easy_setopt(c, CURLOPT_PROXY_CAINFO, config_.ca_bundle.c_str());
  }
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, kConnectTimeoutMs);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, kStallSeconds);

  // The manifest's headers go to its URL's origin only (redirect_chain.hpp), on every request.
  curl_slist* list = nullptr;
  auto add = [&list](const std::string& line) {
    if (curl_slist* next = curl_slist_append(list, line.c_str())) list = next;
  };
  if (t.chain->at_origin()) {
    for (const HttpHeader& h : config_.headers) add(h.name + ": " + h.value);
  }
  add("Range: bytes=" + std::to_string(t.pos) + "-" + std::to_string(t.end - 1));
  t.headers.reset(list);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, t.headers.get());
  static const ProxyEnvironment env = ProxyEnvironment::FromProcess();
  Result<ProxyChoice> proxy = ChooseProxy(t.chain->url(), config_.proxy, env);
  if (!proxy.ok()) return Status::Error(Code::kInvalid, proxy.status().detail());
  curl_easy_setopt(c, CURLOPT_PROXY, proxy->url.c_str());
  if (curl_easy_setopt(c, CURLOPT_URL, t.chain->url().c_str()) != CURLE_OK) {
    return Status::Error(Code::kInvalid, "the URL cannot be parsed");
  }
  if (curl_multi_add_handle(static_cast<CURLM*>(multi_), c) != CURLM_OK) {
    return Status::Error(Code::kInternal, "curl_multi_add_handle failed");
  }
  return Status::Ok();
}

size_t WebSeed::Write(Transfer& t, const char* data, size_t size) {
  if (t.status != 200 && t.status != 206) return size;  // a redirect's body
  const int64_t total = ti_->total_size();
  if (t.at < 0) {
    if (t.status == 206) {
      if (!t.range || t.range->first != static_cast<uint64_t>(t.pos) ||
          t.range->complete != static_cast<uint64_t>(total)) {
        t.bad = "the origin answered another range than asked (or the image's size differs)";
        return 0;
      }
      t.at = t.pos;
      // An origin that caps what one answer carries: the run ends with the last whole piece it
      // sends, the rest is asked again.
      const int64_t sent_end = static_cast<int64_t>(t.range->last) + 1;
      if (sent_end < t.end) {
        t.end = sent_end / ti_->piece_length() * ti_->piece_length();
        if (t.end <= t.pos) {
          t.bad = "the origin's ranges are shorter than a piece";
          return 0;
        }
      }
    } else {
      t.at = 0;
      // An origin that ignores Range sends the whole image from byte 0 whatever was asked: every
      // request would start there again (a run at the end costing the whole image). One answer
      // takes every piece not held, in order, and no other request is made while it runs; in
      // stream mode it pauses at the window's end (TCP holds the origin back) until the window
      // moves (Resume).
      no_ranges_ = true;
      for (int p = t.first; p < t.last; ++p) pieces_[p].in_flight = false;
      const bool taken = std::any_of(transfers_.begin(), transfers_.end(),
                                     [](const auto& other) { return other->whole; });
      if (taken) {
        t.complete = true;  // another answer brings the image
        t.pos = t.end;
        return 0;
      }
      if (t.length && *t.length != static_cast<uint64_t>(total)) {
        t.bad = "the origin's whole image is not the torrent's size";
        return 0;
      }
      // In ram mode the agent serves the rack: of the rack's first answers, the one of the
      // agent ranked first for the image goes on and feeds the others (RackFeedsWhole says when
      // to take over from it). A streaming agent serves nobody and keeps its own.
      t.feeds_rack = !config_.streaming;
      if (t.feeds_rack && t.probe && agents_ > 1 && whole_rank_ > 0) {
        return LeaveToRack(t, "another agent ranks first");
      }
      t.kind = agents_ == 1 ? kAlone : whole_rank_ == 0 ? kOwned : kTakenOver;
      t.whole = true;
      t.first = 0;
      t.last = static_cast<int>(pieces_.size());
      t.pos = 0;
      t.end = total;
      t.held_before.resize(pieces_.size());
      for (size_t p = 0; p < pieces_.size(); ++p) {
        t.held_before[p] = pieces_[p].Held() || (!t.probe && pieces_[p].available);
        pieces_[p].in_flight = !pieces_[p].Held();
      }
    }
  }
  size_t i = std::min(size, std::exchange(t.taken_of_next, 0));
  while (i < size) {
    if (t.pos >= t.end) {
      t.complete = true;
      return 0;  // past the run (a 200's whole image): enough
    }
    if (t.at < t.pos) {
      const size_t skip = static_cast<size_t>(std::min<int64_t>(size - i, t.pos - t.at));
      i += skip;
      t.at += skip;
      continue;
    }
    const int piece = static_cast<int>(t.pos / ti_->piece_length());
    if (t.whole && t.piece.empty()) {
      // The pieces held by now (from peers) pass by; once every piece is held, the answer ends.
      int next = piece;
      while (next < t.last && pieces_[next].Held() && !Overtaken(t, next)) {
        pieces_[next++].in_flight = false;
      }
      if (next == t.last) {
        t.complete = true;
        t.pos = t.end;
        return 0;
      }
      if (next > piece) {
        t.pos = static_cast<int64_t>(next) * ti_->piece_length();
        continue;
      }
      if (!pieces_[piece].wanted) {
        // Past a streaming agent's window: the answer pauses until it moves (Resume). curl
        // passes these bytes again then; the first i are taken already.
        t.paused = true;
        t.taken_of_next = i;
        return CURL_WRITEFUNC_PAUSE;
      }
    }
    if (t.whole && Overtaken(t, piece)) return LeaveToRack(t, "another answer is ahead");
    const int64_t piece_end = static_cast<int64_t>(piece) * ti_->piece_length() +
                              ti_->piece_size(lt::piece_index_t{piece});
    const size_t take = static_cast<size_t>(std::min<int64_t>(size - i, piece_end - t.pos));
    if (t.piece.empty()) t.piece.reserve(static_cast<size_t>(piece_end - t.pos));
    t.piece.insert(t.piece.end(), data + i, data + i + take);
    i += take;
    t.at += static_cast<int64_t>(take);
    t.pos += static_cast<int64_t>(take);
    if (t.pos == piece_end) {
      Hand(piece, std::move(t.piece), t.kind);
      t.piece = {};
      t.got_piece = true;
      // Answers that run side by side: the one that brings a piece first goes on.
      if (t.whole && Overtaken(t, piece)) return LeaveToRack(t, "another answer is ahead");
      if (t.kind == kAlone && !t.whole && t.pos < t.end && agents_ > 1 &&
          ranks_[static_cast<size_t>(piece + 1) / unit_pieces_] > 0) {
        // Taken before this agent saw the rack: the rest of the run, from the first unit that is
        // another's, is left to its owner (the connection is closed).
        for (int p = piece + 1; p < t.last; ++p) pieces_[p].in_flight = false;
        Log("another agent appeared: pieces " + std::to_string(piece + 1) + "-" +
            std::to_string(t.last - 1) + " of a run are left to their owners");
        t.last = piece + 1;
        t.end = t.pos;
        t.complete = true;
        return 0;
      }
    }
  }
  if (t.pos >= t.end) t.complete = true;
  return size;
}

// A piece of a ram-mode whole-image answer that came to be held or offered by a peer since the
// answer began: another answer (or a seed) is ahead and feeds this agent. For a take-over, the
// pieces offered when it began (a stalled answer's, a partial seed's) are no sign of it; for the
// rack's first answers they are. Confirmed pieces only: the one this answer just handed over
// awaits libtorrent's verdict and is its own.
bool WebSeed::Overtaken(const Transfer& t, int piece) const {
  const Piece& p = pieces_[piece];
  return t.feeds_rack && (p.have || p.available) && !t.held_before[piece];
}

// A whole-image answer paused at a streaming agent's window goes on once the window reaches the
// piece it stopped at. One with a wanted piece open behind it (it failed its hash check) ends:
// the window cannot move past that piece, and only a new answer brings it.
void WebSeed::Resume() {
  for (auto& t : transfers_) {
    if (!t->paused || !t->curl) continue;
    const int at = static_cast<int>(t->pos / ti_->piece_length());
    if (std::any_of(pieces_.begin(), pieces_.begin() + at,
                    [](const Piece& p) { return p.Open(); })) {
      t->complete = true;  // not the origin's failure
      Abandon(*t, CURLE_OK);
      continue;
    }
    if (!pieces_[at].wanted && !pieces_[at].have) continue;
    t->paused = false;
    // curl passes the kept bytes to Write at once; a Write that ended the answer makes this
    // CURLE_WRITE_ERROR, and the transfer ends at the next curl_multi_perform.
    const CURLcode code = curl_easy_pause(t->curl.get(), CURLPAUSE_CONT);
    if (code != CURLE_OK && code != CURLE_WRITE_ERROR) Abandon(*t, code);
  }
  DropEnded();
}

void WebSeed::DropEnded() {
  transfers_.erase(
      std::remove_if(transfers_.begin(), transfers_.end(), [](const auto& t) { return !t->curl; }),
      transfers_.end());
}

void WebSeed::Abandon(Transfer& t, int curl_code) {
  curl_multi_remove_handle(static_cast<CURLM*>(multi_), t.curl.get());
  Finish(t, curl_code);
}

size_t WebSeed::LeaveToRack(Transfer& t, const char* why) {
  Log(std::string(why) + ": this answer from the origin ends, the image comes from the swarm");
  left_at_ = Clock::now();  // its next turn counts from now (RackFeedsWhole)
  const int next = static_cast<int>(t.pos / ti_->piece_length());
  for (int p = next; p < t.last; ++p) pieces_[p].in_flight = false;
  t.last = next;
  t.end = t.pos;
  t.complete = true;
  return 0;
}

void WebSeed::Hand(int piece, std::vector<char>&& bytes, int kind) {
  Piece& p = pieces_[piece];
  p.in_flight = false;
  if (p.have) return;
  const int64_t size = static_cast<int64_t>(bytes.size());
  {
    // A fast origin must not pile pieces up ahead of libtorrent: at most kMaxHandedBytes wait
    // for its verdict (a lost one is forgotten after kHandedTimeout).
    std::unique_lock lock(mu_);
    handed_changed_.wait_for(lock, kHandedTimeout, [&] {
      return stop_ || handed_bytes_ + size <= std::max(kMaxHandedBytes, size);
    });
    if (handed_.emplace(piece, size).second) handed_bytes_ += size;
  }
  p.handed = Clock::now();
  fetched_[kind] += size;
  try {
    // The overload that moves the piece to libtorrent's thread and returns at once: the
    // blocking one waited for that thread on every piece (about a quarter of a swarm of one's
    // time on a fast origin).
    handle_.add_piece(lt::piece_index_t{piece}, std::move(bytes));
  } catch (const std::exception&) {
    // The torrent is being removed: the helper is stopping.
  }
}

bool WebSeed::Forget(int piece) {  // REQUIRES: mu_ held
  auto it = handed_.find(piece);
  if (it == handed_.end()) return false;
  handed_bytes_ -= it->second;
  handed_.erase(it);
  handed_changed_.notify_all();
  return true;
}

void WebSeed::Finish(Transfer& t, int curl_code) {
  const auto now = Clock::now();
  const bool redirect =
      t.status == 301 || t.status == 302 || t.status == 303 || t.status == 307 || t.status == 308;
  if (redirect && curl_code == CURLE_OK && !t.location.empty()) {
    if (Status s = t.chain->Follow(t.location); !s.ok()) {
      t.bad = "redirect refused: " + s.detail();
    } else if (Status l = Launch(t); !l.ok()) {
      t.bad = l.detail();
    } else {
      return;
    }
  }
  // The pieces the request did not bring are open again (a piece cut short is asked again whole).
  for (int i = static_cast<int>(t.pos / ti_->piece_length()); i < t.last; ++i) {
    pieces_[i].in_flight = false;
  }
  t.curl.reset();
  t.headers.reset();
  if (t.complete) {
    failures_ = 0;
    if (!no_ranges_) {
      const int units = std::max(1, (t.last - t.first) / unit_pieces_);
      unit_time_ = (now - t.began) / units;
    }
    return;
  }
  if (t.got_piece) failures_ = 0;
  ++failures_;
  retry_at_ = now + std::min<Clock::duration>(
                        kMaxBackOff, std::chrono::seconds(1LL << std::min(failures_ - 1, 5)));
  // Never the URL: it may hold userinfo or a presigned query.
  if (!t.bad.empty()) {
    Log(t.bad);
  } else if (t.status >= 400) {
    Log("the origin answered HTTP " + std::to_string(t.status));
  } else if (curl_code != CURLE_OK) {
    Log(curl_easy_strerror(static_cast<CURLcode>(curl_code)));
  } else {
    Log("the origin's answer (HTTP " + std::to_string(t.status) + ") ended before the run");
  }
}

}  // namespace byoi
