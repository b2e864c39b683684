#include "agent/disk/safety.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <vector>

#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/disk/dir_list.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

std::string Attr(const fs::path& p) {
  auto t = ReadSmallFile(p.string(), 4096);
  return t.ok() ? std::string(TrimBlanks(*t)) : std::string();
}

// /proc/self/mountinfo and /proc/swaps escape blanks and backslashes as \ooo.
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() &&
        s.substr(i + 1, 3).find_first_not_of("01234567") == std::string_view::npos) {
      out +=
          static_cast<char>(((s[i + 1] - '0') << 6) | ((s[i + 2] - '0') << 3) | (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string DevOfPath(const std::string& path, bool* is_block) {
  struct stat st;
  *is_block = false;
  if (::stat(path.c_str(), &st) != 0) return {};
  if (S_ISBLK(st.st_mode)) {
    *is_block = true;
    return fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev));
  }
  return fmt::format("{}:{}", major(st.st_dev), minor(st.st_dev));
}

// The disk and its partitions the kernel knows, by "MAJ:MIN", with the device path to show.
struct DeviceSet {
  std::map<std::string, std::string> by_dev;
  std::map<std::string, std::string> by_path;  // "/dev/sda2" -> itself, for /proc/swaps names
  std::vector<std::pair<std::string, fs::path>> sysfs_dirs;  // shown path, sysfs dir
};

DeviceSet CollectDevices(const Disk& disk, const SystemPaths& paths) {
  DeviceSet set;
  fs::path dir = fs::path(paths.sysfs_root) / "block" / disk.name;
  std::string dev = disk.dev.empty() ? Attr(dir / "dev") : disk.dev;
  if (!dev.empty()) set.by_dev[dev] = disk.path;
  set.by_path[disk.path] = disk.path;
  set.sysfs_dirs.emplace_back(disk.path, dir);
  fs::path dev_dir = fs::path(disk.path).parent_path();
  for (const std::string& entry : ListDir(dir)) {
    std::error_code ec;
    if (!fs::exists(dir / entry / "partition", ec)) continue;
    std::string shown = (dev_dir / entry).string();
    std::string pdev = Attr(dir / entry / "dev");
    if (!pdev.empty()) set.by_dev[pdev] = shown;
    set.by_path[shown] = shown;
    set.sysfs_dirs.emplace_back(shown, dir / entry);
  }
  return set;
}

Status InUse(const Disk& disk, const std::string& reason) {
  return Status::Error(Code::kBusy, fmt::format("{} in use: {}", disk.path, reason),
                       msg::DiskInUse(disk.path, reason));
}

Status CheckMounts(const Disk& disk, const DeviceSet& set, const SystemPaths& paths) {
  BYOI_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(paths.mountinfo, 16 << 20));
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    // id parent MAJ:MIN root mountpoint options [optional…] - fstype source superoptions
    std::istringstream f(line);
    std::string id, parent, dev, root, mountpoint, word;
    f >> id >> parent >> dev >> root >> mountpoint;
    std::string source;
    while (f >> word) {
      if (word == "-") {
        std::string fstype;
        f >> fstype >> source;
        break;
      }
    }
    mountpoint = Unescape(mountpoint);
    source = Unescape(source);
    auto it = set.by_dev.find(dev);
    if (it == set.by_dev.end() && !source.empty() && source[0] == '/') {
      // btrfs and friends report an anonymous MAJ:MIN; the source names the real device.
      bool is_block = false;
      std::string sdev = DevOfPath(source, &is_block);
      if (is_block) it = set.by_dev.find(sdev);
    }
    std::string shown;
    if (it != set.by_dev.end()) {
      shown = it->second;
    } else if (auto p = set.by_path.find(source); p != set.by_path.end()) {
      shown = p->second;
    } else {
      continue;
    }
    if (mountpoint == "/") {
      return InUse(disk, fmt::format("{} holds the running system (mounted on /)", shown));
    }
    return InUse(disk, fmt::format("{} is mounted on {}", shown, mountpoint));
  }
  return Status::Ok();
}

Status CheckSwaps(const Disk& disk, const DeviceSet& set, const SystemPaths& paths) {
  auto text = ReadSmallFile(paths.swaps, 1 << 20);
  if (!text.ok()) {
    // No /proc/swaps: a kernel without swap support has no swap in use.
    if (text.status().detail().find("No such file") != std::string::npos) return Status::Ok();
    return text.status();
  }
  std::istringstream in(*text);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string name;
    f >> name;
    if (name.empty()) continue;
    name = Unescape(name);
    if (auto by_name = set.by_path.find(name); by_name != set.by_path.end()) {
      return InUse(disk, fmt::format("{} is an active swap", by_name->second));
    }
    bool is_block = false;
    std::string dev = DevOfPath(name, &is_block);
    if (!is_block) continue;  // a swap file lives on a mounted file system: CheckMounts sees it
    auto it = set.by_dev.find(dev);
    if (it != set.by_dev.end()) return InUse(disk, fmt::format("{} is an active swap", it->second));
  }
  return Status::Ok();
}

std::string DescribeHolder(const SystemPaths& paths, const std::string& holder) {
  fs::path dir = fs::path(paths.sysfs_root) / "block" / holder;
  if (holder.rfind("dm-", 0) == 0) {
    std::string name = Attr(dir / "dm" / "name");
    return name.empty() ? holder + " (device-mapper)"
                        : fmt::format("{} (device-mapper {})", holder, name);
  }
  if (holder.rfind("md", 0) == 0) return holder + " (software RAID)";
  return holder;
}

Status CheckHolders(const Disk& disk, const DeviceSet& set, const SystemPaths& paths) {
  for (const auto& [shown, dir] : set.sysfs_dirs) {
    std::vector<std::string> holders = ListDir(dir / "holders");
    if (!holders.empty()) {
      return InUse(disk, fmt::format("{} is held by {}", shown, DescribeHolder(paths, holders[0])));
    }
  }
  return Status::Ok();
}

// A loop device whose backing file is the disk (or a partition), or a file on it.
Status CheckLoopBacking(const Disk& disk, const DeviceSet& set, const SystemPaths& paths) {
  struct stat target {};
  bool have_target = disk.is_file && ::stat(disk.path.c_str(), &target) == 0;
  fs::path block = fs::path(paths.sysfs_root) / "block";
  for (const std::string& name : ListDir(block)) {
    if (name.rfind("loop", 0) != 0) continue;
    std::string backing = Attr(block / name / "loop" / "backing_file");
    if (backing.empty()) continue;
    std::string loop_path = "/dev/" + name;
    struct stat st;
    if (::stat(backing.c_str(), &st) != 0) continue;  // "(deleted)" or gone
    if (have_target) {
      if (st.st_dev == target.st_dev && st.st_ino == target.st_ino) {
        return InUse(disk, fmt::format("{} backs {}", disk.path, loop_path));
      }
      continue;
    }
    if (S_ISBLK(st.st_mode)) {
      auto it = set.by_dev.find(fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev)));
      if (it != set.by_dev.end())
        return InUse(disk, fmt::format("{} backs {}", it->second, loop_path));
    }
  }
  return Status::Ok();
}

}  // namespace

Status CheckNotInUse(const Disk& disk, const SystemPaths& paths) {
  DeviceSet set;
  if (!disk.is_file) {
    set = CollectDevices(disk, paths);
    BYOI_RETURN_IF_ERROR(CheckMounts(disk, set, paths).Context("reading " + paths.mountinfo));
    BYOI_RETURN_IF_ERROR(CheckSwaps(disk, set, paths).Context("reading " + paths.swaps));
    BYOI_RETURN_IF_ERROR(CheckHolders(disk, set, paths));
  }
  return CheckLoopBacking(disk, set, paths);
}

Result<UniqueFd> OpenDiskExclusive(const Disk& disk, int flags) {
  int extra = disk.is_file ? 0 : O_EXCL;
  int fd = ::open(disk.path.c_str(), flags | extra | O_CLOEXEC);
  if (fd >= 0) return UniqueFd(fd);
  int err = errno;
  if (err == EBUSY) {
    std::string reason = "another program holds it open exclusively";
    return Status::Error(Code::kBusy,
                         fmt::format("opening {} exclusively: {}", disk.path, std::strerror(err)),
                         msg::DiskInUse(disk.path, reason));
  }
  return Status::FromErrno("opening " + disk.path, err);
}

Status CheckImageFits(uint64_t image_bytes, const Disk& disk) {
  if (image_bytes <= disk.size_bytes) return Status::Ok();
  return Status::Error(
      Code::kTooBig,
      fmt::format("image of {} bytes, {} of {} bytes", image_bytes, disk.path, disk.size_bytes),
      msg::ImageLargerThanDisk(image_bytes, disk.path, disk.size_bytes));
}

uint32_t GptSectorSize(std::span<const uint8_t> head) {
  static constexpr char kSig[] = "EFI PART";
  auto has_sig = [&](size_t off) {
    return head.size() >= off + 8 && std::memcmp(head.data() + off, kSig, 8) == 0;
  };
  bool at512 = has_sig(512), at4096 = has_sig(4096);
  if (at512 && !at4096) return 512;
  if (at4096 && !at512) return 4096;
  return 0;  // none, or both (a hybrid image made for either): nothing to refuse
}

Status CheckImageSectorSize(std::span<const uint8_t> head, const Disk& disk,
                            std::string_view image_type) {
  uint32_t gpt = GptSectorSize(head);
  if (gpt == 0 || gpt == disk.logical_sector_size) return Status::Ok();
  return Status::Error(Code::kUnsupported,
                       fmt::format("the image's GPT is made for {}-byte sectors but {} has "
                                   "{}-byte logical sectors",
                                   gpt, disk.path, disk.logical_sector_size),
                       msg::CantWrite(image_type));
}

}  // namespace byoi
