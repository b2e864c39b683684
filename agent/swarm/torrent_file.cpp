#include "agent/swarm/torrent_file.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "agent/base/subprocess.hpp"
#include "agent/swarm/swarm_helper.hpp"

namespace byoi {

Result<TorrentFileInfo> WriteTorrentFile(const TorrentFileRequest& req) {
  struct stat st {};
  if (::stat(req.image.c_str(), &st) != 0) {
    return Status::Error(Code::kInvalid, req.image + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    return Status::Error(Code::kInvalid, req.image + ": not a regular file");
  if (st.st_size == 0) return Status::Error(Code::kInvalid, req.image + ": an empty file");
  if (req.piece_length != 0 &&
      (req.piece_length < (16 << 10) || (req.piece_length & (req.piece_length - 1)) != 0)) {
    return Status::Error(Code::kInvalid,
                         "the piece length must be a power of two of at least 16 KiB");
  }
  BYOI_ASSIGN_OR_RETURN(std::string helper, SwarmHelperPath());
  std::vector<std::string> argv = {
      helper,       "create",     req.image,        req.output,
      "--web-seed", req.web_seed, "--piece-length", std::to_string(req.piece_length)};
  for (const std::string& t : req.trackers) argv.insert(argv.end(), {"--tracker", t});
  std::string output;
  Status s = RunProgram(argv, {}, &output);
  if (!s.ok()) {
    // The helper's `error kind=… detail` line says why.
    const size_t at = output.find("error kind=");
    std::string why = at == std::string::npos ? s.detail() : output.substr(at);
    if (const size_t space = why.find(' ', 6);
        at != std::string::npos && space != std::string::npos) {
      why = why.substr(space + 1);
    }
    while (!why.empty() && why.back() == '\n') why.pop_back();
    return Status::Error(Code::kIo, "writing the torrent " + req.output + ": " + why);
  }
  TorrentFileInfo info;
  std::istringstream words(output);
  std::string word;
  while (words >> word) {
    if (word.rfind("v1=", 0) == 0) info.info_hash_v1 = word.substr(3);
    if (word.rfind("v2=", 0) == 0) info.info_hash_v2 = word.substr(3);
  }
  return info;
}

}  // namespace byoi
