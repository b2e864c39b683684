// `byoi-agent torrent`: a .torrent for an image a provider publishes (docs/cli.md), made by
// libtorrent's create_torrent in the swarm helper (swarm_helper.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

struct TorrentFileRequest {
  std::string image;                  // a regular, non-empty file
  std::string output;                 // the .torrent to write (replaced)
  std::string web_seed;               // the image's URL (BEP 19), http or https
  std::vector<std::string> trackers;  // announce URLs, one tier each, in order
  uint64_t piece_length = 0;          // bytes, a power of two >= 16 KiB; 0: libtorrent's choice
};

struct TorrentFileInfo {
  std::string info_hash_v1;  // 40 hex digits: the btih of a magnet link
  std::string info_hash_v2;  // 64 hex digits
};

// Hashes `req.image` and writes the .torrent (single file, v1 and v2 hashes, the web seed and
// trackers). kInvalid for an image that is missing, not a regular file or empty; kNotFound when
// the helper is missing; kIo when writing fails. On failure `req.output` may be missing or
// partly written.
Result<TorrentFileInfo> WriteTorrentFile(const TorrentFileRequest& req);

}  // namespace byoi
