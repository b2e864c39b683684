#include "agent/swarm/stream_window.hpp"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <libtorrent/download_priority.hpp>
#include <libtorrent/peer_request.hpp>
#include <utility>

namespace byoi_swarm {

namespace {

// The agent's lines are short; anything longer is not the agent's and is dropped.
constexpr size_t kMaxPending = 4096;

class NoUploadPeer final : public lt::peer_plugin {
 public:
  // Handled: libtorrent neither queues the request nor reads the piece. The peer's request
  // times out and it asks elsewhere (choked peers, the usual case, do not ask at all).
  bool on_request(const lt::peer_request&) override { return true; }
};

class NoUploadTorrent final : public lt::torrent_plugin {
 public:
  std::shared_ptr<lt::peer_plugin> new_connection(const lt::peer_connection_handle&) override {
    return std::make_shared<NoUploadPeer>();
  }
};

}  // namespace

CommandReader::Commands CommandReader::Poll() {
  Commands out;
  for (;;) {
    pollfd p{0, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return out;
    char buf[4096];
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n <= 0) {
      out.stop = true;
      return out;
    }
    pending_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      const std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      if (line == "stop") out.stop = true;
      if (line.rfind("front ", 0) == 0) {
        char* end = nullptr;
        const long v = std::strtol(line.c_str() + 6, &end, 10);
        if (end != line.c_str() + 6 && *end == '\0' && v >= 0 && v <= 0x7fffffff) {
          out.front = static_cast<int>(v);
        }
      }
    }
    if (pending_.size() > kMaxPending) pending_.clear();
  }
}

std::string StreamWindow::Start(const lt::torrent_info& ti, const lt::torrent_handle& h) {
  piece_length_ = ti.piece_length();
  total_ = ti.total_size();
  if (piece_length_ > window_bytes_) {
    return "the torrent's pieces are " + std::to_string(piece_length_) +
           " bytes, larger than stream mode's window of " + std::to_string(window_bytes_) +
           " bytes";
  }
  window_pieces_ = static_cast<int>(window_bytes_ / piece_length_);
  passed_.assign(static_cast<size_t>(ti.num_pieces()), false);
  started_ = true;
  // In order: the agent can take only the front. The torrent was added in upload mode, so
  // nothing was asked for before the window was set.
  std::vector<lt::download_priority_t> wanted(passed_.size(), lt::dont_download);
  wanted_end_ = std::min(window_pieces_, ti.num_pieces());
  std::fill_n(wanted.begin(), wanted_end_, lt::default_priority);
  h.prioritize_pieces(wanted);
  h.set_flags(lt::torrent_flags::sequential_download);
  h.unset_flags(lt::torrent_flags::upload_mode);
  return {};
}

void StreamWindow::Want(int first, int end, const lt::torrent_handle& h) {
  if (end <= first) return;
  std::vector<std::pair<lt::piece_index_t, lt::download_priority_t>> wanted;
  wanted.reserve(static_cast<size_t>(end - first));
  for (int i = first; i < end; ++i) wanted.emplace_back(lt::piece_index_t{i}, lt::default_priority);
  h.prioritize_pieces(wanted);
  wanted_end_ = std::max(wanted_end_, end);
}

void StreamWindow::MoveFront(int front, const lt::torrent_handle& h) {
  const int pieces = static_cast<int>(passed_.size());
  if (!started_ || front <= front_ || front > pieces) return;
  front_ = front;
  Want(std::max(wanted_end_, front_), std::min(pieces, front_ + window_pieces_), h);
}

bool StreamWindow::Passed(int piece) {
  if (!started_ || piece < 0 || piece >= static_cast<int>(passed_.size())) return false;
  if (passed_[static_cast<size_t>(piece)]) return false;
  passed_[static_cast<size_t>(piece)] = true;
  ++passed_count_;
  bytes_passed_ += std::min<int64_t>(piece_length_, total_ - int64_t{piece} * piece_length_);
  return true;
}

std::shared_ptr<lt::torrent_plugin> NoUploadPlugin(const lt::torrent_handle&, lt::client_data_t) {
  return std::make_shared<NoUploadTorrent>();
}

}  // namespace byoi_swarm
