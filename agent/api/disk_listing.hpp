// GET /v1/disks before the disk inventory exists (agent/disk/ is built in another issue): the whole
// block devices of sysfs with their size, kind and model, and the disk the configuration forces.
// The daemon reaches the inventory only through the DisksFn seam of api_handler.hpp, so the real
// inventory (with disk groups, design.md §9) replaces this in one line of daemon_command.cpp.
#pragma once

#include <boost/json/value.hpp>
#include <string>

#include "agent/base/status.hpp"

namespace byoi {

// {"disks": [{"name", "path", "sizeBytes", "kind" ("nvme"|"ssd"|"hdd"), "model", "removable",
// "readOnly"}], "forcedDisk": "<--disk or empty>", "groups": null}. Skips loop, ram, zram, dm-*,
// md* and sr* devices. `sys_block` is /sys/block (a fake tree in tests).
Result<boost::json::value> ListDisksBasic(const std::string& forced_disk,
                                          const std::string& sys_block = "/sys/block");

}  // namespace byoi
