// `byoi-agent disks [--json] [--config FILE]`: the inventory with its disk groups and the reason
// each other disk is excluded (docs/cli.md, docs/disks.md).
#include <boost/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/base/fd.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/config.hpp"
#include "agent/disk/inventory.hpp"

namespace byoi {
int RunDisks(const DisksArgs& args) {
  InventoryOptions options;
  if (!args.config.empty()) {
    // The daemon's config file, read as the daemon reads it: its disk_groups decide the groups.
    ConfigSources sources;
    sources.config_file = args.config;
    sources.kernel_cmdline.clear();
    Result<DaemonConfig> config = LoadOptions(sources);
    Result<std::vector<GroupMapping>> mapping =
        config.ok() ? ParseGroupMapping(config->job.disk_groups)
                    : Result<std::vector<GroupMapping>>(config.status());
    if (!mapping.ok()) {
      std::fprintf(stderr, "byoi-agent disks: %s\n", mapping.status().ToString().c_str());
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
