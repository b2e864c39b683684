#include "agent/disk/inventory.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <tuple>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/dir_list.hpp"
#include "agent/disk/probe.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

// A sysfs attribute, trimmed; "" when absent or unreadable (attributes vary by driver).
std::string Attr(const fs::path& path) {
  auto text = ReadSmallFile(path.string(), 64 * 1024);
  return text.ok() ? std::string(TrimBlanks(*text)) : std::string();
}

uint64_t AttrNumber(const fs::path& path, uint64_t fallback) {
  std::string s = Attr(path);
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return (ec == std::errc() && p == s.data() + s.size() && !s.empty()) ? v : fallback;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Unit serial number page (SCSI VPD 0x80): a 4-byte header, then the serial in ASCII.
std::string SerialFromVpd80(const std::string& page) {
  if (page.size() < 4) return {};
  size_t len = (static_cast<unsigned char>(page[2]) << 8) | static_cast<unsigned char>(page[3]);
  return std::string(TrimBlanks(page.substr(4, std::min(len, page.size() - 4))));
}

// The bus a disk hangs on, from the device path sysfs links it to, the way lsblk's TRAN reads.
std::string Transport(const fs::path& dir, const std::string& name) {
  if (StartsWith(name, "nvme")) return "nvme";
  std::error_code ec;
  std::string real = fs::canonical(dir, ec).string();
  if (ec) real = dir.string();
  if (real.find("/usb") != std::string::npos) return "usb";
  if (real.find("/virtio") != std::string::npos) return "virtio";
  if (real.find("/mmc_host") != std::string::npos || StartsWith(name, "mmcblk")) return "mmc";
  if (real.find("/end_device-") != std::string::npos ||
      real.find("/expander-") != std::string::npos)
    return "sas";
  if (real.find("/ata") != std::string::npos) return "sata";
  if (fs::exists(dir / "device" / "vendor", ec)) return "scsi";
  return {};
}

// The dm device holding `disk_dir` (or one of its partitions) as a multipath path, or "".
std::string MultipathHolder(const fs::path& sysfs_block, const fs::path& disk_dir) {
  for (const std::string& holder : ListDir(disk_dir / "holders")) {
    if (!StartsWith(holder, "dm-")) continue;
    if (StartsWith(Attr(sysfs_block / holder / "dm" / "uuid"), "mpath-")) return holder;
  }
  return {};
}

int KindRank(DiskKind kind) {
  switch (kind) {
    case DiskKind::kNvme:
      return 0;
    case DiskKind::kSsd:
      return 1;
    case DiskKind::kHdd:
      return 2;
  }
  return 2;
}

bool Matches(const Disk& disk, std::string_view selector) {
  return selector == disk.name || selector == disk.path ||
         (!disk.serial.empty() && selector == disk.serial) ||
         (!disk.wwn.empty() && ToLowerAscii(selector) == ToLowerAscii(disk.wwn));
}

}  // namespace

bool NaturalLess(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  auto is_digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  while (i < a.size() && j < b.size()) {
    bool da = is_digit(a[i]), db = is_digit(b[j]);
    size_t ei = i, ej = j;
    while (ei < a.size() && is_digit(a[ei]) == da) ++ei;
    while (ej < b.size() && is_digit(b[ej]) == db) ++ej;
    std::string_view ra = a.substr(i, ei - i), rb = b.substr(j, ej - j);
    if (da != db) return da;  // digits before letters
    if (da) {
      // Compare as numbers without overflow: strip leading zeros, then length, then digits.
      size_t za = ra.find_first_not_of('0'), zb = rb.find_first_not_of('0');
      std::string_view na = za == std::string_view::npos ? "" : ra.substr(za);
      std::string_view nb = zb == std::string_view::npos ? "" : rb.substr(zb);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
    } else {
      if (ra.size() != rb.size()) return ra.size() < rb.size();
      if (ra != rb) return ra < rb;
    }
    i = ei;
    j = ej;
  }
  return (a.size() - i) < (b.size() - j);
}

Result<std::vector<GroupMapping>> ParseGroupMapping(std::string_view text) {
  std::vector<GroupMapping> out;
  std::set<int> seen;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find_first_of(" \t\n;", pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view item = text.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return Status::Error(Code::kInvalid,
                           fmt::format("disk group mapping: '{}' is not ID=DISK[,DISK…]", item));
    }
    std::string_view id_text = item.substr(0, eq);
    int id = 0;
    auto [p, ec] = std::from_chars(id_text.data(), id_text.data() + id_text.size(), id);
    if (ec != std::errc() || p != id_text.data() + id_text.size() || id < 1) {
      return Status::Error(Code::kInvalid,
                           fmt::format("disk group mapping: '{}' is not a group id", id_text));
    }
    if (!seen.insert(id).second) {
      return Status::Error(Code::kInvalid,
                           fmt::format("disk group mapping: group {} is given twice", id));
    }
    GroupMapping group;
    group.group = id;
    std::string_view list = item.substr(eq + 1);
    size_t s = 0;
    while (s <= list.size()) {
      size_t comma = list.find(',', s);
      if (comma == std::string_view::npos) comma = list.size();
      std::string_view sel = list.substr(s, comma - s);
      if (!sel.empty()) group.selectors.emplace_back(sel);
      s = comma + 1;
    }
    if (group.selectors.empty()) {
      return Status::Error(Code::kInvalid,
                           fmt::format("disk group mapping: group {} names no disk", id));
    }
    out.push_back(std::move(group));
  }
  return out;
}

bool IsBmcVirtualMedia(std::string_view vendor, std::string_view model,
                       std::string_view transport) {
  std::string v = ToLowerAscii(TrimBlanks(vendor)), m = ToLowerAscii(TrimBlanks(model));
  // Model strings BMCs give their emulated drives (AMI MegaRAC: "Virtual CDROM0", "Virtual
  // Floppy0", "Virtual HDisk0"; Supermicro/ATEN: "Virtual CDROM"; iDRAC: "Virtual CD",
  // "Virtual Floppy", "LCDRIVE"; iLO: "Virtual DVD-ROM"; Cisco CIMC: "vKVM-Mapped vDVD").
  static constexpr std::string_view kModels[] = {"virtual cd",    "virtual dvd",  "virtual floppy",
                                                 "virtual hdisk", "virtual disk", "virtual media",
                                                 "virtual_cdrom", "lcdrive",      "vkvm-mapped",
                                                 "virtual usb",   "remote disk"};
  for (std::string_view k : kModels) {
    if (m.find(k) != std::string::npos) return true;
  }
  // Vendors that are BMCs, not disk makers: anything they present over USB is virtual media.
  static constexpr std::string_view kVendors[] = {
      "ami",    "american megatrends", "aten", "idrac", "hp ilo", "hpe ilo",
      "ilo",    "ibm-esxs imm",        "imm2", "xcc",   "cimc",   "cisco",
      "avocent"};
  if (transport == "usb") {
    for (std::string_view k : kVendors) {
      if (v == k) return true;
    }
  }
  return false;
}

std::string ExclusionReason(const Disk& disk) {
  const std::string& n = disk.name;
  if (StartsWith(n, "loop")) return "loop device";
  if (StartsWith(n, "zram")) return "compressed RAM disk (zram)";
  if (StartsWith(n, "ram")) return "RAM disk";
  if (StartsWith(n, "dm-")) return "device-mapper device";
  if (StartsWith(n, "md")) return "software RAID (md) device";
  if (StartsWith(n, "sr")) return "optical drive";
  if (StartsWith(n, "fd")) return "floppy drive";
  if (StartsWith(n, "nbd")) return "network block device";
  // Before "zero size": an empty virtual CD drive has no medium, but what it is matters more.
  if (IsBmcVirtualMedia(disk.vendor, disk.model, disk.transport)) return "BMC virtual media";
  if (disk.size_bytes == 0) return "zero size";
  if (disk.removable) return "removable";
  if (disk.read_only) return "read-only";
  return {};
}

Result<Disk> ReadSysfsDisk(const std::string& sysfs_root, const std::string& name,
                           const std::string& dev_root) {
  fs::path dir = fs::path(sysfs_root) / "block" / name;
  std::error_code ec;
  if (!fs::exists(dir / "size", ec)) {
    return Status::Error(Code::kNotFound, fmt::format("{}: no size in sysfs", dir.string()));
  }
  Disk d;
  d.name = name;
  d.path = (fs::path(dev_root) / name).string();
  d.dev = Attr(dir / "dev");
  // sysfs sizes are always in 512-byte units, whatever the logical sector size.
  d.size_bytes = AttrNumber(dir / "size", 0) * 512;
  d.logical_sector_size =
      static_cast<uint32_t>(AttrNumber(dir / "queue" / "logical_block_size", 512));
  d.physical_sector_size = static_cast<uint32_t>(
      AttrNumber(dir / "queue" / "physical_block_size", d.logical_sector_size));
  d.rotational = AttrNumber(dir / "queue" / "rotational", 0) != 0;
  d.removable = AttrNumber(dir / "removable", 0) != 0;
  d.read_only = AttrNumber(dir / "ro", 0) != 0;
  d.vendor = Attr(dir / "device" / "vendor");
  d.model = Attr(dir / "device" / "model");
  d.serial = Attr(dir / "device" / "serial");             // NVMe controller, some SCSI
  if (d.serial.empty()) d.serial = Attr(dir / "serial");  // virtio
  if (d.serial.empty()) {
    auto page = ReadSmallFile((dir / "device" / "vpd_pg80").string(), 4096);
    if (page.ok()) d.serial = SerialFromVpd80(*page);
  }
  d.wwn = Attr(dir / "wwid");                                // NVMe namespaces
  if (d.wwn.empty()) d.wwn = Attr(dir / "device" / "wwid");  // SCSI
  d.transport = Transport(dir, name);
  // A virtio disk's device/ is the virtio device, whose vendor is a PCI id ("0x1af4"), not a name.
  if (d.transport == "virtio" && StartsWith(d.vendor, "0x")) d.vendor.clear();
  if (d.transport == "nvme") {
    d.kind = DiskKind::kNvme;
  } else {
    d.kind = d.rotational ? DiskKind::kHdd : DiskKind::kSsd;
  }
  return d;
}

Result<Inventory> ScanDisks(const InventoryOptions& options) {
  fs::path block = fs::path(options.sysfs_root) / "block";
  std::error_code ec;
  if (!fs::is_directory(block, ec)) {
    return Status::Error(Code::kIo, fmt::format("reading {}: not a directory", block.string()));
  }
  Inventory inv;
  std::vector<Disk> usable;
  for (const std::string& name : ListDir(block)) {
    auto disk = ReadSysfsDisk(options.sysfs_root, name, options.dev_root);
    if (!disk.ok()) {
      Disk partial;
      partial.name = name;
      partial.path = (fs::path(options.dev_root) / name).string();
      inv.excluded.push_back({partial, "unreadable: " + disk.status().detail()});
      continue;
    }
    std::string reason = ExclusionReason(*disk);
    if (reason.empty() && AttrNumber(block / name / "hidden", 0) == 1) {
      // Native NVMe multipath: each controller path (nvme0c0n1) is hidden behind the nvme0n1 head.
      reason = "hidden NVMe multipath path";
    }
    if (reason.empty()) {
      std::string mpath = MultipathHolder(block, block / name);
      if (!mpath.empty()) reason = "multipath path of " + mpath;
    }
    if (!reason.empty()) {
      inv.excluded.push_back({std::move(*disk), std::move(reason)});
    } else {
      if (options.probe_contents) {
        DeviceContents c = ProbeDeviceContents(disk->path);
        disk->partition_table = c.partition_table;
        disk->signature = c.signature;
      }
      usable.push_back(std::move(*disk));
    }
  }

  if (options.mapping.empty()) {
    using Key = std::tuple<int, uint64_t, std::string>;
    std::map<Key, std::vector<Disk>> by_key;  // ordered exactly as groups are numbered
    for (Disk& d : usable)
      by_key[{KindRank(d.kind), d.size_bytes, d.model}].push_back(std::move(d));
    int id = 1;
    for (auto& [key, disks] : by_key) {
      std::sort(disks.begin(), disks.end(),
                [](const Disk& a, const Disk& b) { return NaturalLess(a.name, b.name); });
      DiskGroup g;
      g.id = id++;
      g.kind = disks.front().kind;
      g.size_bytes = std::get<1>(key);
      g.model = std::get<2>(key);
      g.disks = std::move(disks);
      inv.groups.push_back(std::move(g));
    }
  } else {
    std::set<std::string> taken;
    for (const GroupMapping& m : options.mapping) {
      DiskGroup g;
      g.id = m.group;
      for (const std::string& sel : m.selectors) {
        for (const Disk& d : usable) {
          if (!Matches(d, sel)) continue;
          if (!taken.insert(d.name).second) {
            bool here = std::any_of(g.disks.begin(), g.disks.end(),
                                    [&](const Disk& x) { return x.name == d.name; });
            if (here) continue;
            return Status::Error(Code::kInvalid,
                                 fmt::format("disk group mapping: {} is in two groups", d.name));
          }
          g.disks.push_back(d);
        }
      }
      if (g.disks.empty()) continue;
      g.kind = g.disks.front().kind;
      g.size_bytes = g.disks.front().size_bytes;
      g.model = g.disks.front().model;
      inv.groups.push_back(std::move(g));
    }
    std::sort(inv.groups.begin(), inv.groups.end(),
              [](const DiskGroup& a, const DiskGroup& b) { return a.id < b.id; });
    for (Disk& d : usable) {
      if (!taken.count(d.name)) inv.excluded.push_back({d, "not in any configured disk group"});
    }
    std::sort(inv.excluded.begin(), inv.excluded.end(),
              [](const ExcludedDisk& a, const ExcludedDisk& b) {
                return NaturalLess(a.disk.name, b.disk.name);
              });
  }
  return inv;
}

Result<Disk> SelectDisk(const Inventory& inventory, int group) {
  for (const DiskGroup& g : inventory.groups) {
    if (g.id == group && !g.disks.empty()) return g.disks.front();
  }
  return Status::Error(Code::kNotFound, fmt::format("disk group {} does not exist", group),
                       msg::NoDiskInGroup(group));
}

const DiskGroup* FindGroupOf(const Inventory& inventory, const Disk& disk) {
  for (const DiskGroup& g : inventory.groups) {
    for (const Disk& d : g.disks) {
      if (d.name == disk.name) return &g;
    }
  }
  return nullptr;
}

std::vector<Disk> OtherDisksOfGroup(const Inventory& inventory, const Disk& target) {
  std::vector<Disk> out;
  if (const DiskGroup* g = FindGroupOf(inventory, target)) {
    for (const Disk& d : g->disks) {
      if (d.name != target.name) out.push_back(d);
    }
  }
  return out;
}

Result<Disk> DescribeTarget(const std::string& path, const std::string& sysfs_root) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    return Status::FromErrno("examining " + path, err, err == ENOENT ? Code::kNotFound : Code::kIo);
  }
  if (S_ISREG(st.st_mode)) {
    Disk d;
    d.name = fs::path(path).filename().string();
    d.path = path;
    d.size_bytes = static_cast<uint64_t>(st.st_size);
    d.is_file = true;
    d.kind = DiskKind::kHdd;
    return d;
  }
  if (!S_ISBLK(st.st_mode)) {
    return Status::Error(Code::kInvalid,
                         fmt::format("{} is neither a block device nor a regular file", path));
  }
  std::string dev = fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev));
  fs::path link = fs::path(sysfs_root) / "dev" / "block" / dev;
  std::error_code ec;
  fs::path real = fs::canonical(link, ec);
  if (ec) {
    return Status::Error(Code::kNotFound, fmt::format("{} ({}): not in {}: {}", path, dev,
                                                      link.string(), ec.message()));
  }
  if (fs::exists(real / "partition", ec)) {
    return Status::Error(Code::kInvalid,
                         fmt::format("{} is a partition; give the whole disk", path));
  }
  BYOI_ASSIGN_OR_RETURN(Disk d, ReadSysfsDisk(sysfs_root, real.filename().string()));
  d.path = path;
  return d;
}

boost::json::object DiskToJson(const Disk& d) {
  boost::json::object o;
  o["name"] = d.name;
  o["path"] = d.path;
  o["size"] = d.size_bytes;
  o["logicalSectorSize"] = d.logical_sector_size;
  o["physicalSectorSize"] = d.physical_sector_size;
  o["kind"] = DiskKindName(d.kind);
  o["vendor"] = d.vendor;
  o["model"] = d.model;
  o["serial"] = d.serial;
  o["wwn"] = d.wwn;
  o["transport"] = d.transport;
  o["rotational"] = d.rotational;
  o["removable"] = d.removable;
  o["readOnly"] = d.read_only;
  o["partitionTable"] = d.partition_table;
  o["signature"] = d.signature;
  return o;
}

boost::json::object InventoryToJson(const Inventory& inv) {
  boost::json::array groups;
  for (const DiskGroup& g : inv.groups) {
    boost::json::object o;
    o["id"] = g.id;
    o["kind"] = DiskKindName(g.kind);
    o["size"] = g.size_bytes;
    o["model"] = g.model;
    boost::json::array disks;
    for (const Disk& d : g.disks) disks.push_back(DiskToJson(d));
    o["target"] = g.disks.front().path;
    o["disks"] = std::move(disks);
    groups.push_back(std::move(o));
  }
  boost::json::array excluded;
  for (const ExcludedDisk& e : inv.excluded) {
    boost::json::object o = DiskToJson(e.disk);
    o["reason"] = e.reason;
    excluded.push_back(std::move(o));
  }
  boost::json::object out;
  out["groups"] = std::move(groups);
  out["excluded"] = std::move(excluded);
  return out;
}

std::string InventoryToText(const Inventory& inv) {
  std::string out;
  if (inv.groups.empty()) out += "no usable disk\n";
  for (const DiskGroup& g : inv.groups) {
    out += fmt::format("disk group {}: {} x {} {} {}\n", g.id, g.disks.size(), DiskKindName(g.kind),
                       HumanBytes(g.size_bytes), g.model.empty() ? "(no model)" : g.model);
    bool first = true;
    for (const Disk& d : g.disks) {
      std::string contents = d.partition_table;
      if (!d.signature.empty()) contents += (contents.empty() ? "" : ", ") + d.signature;
      out += fmt::format("  {:<16} {:>10}  {:<7} {}{}{}\n", d.path, HumanBytes(d.size_bytes),
                         d.transport.empty() ? "-" : d.transport,
                         d.serial.empty() ? "" : "serial " + d.serial,
                         contents.empty() ? "" : "  [" + contents + "]", first ? "  (target)" : "");
      first = false;
    }
  }
  if (!inv.excluded.empty()) out += "excluded:\n";
  for (const ExcludedDisk& e : inv.excluded) {
    out += fmt::format("  {:<16} {}\n", e.disk.path, e.reason);
  }
  return out;
}

}  // namespace byoi
