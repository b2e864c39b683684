#include "agent/boot/configdrive.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/safety.hpp"

extern char** environ;

namespace byoi {
namespace {

namespace fs = std::filesystem;

inline constexpr uint64_t kMaxDriveBytes = 64 * kMiB;
inline constexpr const char* kVersions[] = {"latest", "2012-08-10"};

// A scratch directory removed with everything in it when it goes out of scope.
class ScratchDir {
 public:
  static Result<ScratchDir> Create(const std::string& parent) {
    std::string tmpl = (fs::path(parent) / "byoi-configdrive-XXXXXX").string();
    if (!::mkdtemp(tmpl.data()))
      return Status::FromErrno("creating a directory in " + parent, errno);
    return ScratchDir(tmpl);
  }
  ScratchDir(ScratchDir&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ScratchDir& operator=(ScratchDir&&) = delete;
  ~ScratchDir() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

Status WriteWholeFile(const fs::path& path, std::string_view data) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path.string(), O_WRONLY | O_CREAT | O_TRUNC, 0600));
  return PwriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(data.data()), data.size()}, 0)
      .Context("writing " + path.string());
}

std::string TempParent(const ConfigDriveOptions& options) {
  return options.tmp_dir.empty() ? TempDir() : options.tmp_dir;
}

// Copies the first `bytes` of `image` to `fd` at `offset`.
Status CopyImage(const std::string& image, int fd, uint64_t offset, uint64_t bytes) {
  BYOI_ASSIGN_OR_RETURN(UniqueFd in, OpenFile(image, O_RDONLY));
  std::vector<uint8_t> buf(kMiB);
  for (uint64_t done = 0; done < bytes;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - done));
    BYOI_RETURN_IF_ERROR(PreadAll(in.get(), {buf.data(), n}, done).Context("reading " + image));
    BYOI_RETURN_IF_ERROR(PwriteAll(fd, {buf.data(), n}, offset + done));
    done += n;
  }
  if (::fsync(fd) != 0) return Status::FromErrno("syncing", errno);
  return Status::Ok();
}

Status Write(const Disk& disk, const Partition& part, const ConfigDriveContent& content,
             const ConfigDriveOptions& options) {
  uint32_t ss = part.sector_size ? part.sector_size : 512;
  uint64_t bytes = std::min<uint64_t>(part.size_bytes(), kMaxDriveBytes) / ss * ss;
  // mkfs.fat counts in KiB blocks: keep the file system a whole number of both.
  bytes = bytes / std::max<uint64_t>(ss, kKiB) * std::max<uint64_t>(ss, kKiB);
  if (bytes < kMiB) {
    return Status::Error(Code::kInvalid, fmt::format("partition {} is only {} bytes", part.number,
                                                     part.size_bytes()));
  }
  BYOI_ASSIGN_OR_RETURN(ScratchDir scratch, ScratchDir::Create(TempParent(options)));
  fs::path tree = fs::path(scratch.path()) / "tree";
  for (const auto& [rel, data] : ConfigDriveFiles(content)) {
    fs::path p = tree / rel;
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec)
      return Status::Error(Code::kIo, "creating " + p.parent_path().string() + ": " + ec.message());
    BYOI_RETURN_IF_ERROR(WriteWholeFile(p, data));
  }
  std::string image = (fs::path(scratch.path()) / "config-2.img").string();
  // The volume id is the start of the instance UUID: stable for one job, new for the next.
  std::string volid = content.uuid.substr(0, 8);
  if (volid.size() != 8) volid = "c0f16002";
  const std::vector<std::string> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
                                        "MTOOLSRC=/dev/null", "MTOOLS_SKIP_CHECK=1"};
  BYOI_RETURN_IF_ERROR(
      RunProgram({options.mkfs_fat, "-C", "-n", "config-2", "-S", std::to_string(ss), "-i", volid,
                  image, std::to_string(bytes / kKiB)},
                 env)
          .Context("making the vfat file system"));
  BYOI_RETURN_IF_ERROR(
      RunProgram({options.mcopy, "-s", "-o", "-i", image, (tree / "openstack").string(), "::/"},
                 env)
          .Context("copying the config drive files"));

  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenDiskExclusive(disk, O_RDWR));
  BYOI_RETURN_IF_ERROR(
      CopyImage(image, fd.get(), part.offset_bytes(), bytes)
          .Context(fmt::format("writing partition {} of {}", part.number, disk.path)));
  BYOI_ASSIGN_OR_RETURN(Signature sig, ProbeFilesystem(fd.get(), part.offset_bytes(), bytes));
  if (sig.type != "vfat" || !IsConfigDriveLabel(sig.label)) {
    return Status::Error(Code::kIo, fmt::format("after writing, partition {} holds '{}' labelled "
                                                "'{}' instead of vfat config-2",
                                                part.number, sig.type, sig.label));
  }
  return Status::Ok();
}

}  // namespace

std::string NewUuid() {
  uint8_t b[16];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = ::getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) std::abort();  // getrandom on Linux >= 3.17 does not fail once seeded
    got += static_cast<size_t>(n);
  }
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string s;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", b[i]);
  }
  return s;
}

ConfigDriveContent MakeConfigDriveContent(const ConfigDriveSpec& drive) {
  ConfigDriveContent c;
  c.uuid = NewUuid();
  c.hostname = drive.hostname;
  c.ssh_key = drive.ssh_key;
  c.meta = drive.metadata;
  c.user_data = drive.user_data;
  return c;
}

std::string MetaDataJson(const ConfigDriveContent& c) {
  boost::json::object md;
  md["uuid"] = c.uuid;
  if (!c.hostname.empty()) {
    md["hostname"] = c.hostname;
    md["name"] = c.hostname;
  }
  boost::json::object public_keys;
  boost::json::array keys;
  if (!c.ssh_key.empty()) {
    public_keys["default"] = c.ssh_key;
    keys.push_back(boost::json::object{{"name", "default"}, {"type", "ssh"}, {"data", c.ssh_key}});
  }
  md["public_keys"] = std::move(public_keys);
  md["keys"] = std::move(keys);
  boost::json::object meta;
  for (const auto& [k, v] : c.meta) meta[k] = v;
  md["meta"] = std::move(meta);
  md["launch_index"] = 0;
  md["availability_zone"] = "";
  md["devices"] = boost::json::array();
  md["project_id"] = "";
  return boost::json::serialize(md);
}

std::vector<std::pair<std::string, std::string>> ConfigDriveFiles(const ConfigDriveContent& c) {
  std::vector<std::pair<std::string, std::string>> files;
  std::string md = MetaDataJson(c);
  for (const char* v : kVersions) {
    std::string dir = fmt::format("openstack/{}/", v);
    files.emplace_back(dir + "meta_data.json", md);
    if (c.user_data) files.emplace_back(dir + "user_data", *c.user_data);
    files.emplace_back(dir + "vendor_data.json", "{}");
  }
  return files;
}

Status WriteConfigDrive(const Disk& disk, const Partition& partition,
                        const ConfigDriveContent& content, const ConfigDriveOptions& options) {
  Status s = Write(disk, partition, content, options);
  if (!s.ok()) {
    return std::move(s)
        .Context("writing the config drive to " + disk.path)
        .DefaultMessage(msg::kConfigDrive);
  }
  return s;
}

}  // namespace byoi
