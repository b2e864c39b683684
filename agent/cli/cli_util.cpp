#include "agent/cli/cli_util.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/cli/commands.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

Result<std::string> ReadManifestText(const std::string& path) {
  UniqueFd owned;
  int fd = STDIN_FILENO;
  if (path != "-") {
    BYOI_ASSIGN_OR_RETURN(owned, OpenFile(path, O_RDONLY));
    fd = owned.get();
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("reading " + path, errno);
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxManifestBytes) {
      return Status::Error(Code::kInvalid, "body: larger than 1 MiB",
                           msg::InvalidManifest("body", "larger than 1 MiB"));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

}  // namespace byoi
