#include "agent/base/fd.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>

namespace byoi {

Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno("opening " + path, errno);
  return UniqueFd(fd);
}

Status PreadAll(int fd, std::span<uint8_t> data, uint64_t offset) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pread(fd, data.data() + done, data.size() - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Status::FromErrno("reading at offset " + std::to_string(offset + done), errno);
    if (n == 0) {
      return Status::Error(Code::kIo, "reading at offset " + std::to_string(offset + done) +
                                          ": unexpected end of file");
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status PwriteAll(int fd, std::span<const uint8_t> data, uint64_t offset) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Status::FromErrno("writing at offset " + std::to_string(offset + done), errno);
    if (n == 0)
      return Status::Error(Code::kIo,
                           "writing at offset " + std::to_string(offset + done) + ": no progress");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("reading " + path, errno);
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > limit) {
      return Status::Error(Code::kTooBig,
                           "reading " + path + ": larger than " + std::to_string(limit) + " bytes");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string TempDir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  std::filesystem::path target(path);
  std::filesystem::path dir = target.parent_path().empty() ? "." : target.parent_path();
  std::string tmp = (dir / ("." + target.filename().string() + ".tmp")).string();
  {
    BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600));
    BYOI_RETURN_IF_ERROR(
        PwriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(contents.data()), contents.size()}, 0)
            .Context("writing " + tmp));
    if (::fsync(fd.get()) != 0) return Status::FromErrno("syncing " + tmp, errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno("renaming " + tmp, errno);
  BYOI_ASSIGN_OR_RETURN(UniqueFd dfd, OpenFile(dir.string(), O_RDONLY | O_DIRECTORY));
  ::fsync(dfd.get());  // best effort: the rename is already visible
  return Status::Ok();
}

ReadAtFn ReadFromFd(int fd) {
  return [fd](uint64_t offset, std::span<uint8_t> out) { return PreadAll(fd, out, offset); };
}

Result<uint64_t> FileSize(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::FromErrno("examining " + what, errno);
  if (!S_ISBLK(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return Status::FromErrno("sizing " + what, errno);
  return bytes;
}

}  // namespace byoi
