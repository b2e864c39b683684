#include "agent/disk/kernel_sync.hpp"

#include <fmt/format.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include "agent/base/fd.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

uint64_t AttrNumber(const fs::path& p) {
  auto t = ReadSmallFile(p.string(), 256);
  if (!t.ok()) return 0;
  return std::strtoull(t->c_str(), nullptr, 10);
}

bool IsExtendedType(const std::string& type) {
  return type == "0x05" || type == "0x0f" || type == "0x85";
}

// What the kernel should show for `p`, in 512-byte units as sysfs reports them. The kernel maps an
// extended container as a 1 KiB stub (enough for LILO-era boot code, nothing to overwrite).
std::pair<uint64_t, uint64_t> Expected(const Partition& p) {
  uint64_t start = p.start_sector * p.sector_size / 512;
  uint64_t size = IsExtendedType(p.type) ? 1024 / 512 : p.size_sectors * p.sector_size / 512;
  if (IsExtendedType(p.type) && p.sector_size > 1024) size = p.sector_size / 512;
  return {start, size};
}

std::string Diff(const std::vector<Partition>& want, const std::vector<Partition>& have) {
  std::map<int, std::pair<uint64_t, uint64_t>> w, h;
  for (const Partition& p : want) w[p.number] = Expected(p);
  for (const Partition& p : have) h[p.number] = {p.start_sector, p.size_sectors};
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  for (auto& [n, v] : w) {
    auto it = h.find(n);
    if (it == h.end()) {
      add(fmt::format("partition {} missing", n));
    } else if (it->second != v) {
      add(fmt::format("partition {} at {}+{} instead of {}+{} (512-byte sectors)", n,
                      it->second.first, it->second.second, v.first, v.second));
    }
  }
  for (auto& [n, v] : h) {
    if (!w.count(n)) add(fmt::format("stale partition {}", n));
  }
  return out;
}

int Blkpg(int fd, int op, int number, uint64_t start_bytes, uint64_t length_bytes) {
  struct blkpg_partition part;
  std::memset(&part, 0, sizeof part);
  part.pno = number;
  part.start = static_cast<long long>(start_bytes);
  part.length = static_cast<long long>(length_bytes);
  struct blkpg_ioctl_arg arg;
  std::memset(&arg, 0, sizeof arg);
  arg.op = op;
  arg.datalen = sizeof part;
  arg.data = &part;
  for (int attempt = 0;; ++attempt) {
    if (::ioctl(fd, BLKPG, &arg) == 0) return 0;
    // EBUSY right after a change can be a transient opener (blkid, a udev rule elsewhere).
    if (errno != EBUSY || attempt >= 5) return errno;
    ::usleep(100 * 1000);
  }
}

}  // namespace

std::vector<Partition> KernelPartitions(const std::string& sysfs_root,
                                        const std::string& disk_name) {
  std::vector<Partition> out;
  fs::path dir = fs::path(sysfs_root) / "block" / disk_name;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fs::path p = it->path();
    if (!fs::exists(p / "partition", ec)) continue;
    Partition part;
    part.number = static_cast<int>(AttrNumber(p / "partition"));
    // sysfs counts in 512-byte units whatever the logical sector size; keep them exact (a
    // partition that is not a whole number of logical sectors must compare as different).
    part.sector_size = 512;
    part.start_sector = AttrNumber(p / "start");
    part.size_sectors = AttrNumber(p / "size");
    out.push_back(part);
  }
  return out;
}

Status SyncKernelPartitions(const Disk& disk, int fd, std::vector<Partition>& table,
                            const std::string& sysfs_root) {
  if (disk.is_file) return Status::Ok();
  // BLKRRPART fails with EINVAL where partitions are disabled (loop without partscan) and EBUSY
  // when a partition is open; both leave BLKPG as the way, so its result is only a first try.
  int rr = ::ioctl(fd, BLKRRPART) == 0 ? 0 : errno;
  std::vector<Partition> have = KernelPartitions(sysfs_root, disk.name);
  std::string diff = Diff(table, have);
  if (!diff.empty()) {
    std::map<int, Partition> want;
    for (const Partition& p : table) want[p.number] = p;
    for (const Partition& h : have) {
      auto it = want.find(h.number);
      bool same = it != want.end() &&
                  Expected(it->second) == std::make_pair(h.start_sector, h.size_sectors);
      if (same) {
        want.erase(it);
        continue;
      }
      if (int err = Blkpg(fd, BLKPG_DEL_PARTITION, h.number, 0, 0); err != 0) {
        return Status::FromErrno(
            fmt::format("removing stale partition {} of {} from the kernel", h.number, disk.path),
            err);
      }
    }
    for (const auto& [n, p] : want) {
      auto [start, size] = Expected(p);
      if (int err = Blkpg(fd, BLKPG_ADD_PARTITION, n, start * 512, size * 512); err != 0) {
        return Status::FromErrno(
            fmt::format("adding partition {} of {} to the kernel", n, disk.path), err);
      }
    }
    have = KernelPartitions(sysfs_root, disk.name);
    diff = Diff(table, have);
    if (!diff.empty()) {
      return Status::Error(Code::kIo,
                           fmt::format("the kernel's partitions of {} differ from the table after "
                                       "BLKRRPART ({}) and BLKPG: {}",
                                       disk.path, rr ? std::strerror(rr) : "ok", diff));
    }
  }
  // Device nodes are /dev/<kernel name> (devtmpfs), whatever path the disk was given as.
  fs::path dev_dir = "/dev";
  for (Partition& p : table) {
    fs::path node = dev_dir / PartitionName(disk.name, p.number);
    std::error_code ec;
    p.device = fs::exists(node, ec) ? node.string() : std::string();
  }
  return Status::Ok();
}

}  // namespace byoi
