#include "agent/disk/target.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "agent/base/aligned_buffer.hpp"

namespace byoi {

Result<Target> Target::Open(const std::string& path, const Options& options) {
  Target t;
  t.path_ = path;
  t.flush_every_ = options.flush_every;
  struct stat st {};
  bool exists = ::stat(path.c_str(), &st) == 0;
  if (!exists && (errno != ENOENT || !options.file_size)) {
    return Status::FromErrno("opening " + path, errno,
                             errno == ENOENT ? Code::kNotFound : Code::kIo);
  }
  if (exists && S_ISBLK(st.st_mode)) {
    t.block_device_ = true;
    int excl = options.exclusive ? O_EXCL : 0;
    int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC | excl);
    if (fd < 0) {
      return Status::FromErrno("opening " + path, errno, errno == EBUSY ? Code::kBusy : Code::kIo);
    }
    t.direct_fd_.Reset(fd);
    t.direct_ = true;
    // A second descriptor without O_EXCL (the first one holds the claim) for unaligned bytes.
    BYOI_ASSIGN_OR_RETURN(t.buffered_fd_, OpenFile(path, O_RDWR));
    uint64_t bytes = 0;
    if (::ioctl(t.direct_fd_.get(), BLKGETSIZE64, &bytes) != 0) {
      return Status::FromErrno("getting the size of " + path, errno);
    }
    int sector = 0;
    if (::ioctl(t.direct_fd_.get(), BLKSSZGET, &sector) != 0) {
      return Status::FromErrno("getting the sector size of " + path, errno);
    }
    if (sector < 512 || (sector & (sector - 1)) != 0) {
      return Status::Error(Code::kIo, path + ": odd logical sector size " + std::to_string(sector));
    }
    t.size_ = bytes;
    t.sector_size_ = static_cast<uint32_t>(sector);
    t.alignment_ = t.sector_size_;
    return t;
  }
  if (exists && !S_ISREG(st.st_mode)) {
    return Status::Error(Code::kInvalid, path + " is neither a block device nor a regular file");
  }
  int create = options.file_size ? O_CREAT : 0;
  BYOI_ASSIGN_OR_RETURN(t.buffered_fd_, OpenFile(path, O_RDWR | create, 0644));
  if (options.file_size) {
    if (::ftruncate(t.buffered_fd_.get(), static_cast<off_t>(*options.file_size)) != 0) {
      return Status::FromErrno("resizing " + path, errno);
    }
  }
  if (::fstat(t.buffered_fd_.get(), &st) != 0) return Status::FromErrno("examining " + path, errno);
  t.size_ = static_cast<uint64_t>(st.st_size);
  // tmpfs and some other file systems refuse O_DIRECT: then everything goes through the page
  // cache and the final fdatasync.
  int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (fd >= 0) {
    t.direct_fd_.Reset(fd);
    t.direct_ = true;
  }
  return t;
}

Status Target::FallbackZeros(uint64_t offset, uint64_t length) {
  constexpr size_t kChunk = 1 << 20;
  AlignedBuffer zeros(std::min<uint64_t>(kChunk, length), 4096);
  while (length > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), length));
    BYOI_RETURN_IF_ERROR(PwriteAll(fd(), {zeros.data(), n}, offset).Context("writing zeros"));
    offset += n;
    length -= n;
  }
  return Status::Ok();
}

Status Target::ZeroRange(uint64_t offset, uint64_t length) {
  if (length == 0) return Status::Ok();
  if (!no_offload_->load(std::memory_order_relaxed)) {
    int err = 0;
    if (block_device_) {
      // On a block device PUNCH_HOLE is a write-zeroes that may deallocate (NVMe Write Zeroes
      // with DEAC, a hole in a loop device's file) and never falls back to writing; reads return
      // zeros either way. BLKZEROOUT keeps the blocks allocated and falls back to writing zeros
      // in the kernel when the device has no write-zeroes command.
      if (::fallocate(fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                      static_cast<off_t>(length)) == 0) {
        return Status::Ok();
      }
      uint64_t range[2] = {offset, length};
      if (::ioctl(fd(), BLKZEROOUT, range) == 0) return Status::Ok();
      err = errno;
    } else {
      // Punching keeps a file sparse (a 1 TiB image of zeros costs nothing); ZERO_RANGE would
      // allocate unwritten extents for all of it.
      if (::fallocate(fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                      static_cast<off_t>(length)) == 0) {
        return Status::Ok();
      }
      err = errno;
      if (err == EOPNOTSUPP && ::fallocate(fd(), FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset),
                                           static_cast<off_t>(length)) == 0) {
        return Status::Ok();
      }
      if (err == EOPNOTSUPP) err = errno;
    }
    if (err != EOPNOTSUPP && err != EINVAL && err != ENOTTY && err != ENOSYS) {
      return Status::FromErrno(
          "zeroing " + std::to_string(length) + " bytes at offset " + std::to_string(offset), err);
    }
    no_offload_->store(true, std::memory_order_relaxed);
  }
  return FallbackZeros(offset, length);
}

Status Target::WriteZeros(uint64_t offset, uint64_t length) {
  uint64_t end = offset + length;
  uint64_t a_begin = std::min(end, (offset + alignment_ - 1) / alignment_ * alignment_);
  uint64_t a_end = std::max(a_begin, end / alignment_ * alignment_);
  if (a_end > a_begin) BYOI_RETURN_IF_ERROR(FallbackZeros(a_begin, a_end - a_begin));
  std::vector<uint8_t> zeros(alignment_, 0);
  if (a_begin > offset) {
    BYOI_RETURN_IF_ERROR(PwriteAll(buffered_fd(), {zeros.data(), a_begin - offset}, offset));
  }
  if (end > a_end && a_end >= a_begin) {
    BYOI_RETURN_IF_ERROR(PwriteAll(buffered_fd(), {zeros.data(), end - a_end}, a_end));
  }
  return Status::Ok();
}

Status Target::Written(uint64_t bytes) {
  if (flush_every_ == 0 || unflushed_->bytes.fetch_add(bytes) + bytes < flush_every_) {
    return Status::Ok();
  }
  if (unflushed_->flushing.exchange(true)) return Status::Ok();  // another thread flushes
  unflushed_->bytes = 0;
  Status s = Sync();
  unflushed_->flushing = false;
  return s;
}

Status Target::Sync() {
  if (direct_fd_.valid() && ::fdatasync(direct_fd_.get()) != 0) {
    return Status::FromErrno("syncing " + path_, errno);
  }
  if (buffered_fd_.valid() && ::fdatasync(buffered_fd_.get()) != 0) {
    return Status::FromErrno("syncing " + path_, errno);
  }
  return Status::Ok();
}

}  // namespace byoi
