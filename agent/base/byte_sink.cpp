#include "agent/base/byte_sink.hpp"

#include <fcntl.h>

#include <algorithm>
#include <memory>

#include "agent/base/fd.hpp"

namespace byoi {

Status FeedFile(int fd, uint64_t size, ByteSink& sink, const CancelToken& cancel,
                const FeedOptions& options) {
  constexpr uint64_t kDropEvery = 64 << 20;
  const size_t piece = std::max<size_t>(options.piece, 1);
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[piece]);  // pread fills it: no zeroing
  BYOI_RETURN_IF_ERROR(sink.Start(size));
  uint64_t dropped = 0;
  for (uint64_t pos = 0; pos < size;) {
    BYOI_RETURN_IF_ERROR(cancel.Check());
    std::span<uint8_t> bytes(buffer.get(),
                             static_cast<size_t>(std::min<uint64_t>(piece, size - pos)));
    BYOI_RETURN_IF_ERROR(PreadAll(fd, bytes, pos).Context("reading " + options.source));
    BYOI_RETURN_IF_ERROR(sink.Write(bytes));
    pos += bytes.size();
    if (options.drop_cache && (pos - dropped >= kDropEvery || pos == size)) {
      ::posix_fadvise(fd, static_cast<off_t>(dropped), static_cast<off_t>(pos - dropped),
                      POSIX_FADV_DONTNEED);
      dropped = pos;
    }
    if (options.progress) options.progress(pos);
  }
  return Status::Ok();
}

}  // namespace byoi
