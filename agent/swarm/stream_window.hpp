// byoi-swarm's stream mode (docs/pipeline.md, "Swarm downloads"): the helper downloads a bounded
// window of pieces ahead of the agent's front instead of the whole image. Part of the helper
// program (main.cpp), never of the agent: it speaks libtorrent.
//
// The agent reads each piece the helper reports (`piece N`) from the memfd, in order, feeds it to
// the stream pipeline, punches it out of the memfd, and writes `front N` on the helper's stdin:
// every piece before N is taken and gone. The helper wants (libtorrent piece priority > 0) only
// the pieces of [front, front + window), so the memfd never holds more than the window.
//
// A piece behind the front reads as zeros, and a BitTorrent peer cannot take back a HAVE: a
// stream-mode helper uploads nothing (NoUploadPlugin), so no peer is ever sent those zeros.
#pragma once

#include <cstdint>
#include <libtorrent/extensions.hpp>
#include <libtorrent/torrent_handle.hpp>
#include <libtorrent/torrent_info.hpp>
#include <memory>
#include <string>
#include <vector>

namespace byoi_swarm {

namespace lt = libtorrent;

// The agent's lines on the helper's stdin: `front N`, `stop`; its end means stop too.
class CommandReader {
 public:
  struct Commands {
    bool stop = false;
    int front = -1;  // the latest `front N` read now, -1 when none
  };
  // Reads what the agent wrote since the last call, without blocking.
  Commands Poll();

 private:
  std::string pending_;
};

class StreamWindow {
 public:
  // `window_bytes` > 0: RAM the agent grants the pieces ahead of its front.
  explicit StreamWindow(int64_t window_bytes) : window_bytes_(window_bytes) {}

  // The torrent is known (from the .torrent, or its metadata from peers). REQUIRES: it was added
  // in upload mode (nothing asked for yet). Sets every piece's priority (the window's wanted,
  // the others not), sequential download, and leaves upload mode. Returns why stream mode
  // cannot take the torrent (a piece larger than the window, `h` then left as it was), else
  // empty.
  std::string Start(const lt::torrent_info& ti, const lt::torrent_handle& h);
  // The agent took every piece before `front`: the window moves on. A front that goes back or
  // past the end is ignored.
  void MoveFront(int front, const lt::torrent_handle& h);
  // A piece passed its hash check. True the first time it is seen.
  bool Passed(int piece);
  // Every piece passed.
  bool complete() const { return started_ && passed_count_ == static_cast<int>(passed_.size()); }
  int64_t bytes_passed() const { return bytes_passed_; }
  int64_t total() const { return total_; }

 private:
  void Want(int first, int end, const lt::torrent_handle& h);

  const int64_t window_bytes_;
  bool started_ = false;
  int window_pieces_ = 0;
  int front_ = 0;
  int wanted_end_ = 0;  // pieces before it have a priority above 0
  int64_t total_ = 0;
  int64_t bytes_passed_ = 0;
  int passed_count_ = 0;
  int64_t piece_length_ = 0;
  std::vector<bool> passed_;
};

// For add_torrent_params::extensions: a torrent plugin whose peers' requests are all dropped
// (peer_plugin::on_request), so libtorrent never reads a piece to send it.
std::shared_ptr<lt::torrent_plugin> NoUploadPlugin(const lt::torrent_handle&, lt::client_data_t);

}  // namespace byoi_swarm
