// GET /v1/disks: the disk inventory of agent/disk/ (docs/disks.md) as the API shows it, so an
// operator or a backend can see which disk a diskGroupId will pick before sending a job.
#pragma once

#include <boost/json/value.hpp>
#include <string>

#include "agent/base/status.hpp"

namespace byoi {

// {"groups": [...], "excluded": [...]} of InventoryToJson, plus "disks": every usable disk (with
// its "group" id) in group order, and "forcedDisk": the disk the configuration forces ("" when
// none). `disk_groups` is the configured explicit mapping ("" for automatic groups). Contents
// (partition table, signatures) are probed with libblkid.
// kIo when sysfs cannot be read, kInvalid for a bad mapping.
Result<boost::json::value> ListDisks(const std::string& forced_disk,
                                     const std::string& disk_groups);

}  // namespace byoi
