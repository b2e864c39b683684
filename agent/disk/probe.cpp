#include "agent/disk/probe.hpp"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "agent/base/fd.hpp"

namespace byoi {
namespace {

struct ProbeDeleter {
  void operator()(blkid_struct_probe* p) const { blkid_free_probe(p); }
};
using Probe = std::unique_ptr<blkid_struct_probe, ProbeDeleter>;

Result<Probe> NewProbe(int fd, uint64_t offset, uint64_t size) {
  Probe pr(blkid_new_probe());
  if (!pr) return Status::Error(Code::kInternal, "blkid_new_probe failed");
  if (blkid_probe_set_device(pr.get(), fd, static_cast<blkid_loff_t>(offset),
                             static_cast<blkid_loff_t>(size)) != 0) {
    return Status::Error(Code::kIo,
                         fmt::format("probing bytes {}+{}: cannot use device", offset, size));
  }
  return pr;
}

std::string Value(blkid_probe pr, const char* name) {
  const char* v = nullptr;
  size_t len = 0;
  if (blkid_probe_lookup_value(pr, name, &v, &len) != 0 || !v) return {};
  return std::string(v, strnlen(v, len));
}

}  // namespace

DeviceContents ProbeDeviceContents(const std::string& path) {
  DeviceContents out;
  auto fd = OpenFile(path, O_RDONLY | O_NONBLOCK);
  if (!fd.ok()) return out;
  auto pr = NewProbe(fd->get(), 0, 0);
  if (!pr.ok()) return out;
  blkid_probe_enable_superblocks(pr->get(), 1);
  blkid_probe_set_superblocks_flags(pr->get(), BLKID_SUBLKS_TYPE);
  blkid_probe_enable_partitions(pr->get(), 1);
  blkid_probe_set_partitions_flags(pr->get(), BLKID_PARTS_MAGIC);
  if (blkid_do_safeprobe(pr->get()) == 0) {
    out.partition_table = Value(pr->get(), "PTTYPE");
    out.signature = Value(pr->get(), "TYPE");
  }
  return out;
}

bool IsConfigDriveLabel(const std::string& label) {
  return label == "config-2" || label == "CONFIG-2";
}

Result<Signature> ProbeFilesystem(int fd, uint64_t offset, uint64_t size) {
  BYOI_ASSIGN_OR_RETURN(Probe pr, NewProbe(fd, offset, size));
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(pr.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL);
  blkid_probe_enable_partitions(pr.get(), 0);
  Signature sig;
  int rc = blkid_do_safeprobe(pr.get());
  if (rc < 0 && rc != -2) {
    return Status::Error(Code::kIo, fmt::format("probing bytes {}+{}: blkid error", offset, size));
  }
  if (rc == 0) {
    sig.type = Value(pr.get(), "TYPE");
    sig.label = Value(pr.get(), "LABEL");
    sig.offset = offset;
  }
  // rc == -2: ambivalent (two signatures); rc == 1: nothing. Both: no one file system to report.
  return sig;
}

Result<Signature> ProbeFilesystem(const ReadAtFn& read, uint64_t offset, uint64_t size) {
  if (size == 0) return Signature{};
  UniqueFd fd(::memfd_create("byoi-probe", MFD_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("creating a memfd", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return Status::FromErrno("sizing the memfd", errno);
  }
  constexpr uint64_t kWindow = 1 << 20;
  std::vector<uint8_t> buf(std::min(size, kWindow));
  BYOI_RETURN_IF_ERROR(read(offset, buf));
  BYOI_RETURN_IF_ERROR(PwriteAll(fd.get(), buf, 0));
  if (size > kWindow) {
    const uint64_t tail = std::max(kWindow, size - kWindow);
    buf.resize(size - tail);
    BYOI_RETURN_IF_ERROR(read(offset + tail, buf));
    BYOI_RETURN_IF_ERROR(PwriteAll(fd.get(), buf, tail));
  }
  BYOI_ASSIGN_OR_RETURN(Signature sig, ProbeFilesystem(fd.get(), 0, size));
  if (!sig.type.empty()) sig.offset = offset;
  return sig;
}

Result<std::vector<Signature>> WipeRange(int fd, uint64_t offset, uint64_t size) {
  BYOI_ASSIGN_OR_RETURN(Probe pr, NewProbe(fd, offset, size));
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(
      pr.get(), BLKID_SUBLKS_MAGIC | BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL | BLKID_SUBLKS_BADCSUM);
  blkid_probe_enable_partitions(pr.get(), 1);
  blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_MAGIC | BLKID_PARTS_FORCE_GPT);
  std::vector<Signature> wiped;
  // blkid_do_probe walks the signatures one at a time; blkid_do_wipe erases the current one and
  // steps back, so the next call re-runs the same prober (which may find a second copy).
  while (wiped.size() < 64) {
    int rc = blkid_do_probe(pr.get());
    if (rc == 1) break;
    if (rc < 0) {
      return Status::Error(Code::kIo,
                           fmt::format("probing bytes {}+{} for signatures", offset, size));
    }
    Signature sig;
    sig.type = Value(pr.get(), "TYPE");
    if (sig.type.empty()) sig.type = Value(pr.get(), "PTTYPE");
    sig.label = Value(pr.get(), "LABEL");
    std::string off = Value(pr.get(), "SBMAGIC_OFFSET");
    if (off.empty()) off = Value(pr.get(), "PTMAGIC_OFFSET");
    sig.offset = offset + std::strtoull(off.c_str(), nullptr, 10);
    if (blkid_do_wipe(pr.get(), 0) != 0) {
      return Status::Error(
          Code::kIo, fmt::format("erasing the {} signature at byte {}", sig.type, sig.offset));
    }
    wiped.push_back(std::move(sig));
  }
  return wiped;
}

}  // namespace byoi
