// `byoi-agent torrent IMAGE --web-seed URL [--tracker URL]... [--output FILE]`: a .torrent a
// provider publishes next to the image (docs/cli.md); the manifest's `torrent` names it.
#include <cstdio>

#include "agent/base/text.hpp"
#include "agent/base/units.hpp"
#include "agent/cli/commands.hpp"
#include "agent/job/manifest.hpp"
#include "agent/swarm/torrent_file.hpp"

namespace byoi {

namespace {

// Trackers are announced to over http, https or udp (BEP 15).
bool IsTrackerUrl(const std::string& url) {
  for (std::string_view scheme : {"http://", "https://", "udp://"}) {
    if (url.size() > scheme.size() &&
        EqualsIgnoreCaseAscii(std::string_view(url).substr(0, scheme.size()), scheme)) {
      return url.find_first_of(" \t\r\n") == std::string::npos;
    }
  }
  return false;
}

}  // namespace

int RunTorrent(const TorrentArgs& args) {
  if (Status s = ValidateHttpUrl(args.web_seed, "--web-seed"); !s.ok()) {
    std::fprintf(stderr, "byoi-agent torrent: %s\n", s.detail().c_str());
    return kExitUsage;
  }
  TorrentFileRequest req;
  req.image = args.image;
  req.output = args.output.empty() ? args.image + ".torrent" : args.output;
  req.web_seed = args.web_seed;
  for (const std::string& t : args.trackers) {
    if (!IsTrackerUrl(t)) {
      std::fprintf(stderr, "byoi-agent torrent: --tracker: %s is not an http, https or udp URL\n",
                   t.c_str());
      return kExitUsage;
    }
    req.trackers.push_back(t);
  }
  if (!args.piece_length.empty()) req.piece_length = ParseSize(args.piece_length).value_or(0);
  Result<TorrentFileInfo> info = WriteTorrentFile(req);
  if (!info.ok()) {
    std::fprintf(stderr, "byoi-agent torrent: %s\n", info.status().detail().c_str());
    return info.status().code() == Code::kInvalid ? kExitUsage : kExitJobError;
  }
  std::printf("%s\ninfo hash v1 %s\ninfo hash v2 %s\nmagnet:?xt=urn:btih:%s\n", req.output.c_str(),
              info->info_hash_v1.c_str(), info->info_hash_v2.c_str(), info->info_hash_v1.c_str());
  return kExitOk;
}

}  // namespace byoi
