// byoi-swarm: the agent's BitTorrent peer (docs/pipeline.md, "Swarm downloads"), a program of its
// own so that libtorrent and the Boost 1.74 it was built with never share a process with the
// agent's Boost 1.81 (libtorrent's ABI carries Boost types: error_code changed layout in 1.78).
// The agent runs it with an argument vector (agent/swarm/swarm.hpp) and reads its events; nothing
// else should run it.
//
//   byoi-swarm create IMAGE OUT --web-seed URL [--tracker URL]... [--piece-length BYTES]
//       writes a single-file .torrent of IMAGE (v1 + v2 hashes), prints `infohash <hex>`.
//   byoi-swarm fetch (--torrent FILE | --magnet URI) --capacity BYTES --web-seed-file FILE
//       [--upload-rate B/s] [--listen IFACES] [--lsd 0|1] [--dht-nodes HOST:PORT,...]
//       [--peer IP:PORT]... [--max-hash-failures N] [--stream-window BYTES]
//       downloads into file descriptor 3 (the agent's RAM image, a memfd) and seeds it until its
//       standard input is closed. With --stream-window (stream mode, stream_window.hpp): only
//       the window of pieces ahead of the agent's `front N` (read on stdin), uploading nothing.
//       Events on stdout, one a line, space-separated key=value:
//         info size= pieces= piece_length= infohash=
//         progress done= total= peers= seeds= from_peers= from_web_seed= uploaded= hash_failures=
//         piece N       (piece N passed its hash check and is written in the memfd; in stream mode,
//                       once, for a piece of the window)
//         complete
//         error kind=<invalid|too_big|failed> <detail...>
//       then exits 0 after `complete` and the end of stdin, 1 after `error`, 2 on usage.
//
// The web seed is ours, not libtorrent's (web_seed.hpp says how the rack divides the origin's
// work): it hands libtorrent whole pieces (add_piece), checked against the torrent like a peer's.
//
// Pieces: libtorrent's mmap disk I/O, the torrent's one file renamed to `image` in a private
// directory where `image` is a symlink to /proc/self/fd/3: libtorrent maps the memfd and every
// block lands in it, each piece checked against the torrent's hash before it counts (a peer that
// sent a bad one is banned: smart ban). `piece N` is sent once the piece passed and all its
// blocks are in the memfd. The agent checks the whole image against the manifest's checksum.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <libtorrent/add_torrent_params.hpp>
#include <libtorrent/alert_types.hpp>
#include <libtorrent/bencode.hpp>
#include <libtorrent/create_torrent.hpp>
#include <libtorrent/error_code.hpp>
#include <libtorrent/hex.hpp>
#include <libtorrent/ip_filter.hpp>
#include <libtorrent/magnet_uri.hpp>
#include <libtorrent/mmap_disk_io.hpp>
#include <libtorrent/peer_info.hpp>
#include <libtorrent/session.hpp>
#include <libtorrent/session_params.hpp>
#include <libtorrent/torrent_handle.hpp>
#include <libtorrent/torrent_info.hpp>
#include <libtorrent/torrent_status.hpp>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/swarm/stream_window.hpp"
#include "agent/swarm/web_seed.hpp"

namespace lt = libtorrent;

namespace {

constexpr int kImageFd = 3;
constexpr std::chrono::seconds kReannounce{3};
// While pieces that passed are being written to the memfd: how often the download queue is read.
constexpr std::chrono::milliseconds kFlushLook{10};
// A .torrent is small: 64 MiB of piece hashes describe a terabyte in 256 KiB pieces.
constexpr int kMaxTorrentBytes = 64 << 20;

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr, "byoi-swarm: %s\n", why.c_str());
  std::exit(2);
}

void Event(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

// The directory libtorrent believes it saves into, and its one symlink (Fetch): removed at any
// exit, a failure's included.
std::string work_dir, work_link;

void RemoveWorkDir() {
  if (!work_link.empty()) ::unlink(work_link.c_str());
  if (!work_dir.empty()) ::rmdir(work_dir.c_str());
}

[[noreturn]] void Fail(const std::string& kind, const std::string& detail) {
  std::string one_line = detail;
  for (char& c : one_line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  Event("error kind=" + kind + " " + one_line);
  // Not exit(): the web seed's thread may still run, and static destructors would pull what
  // it reads from under it. _Exit runs no atexit handler: the work directory goes here.
  RemoveWorkDir();
  std::_Exit(1);
}

struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> named;
  std::string Get(const std::string& key, const std::string& fallback = {}) const {
    auto it = named.find(key);
    return it == named.end() ? fallback : it->second;
  }
  std::vector<std::string> All(const std::string& key) const {
    std::vector<std::string> out;
    for (auto [it, end] = named.equal_range(key); it != end; ++it) out.push_back(it->second);
    return out;
  }
};

Args ParseArgs(int argc, char** argv, int first) {
  Args args;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      if (i + 1 >= argc) Usage("missing value for " + a);
      args.named.emplace(a.substr(2), argv[++i]);
    } else {
      args.positional.push_back(a);
    }
  }
  return args;
}

int64_t Number(const std::string& text, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < 0) Usage("bad " + what + ": " + text);
  return v;
}

int Create(const Args& args) {
  if (args.positional.size() != 2) Usage("create IMAGE OUT --web-seed URL [--tracker URL]...");
  const std::string& image = args.positional[0];
  const std::string& out = args.positional[1];
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0) Fail("invalid", image + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) Fail("invalid", image + ": not a regular file");
  if (st.st_size == 0) Fail("invalid", image + ": empty file");
  lt::file_storage fs;
  lt::add_files(fs, image);
  const int piece_length = static_cast<int>(Number(args.Get("piece-length", "0"), "piece length"));
  lt::create_torrent ct(fs, piece_length);
  for (const std::string& url : args.All("web-seed")) ct.add_url_seed(url);
  int tier = 0;
  for (const std::string& url : args.All("tracker")) ct.add_tracker(url, tier++);
  ct.set_creator("byoi-agent");
  lt::error_code ec;
  std::string parent =
      image.find('/') == std::string::npos ? "." : image.substr(0, image.rfind('/'));
  if (parent.empty()) parent = "/";
  lt::set_piece_hashes(ct, parent, ec);
  if (ec) Fail("failed", "hashing " + image + ": " + ec.message());
  std::vector<char> bytes;
  lt::bencode(std::back_inserter(bytes), ct.generate());
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) Fail("failed", "writing " + out + ": " + std::strerror(errno));
  lt::torrent_info ti(bytes.data(), static_cast<int>(bytes.size()), ec);
  if (ec) Fail("failed", "reading back " + out + ": " + ec.message());
  Event("infohash v1=" + lt::aux::to_hex(ti.info_hashes().v1.to_string()) +
        " v2=" + lt::aux::to_hex(ti.info_hashes().v2.to_string()));
  return 0;
}

std::vector<char> ReadTorrentFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("failed", "opening " + path + ": " + std::strerror(errno));
  std::vector<char> bytes;
  char buf[65536];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    bytes.insert(bytes.end(), buf, buf + f.gcount());
    if (bytes.size() > static_cast<size_t>(kMaxTorrentBytes)) {
      Fail("invalid", "the .torrent is larger than 64 MiB");
    }
  }
  return bytes;
}

int Fetch(const Args& args) {
  const int64_t capacity = Number(args.Get("capacity", "0"), "capacity");
  if (capacity <= 0) Usage("fetch needs --capacity");
  struct stat st {};
  if (::fstat(kImageFd, &st) != 0) Usage("file descriptor 3 is not open");
  const int max_hash_failures =
      static_cast<int>(Number(args.Get("max-hash-failures", "3"), "max hash failures"));
  const int64_t stream_window = Number(args.Get("stream-window", "0"), "stream window");
  std::unique_ptr<byoi_swarm::StreamWindow> window;
  if (stream_window > 0) window = std::make_unique<byoi_swarm::StreamWindow>(stream_window);

  // The directory libtorrent believes it saves into, under $TMPDIR (else /tmp): one symlink,
  // `image`, to the memfd.
  std::string dir_template = byoi::TempDir() + "/byoi-swarm-XXXXXX";
  if (::mkdtemp(dir_template.data()) == nullptr) {
    Fail("failed", std::string("mkdtemp: ") + std::strerror(errno));
  }
  work_dir = dir_template;
  std::atexit(RemoveWorkDir);
  const std::string link = work_dir + "/image";
  if (::symlink("/proc/self/fd/3", link.c_str()) != 0) {
    Fail("failed", std::string("symlink: ") + std::strerror(errno));
  }
  work_link = link;

  // The web seed: the manifest's URL, headers and the agent's download settings (secrets: never
  // on our command line).
  byoi::Result<byoi::WebSeedConfig> web_seed = byoi::ReadWebSeedFile(args.Get("web-seed-file"));
  if (!web_seed.ok()) Usage("fetch needs --web-seed-file: " + web_seed.status().detail());

  lt::add_torrent_params atp;
  lt::error_code ec;
  if (!args.Get("torrent").empty()) {
    std::vector<char> bytes = ReadTorrentFile(args.Get("torrent"));
    lt::load_torrent_limits limits;
    limits.max_buffer_size = kMaxTorrentBytes;
    try {
      atp.ti = std::make_shared<lt::torrent_info>(
          lt::span<char const>(bytes.data(), static_cast<long>(bytes.size())), limits,
          lt::from_span);
    } catch (const std::exception& e) {
      Fail("invalid", std::string("reading the .torrent: ") + e.what());
    }
  } else if (!args.Get("magnet").empty()) {
    lt::parse_magnet_uri(args.Get("magnet"), atp, ec);
    if (ec) Fail("invalid", "reading the magnet link: " + ec.message());
  } else {
    Usage("fetch needs --torrent or --magnet");
  }
  // Peers and trackers come from the torrent and from us; the one web seed, the manifest's URL,
  // is ours (web_seed.hpp), not libtorrent's: a url-list names servers the manifest did not.
  atp.url_seeds.clear();
  atp.save_path = work_dir;
  atp.renamed_files[lt::file_index_t{0}] = "image";
  atp.flags &= ~lt::torrent_flags::auto_managed;
  atp.flags &= ~lt::torrent_flags::paused;
  if (atp.ti) {
    // The storage is the agent's fresh memfd: it holds no piece. Said so, libtorrent does not
    // hash the whole file to find out (a 4 GiB image: seconds before the first request). A
    // magnet's metadata comes later, and its storage is checked then.
    atp.have_pieces.resize(atp.ti->num_pieces(), false);
    atp.flags |= lt::torrent_flags::no_verify_files;
  }
  if (window) {
    // Nothing is served (stream_window.hpp says why). No piece is asked for until the window
    // is set (upload mode, which StreamWindow::Start leaves): a magnet's pieces would all be
    // wanted the moment its metadata arrived.
    atp.extensions.push_back(&byoi_swarm::NoUploadPlugin);
    atp.flags |= lt::torrent_flags::upload_mode;
  }

  // Stream mode: the torrent's pieces against the window.
  auto start_window = [&](const lt::torrent_info& ti, const lt::torrent_handle& th) {
    if (!window) return;
    const std::string refused = window->Start(ti, th);
    if (!refused.empty()) Fail("invalid", refused);
  };
  auto check_files = [&](const lt::torrent_info& ti) {
    if (ti.num_files() != 1) {
      Fail("invalid", "the torrent holds " + std::to_string(ti.num_files()) +
                          " files: an image torrent holds one");
    }
    if (ti.piece_length() > byoi::kMaxPieceBytes) {
      Fail("invalid", "the torrent's pieces are " + std::to_string(ti.piece_length()) +
                          " bytes, more than the " + std::to_string(byoi::kMaxPieceBytes) +
                          " taken");
    }
    if (ti.total_size() > capacity) {
      Fail("too_big", "the torrent's image is " + std::to_string(ti.total_size()) +
                          " bytes, more than the RAM budget of " + std::to_string(capacity));
    }
    Event("info size=" + std::to_string(ti.total_size()) + " pieces=" +
          std::to_string(ti.num_pieces()) + " piece_length=" + std::to_string(ti.piece_length()) +
          " infohash=" + lt::aux::to_hex(ti.info_hashes().get_best().to_string()));
  };
  if (atp.ti) {
    check_files(*atp.ti);
    atp.ti->set_web_seeds({});
  }
  // Our peer id, whole (a 20-byte fingerprint is the id): the rack's agents rank themselves by it
  // for each unit of the origin's work.
  const std::string peer_id = byoi::NewAgentPeerId(window != nullptr);

  lt::settings_pack sp;
  // block_progress: each block's source, for the byte counts; BYOI_SWARM_DEBUG=1: every alert.
  sp.set_int(lt::settings_pack::alert_mask,
             std::getenv("BYOI_SWARM_DEBUG") != nullptr
                 ? lt::alert_category::all
                 : lt::alert_category::error | lt::alert_category::status |
                       lt::alert_category::storage | lt::alert_category::block_progress |
                       lt::alert_category::piece_progress);
  sp.set_str(lt::settings_pack::peer_fingerprint, peer_id);
  // Room for every block alert of a second at 10 Gbit/s between two reads of the queue.
  sp.set_int(lt::settings_pack::alert_queue_size, 200000);
  // The DHT only as the rack's private one, from the nodes given (libtorrent would otherwise
  // bootstrap from the public DHT's routers). A rack's nodes share a subnet, which libtorrent's
  // defaults against Sybil attacks on the public DHT refuse as routing entries; what a DHT node
  // says is only a peer's address, and pieces are checked whoever sends them.
  const std::string dht_nodes = args.Get("dht-nodes");
  sp.set_bool(lt::settings_pack::enable_dht, !dht_nodes.empty());
  sp.set_str(lt::settings_pack::dht_bootstrap_nodes, dht_nodes);
  if (!dht_nodes.empty()) {
    sp.set_bool(lt::settings_pack::dht_restrict_routing_ips, false);
    sp.set_bool(lt::settings_pack::dht_restrict_search_ips, false);
    sp.set_bool(lt::settings_pack::dht_ignore_dark_internet, false);
  }
  sp.set_bool(lt::settings_pack::enable_lsd, args.Get("lsd", "1") == "1");
  sp.set_bool(lt::settings_pack::enable_upnp, false);
  sp.set_bool(lt::settings_pack::enable_natpmp, false);
  sp.set_str(lt::settings_pack::listen_interfaces, args.Get("listen", "0.0.0.0:0,[::]:0"));
  sp.set_int(lt::settings_pack::upload_rate_limit,
             static_cast<int>(Number(args.Get("upload-rate", "0"), "upload rate")));
  // A rack's agents may sit behind one address (and tests run on 127.0.0.1).
  sp.set_bool(lt::settings_pack::allow_multiple_connections_per_ip, true);
  // Two agents that connect to each other at once (one learns of the other from the tracker as
  // the other learns of it from LSD) may each keep a different one of the two connections: the
  // handshake's rule (by peer id) and the listen port's (by endpoint) disagree, and both close.
  // libtorrent waits min_reconnect_time (60 s by default) before it dials a peer again: on a
  // rack's network, a second.
  sp.set_int(lt::settings_pack::min_reconnect_time, 1);
  // Announce to the torrent's trackers at once and often enough for a rack that boots together.
  sp.set_int(lt::settings_pack::min_announce_interval, 5);
  sp.set_bool(lt::settings_pack::announce_to_all_trackers, true);
  sp.set_bool(lt::settings_pack::announce_to_all_tiers, true);
  sp.set_int(lt::settings_pack::aio_threads, 2);
  // TCP between agents, not uTP: uTP's congestion control (LEDBAT) yields to TCP by design, so
  // peers would step aside for the very web seed download they are meant to spare.
  sp.set_bool(lt::settings_pack::enable_outgoing_utp, false);
  sp.set_bool(lt::settings_pack::enable_incoming_utp, false);
  // A rack's agents all connect to each other at once: past libtorrent's listen backlog of 5 the
  // kernel drops their SYNs, which then wait a second or more for their retransmission.
  sp.set_int(lt::settings_pack::listen_queue_size, 256);
  // Every peer of the rack may download from us at once (the default unchokes 8 at a time).
  sp.set_int(lt::settings_pack::unchoke_slots_limit, -1);
  // An agent that finished keeps every connection: libtorrent would close those to the peers it
  // counts upload-only, and a rack's agents that finished then no longer reached some still
  // downloading, whose last units stayed open until dozens of agents asked the origin for them.
  // In stream mode the window drains whenever the agent is slower than the swarm: libtorrent then
  // counts the torrent finished, and would close its connections to seeds just before the window
  // moves on.
  sp.set_bool(lt::settings_pack::close_redundant_connections, false);
  if (window) {
    // Stream mode: the pieces behind the front are gone (stream_window.hpp). Every peer stays
    // choked and gets no allowed-fast piece, so none asks; NoUploadPlugin drops what asks anyway.
    sp.set_int(lt::settings_pack::unchoke_slots_limit, 0);
    sp.set_int(lt::settings_pack::allowed_fast_set_size, 0);
    sp.set_int(lt::settings_pack::alert_mask,
               sp.get_int(lt::settings_pack::alert_mask) | lt::alert_category::piece_progress);
  }
  lt::session_params params(std::move(sp));
  // libtorrent's default disk I/O maps the memfd and hashes on threads of its own (its POSIX one
  // does every write and hash on the network thread: a swarm of one from a fast origin took about
  // twice as long). A piece passes from its store buffer, maybe before its blocks are in the
  // memfd: `piece N` waits for that (`flushing` below).
  params.disk_io_constructor = lt::mmap_disk_io_constructor;
  lt::session ses(std::move(params));
  if (Number(args.Get("upload-rate", "0"), "upload rate") > 0 || window) {
    // libtorrent exempts peers on local networks from rate limits (its local peer class) and
    // from the unchoke slots; a rack is one: every peer goes in the global class, which
    // --upload-rate limits and stream mode's 0 unchoke slots choke.
    lt::ip_filter classes;
    const std::uint32_t global = 1u
                                 << static_cast<std::uint32_t>(lt::session::global_peer_class_id);
    classes.add_rule(lt::make_address("0.0.0.0"), lt::make_address("255.255.255.255"), global);
    classes.add_rule(lt::make_address("::"),
                     lt::make_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), global);
    ses.set_peer_class_filter(classes);
  }
  lt::torrent_handle h = ses.add_torrent(std::move(atp), ec);
  if (ec) Fail("invalid", "adding the torrent: " + ec.message());
  // A torrent that skips the storage check leaves its first DHT announce (the one that finds
  // the rack's peers) to libtorrent's timer, minutes away: now.
  if (!dht_nodes.empty()) h.force_dht_announce();
  web_seed->streaming = window != nullptr;
  byoi::WebSeed web(std::move(*web_seed), h, peer_id);
  // The torrent's metadata, once known (a magnet link's comes from peers). Kept here: the
  // handle's torrent_file() is a round trip to libtorrent's network thread, too dear for each
  // block's alert.
  std::shared_ptr<const lt::torrent_info> ti = h.torrent_file();
  if (ti) {
    start_window(*ti, h);
    web.Start(ti);
  }
  for (const std::string& peer : args.All("peer")) {
    auto colon = peer.rfind(':');
    if (colon == std::string::npos) Usage("bad peer: " + peer);
    lt::error_code pec;
    auto addr = lt::make_address(peer.substr(0, colon), pec);
    if (pec) Usage("bad peer: " + peer);
    h.connect_peer(
        lt::tcp::endpoint(addr, static_cast<uint16_t>(Number(peer.substr(colon + 1), "port"))));
  }

  // BYOI_SWARM_DEBUG=1 in the agent's environment: every libtorrent alert on stderr.
  const bool verbose = std::getenv("BYOI_SWARM_DEBUG") != nullptr;
  // Bytes of the pieces that passed, by source: a piece's blocks from peers as they arrived
  // (connections come and go faster than any sampling), the rest of a piece the web seed handed
  // over from it.
  int64_t from_peers = 0;
  int64_t from_web_seed = 0;
  std::map<int, int64_t> peer_bytes;  // piece -> bytes of its blocks from peers, until it passes
  std::map<int, int> failures;        // piece -> hash failures
  int hash_failures = 0;
  // Pieces that passed with blocks still being written to the memfd (they stay in the picker's
  // download queue until the last is): told the agent once written, as the agent reads a piece
  // from the memfd as soon as it is told.
  std::set<int> flushing;
  auto last_flush_look = std::chrono::steady_clock::now();
  bool finished = false;  // every piece passed (ram mode)
  bool complete = false;  // ... and is in the memfd, or the stream window's every piece is
  bool reported = false;
  auto last_report = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  auto last_announce = std::chrono::steady_clock::now();
  byoi_swarm::CommandReader commands;
  for (;;) {
    const byoi_swarm::CommandReader::Commands c = commands.Poll();
    if (c.stop) break;
    if (window && c.front >= 0) window->MoveFront(c.front, h);
    std::vector<lt::alert*> alerts;
    ses.pop_alerts(&alerts);
    for (lt::alert* a : alerts) {
      if (verbose) std::fprintf(stderr, "byoi-swarm: %s\n", a->message().c_str());
      if (auto* b = lt::alert_cast<lt::block_finished_alert>(a)) {
        // A block of a piece the web seed handed over (add_piece) has no peer: port 0.
        if (ti && b->endpoint.port() != 0) {
          const int64_t block = 16 << 10;
          const int64_t piece = ti->piece_size(b->piece_index);
          const int64_t bytes = std::min(block, piece - int64_t{b->block_index} * block);
          peer_bytes[static_cast<int>(b->piece_index)] += std::max<int64_t>(bytes, 0);
        }
      } else if (auto* pf = lt::alert_cast<lt::piece_finished_alert>(a)) {
        const int piece = static_cast<int>(pf->piece_index);
        const int64_t size = ti ? ti->piece_size(pf->piece_index) : 0;
        const int64_t peers = std::min(size, peer_bytes[piece]);
        peer_bytes.erase(piece);
        if (web.TakeHanded(piece)) {
          from_peers += peers;
          from_web_seed += size - peers;
        } else {
          from_peers += size;
        }
        flushing.insert(piece);
      } else if (auto* m = lt::alert_cast<lt::metadata_received_alert>(a)) {
        ti = m->handle.torrent_file();
        check_files(*ti);
        start_window(*ti, m->handle);
        web.Start(ti);
      } else if (auto* f = lt::alert_cast<lt::hash_failed_alert>(a)) {
        ++hash_failures;
        peer_bytes.erase(static_cast<int>(f->piece_index));
        web.HashFailed(static_cast<int>(f->piece_index));
        int n = ++failures[static_cast<int>(f->piece_index)];
        // libtorrent bans the peer that sent a bad piece; a piece that keeps failing has no good
        // source: the torrent does not describe the web seed's bytes.
        if (n >= max_hash_failures) {
          Fail("failed", "piece " + std::to_string(static_cast<int>(f->piece_index)) +
                             " failed its hash check " + std::to_string(n) +
                             " times: the torrent does not match the image its web seed serves");
        }
      } else if (auto* e = lt::alert_cast<lt::torrent_error_alert>(a)) {
        Fail("failed", e->message());
      } else if (auto* fe = lt::alert_cast<lt::file_error_alert>(a)) {
        Fail("failed", fe->message());
      } else if (auto* sc = lt::alert_cast<lt::state_changed_alert>(a)) {
        if (sc->state == lt::torrent_status::checking_files) {
          std::fputs("byoi-swarm: hashing the storage to find the pieces it holds\n", stderr);
        }
      } else if (lt::alert_cast<lt::torrent_finished_alert>(a)) {
        // Stream mode: finished means the window is, not the image.
        if (!window) finished = true;
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (!flushing.empty() && now - last_flush_look >= kFlushLook) {
      last_flush_look = now;
      std::set<int> writing;
      for (const auto& q : h.get_download_queue()) writing.insert(static_cast<int>(q.piece_index));
      for (auto it = flushing.begin(); it != flushing.end();) {
        const int piece = *it;
        if (writing.count(piece) != 0) {
          ++it;
          continue;
        }
        it = flushing.erase(it);
        // The agent hashes (and in stream mode writes) the in-order front; a window reports a
        // piece once.
        if (!window || window->Passed(piece)) {
          Event("piece " + std::to_string(piece));
          if (window) complete = window->complete();
        }
      }
    }
    if (finished && flushing.empty()) complete = true;
    // A rack's agents start within seconds of each other: a tracker's answer holds only those
    // that announced before. Until the image is complete, ask again every few seconds (whatever
    // interval the tracker asks for) so that every agent soon knows every other.
    if (!complete && now - last_announce >= kReannounce) {
      last_announce = now;
      h.force_reannounce(0, -1, lt::torrent_handle::ignore_min_interval);
    }
    if (now - last_report >= std::chrono::milliseconds(200) || (complete && !reported)) {
      last_report = now;
      lt::torrent_status s = h.status();
      std::vector<lt::peer_info> peers;
      h.get_peer_info(peers);
      int npeers = 0;
      for (const auto& p : peers) {
        if (p.connection_type == lt::peer_info::standard_bittorrent) ++npeers;
      }
      // Stream mode wants the window only: what passed of the whole image.
      const int64_t done = window ? window->bytes_passed() : s.total_wanted_done;
      const int64_t total = window ? window->total() : s.total_wanted;
      Event("progress done=" + std::to_string(done) + " total=" + std::to_string(total) +
            " peers=" + std::to_string(npeers) + " seeds=" + std::to_string(s.num_seeds) +
            " from_peers=" + std::to_string(from_peers) + " from_web_seed=" +
            std::to_string(from_web_seed) + " uploaded=" + std::to_string(s.total_payload_upload) +
            " hash_failures=" + std::to_string(hash_failures));
      if (complete && !reported) {
        Event("complete");
        reported = true;
      }
    }
    ses.wait_for_alert(flushing.empty() ? std::chrono::milliseconds(100) : kFlushLook);
  }
  // The agent closed our stdin: seeding is over.
  web.Stop();
  ses.abort();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage("create or fetch");
  const std::string cmd = argv[1];
  Args args = ParseArgs(argc, argv, 2);
  if (cmd == "create") return Create(args);
  if (cmd == "fetch") return Fetch(args);
  Usage("unknown command " + cmd);
}
