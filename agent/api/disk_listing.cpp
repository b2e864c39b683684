#include "agent/api/disk_listing.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <charconv>
#include <filesystem>
#include <vector>

#include "agent/base/fd.hpp"

namespace byoi {

namespace json = boost::json;

namespace {

std::string Attribute(const std::string& path) {
  Result<std::string> text = ReadSmallFile(path, 4096);
  if (!text.ok()) return {};
  std::string v = *text;
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

uint64_t Number(const std::string& text) {
  uint64_t v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v);
  return v;
}

bool IsVirtual(const std::string& name) {
  for (const char* prefix : {"loop", "ram", "zram", "dm-", "md", "sr"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace

Result<json::value> ListDisksBasic(const std::string& forced_disk, const std::string& sys_block) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(sys_block, ec)) {
    names.push_back(entry.path().filename().string());
  }
  if (ec) return Status::Error(Code::kIo, "listing " + sys_block + ": " + ec.message());
  std::sort(names.begin(), names.end());

  json::array disks;
  for (const std::string& name : names) {
    if (IsVirtual(name)) continue;
    {
      std::string dir = sys_block + "/" + name;
      // sysfs sizes are in 512-byte sectors whatever the logical block size.
      uint64_t size = Number(Attribute(dir + "/size")) * 512;
      std::string kind = name.rfind("nvme", 0) == 0                    ? "nvme"
                         : Attribute(dir + "/queue/rotational") == "0" ? "ssd"
                                                                       : "hdd";
      disks.push_back(json::object{{"name", name},
                                   {"path", "/dev/" + name},
                                   {"sizeBytes", size},
                                   {"kind", kind},
                                   {"model", Attribute(dir + "/device/model")},
                                   {"removable", Attribute(dir + "/removable") == "1"},
                                   {"readOnly", Attribute(dir + "/ro") == "1"}});
    }
  }
  return json::value(
      json::object{{"disks", std::move(disks)}, {"forcedDisk", forced_disk}, {"groups", nullptr}});
}

}  // namespace byoi
