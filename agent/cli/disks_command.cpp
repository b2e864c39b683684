// `byoi-agent disks [--json] [--config FILE]`: the inventory with its disk groups and the reason
// each other disk is excluded (docs/cli.md, docs/disks.md).
#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/base/fd.hpp"
#include "agent/cli/commands.hpp"
#include "agent/disk/inventory.hpp"

namespace byoi {
namespace {

// The `disk_groups` value of a config file: a line `disk_groups = 1=sda,sdb 2=nvme0n1` (or with
// ':'; quotes optional; '#' starts a comment). Other keys belong to the daemon and are ignored.
Result<std::string> DiskGroupsFromConfig(const std::string& path) {
  BYOI_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    size_t b = line.find_first_not_of(" \t\"");
    if (b == std::string_view::npos) continue;
    line = line.substr(b);
    constexpr std::string_view kKey = "disk_groups";
    if (line.substr(0, kKey.size()) != kKey) continue;
    line = line.substr(kKey.size());
    size_t sep = line.find_first_not_of(" \t\"");
    if (sep == std::string_view::npos || (line[sep] != '=' && line[sep] != ':')) continue;
    std::string value(line.substr(sep + 1));
    for (char& c : value) {
      if (c == '"' || c == '\'' || c == '\r') c = ' ';
    }
    return value;
  }
  return std::string();
}

}  // namespace

int RunDisks(const DisksArgs& args) {
  InventoryOptions options;
  if (!args.config.empty()) {
    auto text = DiskGroupsFromConfig(args.config);
    if (!text.ok()) {
      std::fprintf(stderr, "byoi-agent disks: %s\n", text.status().ToString().c_str());
      return kExitUsage;
    }
    auto mapping = ParseGroupMapping(*text);
    if (!mapping.ok()) {
      std::fprintf(stderr, "byoi-agent disks: %s: %s\n", args.config.c_str(),
                   mapping.status().ToString().c_str());
      return kExitUsage;
    }
    options.mapping = std::move(*mapping);
  }
  options.probe_contents = true;
  if (const char* root = std::getenv("BYOI_SYSFS_ROOT"); root && *root) {
    options.sysfs_root = root;  // tests: a fixture tree instead of /sys
    options.probe_contents = false;
  }
  auto inventory = ScanDisks(options);
  if (!inventory.ok()) {
    std::fprintf(stderr, "byoi-agent disks: %s\n", inventory.status().ToString().c_str());
    return kExitJobError;
  }
  if (args.json) {
    std::printf("%s\n", boost::json::serialize(InventoryToJson(*inventory)).c_str());
  } else {
    std::fputs(InventoryToText(*inventory).c_str(), stdout);
  }
  return kExitOk;
}

}  // namespace byoi
