#include "agent/api/disk_listing.hpp"

#include <boost/json.hpp>

#include "agent/disk/inventory.hpp"

namespace byoi {

namespace json = boost::json;

Result<json::value> ListDisks(const std::string& forced_disk, const std::string& disk_groups) {
  InventoryOptions options;
  options.probe_contents = true;
  BYOI_ASSIGN_OR_RETURN(options.mapping, ParseGroupMapping(disk_groups));
  BYOI_ASSIGN_OR_RETURN(Inventory inventory, ScanDisks(options));
  json::object out = InventoryToJson(inventory);
  json::array disks;
  for (const DiskGroup& group : inventory.groups) {
    for (const Disk& disk : group.disks) {
      json::object o = DiskToJson(disk);
      o["group"] = group.id;
      disks.push_back(std::move(o));
    }
  }
  out["disks"] = std::move(disks);
  out["forcedDisk"] = forced_disk;
  return json::value(std::move(out));
}

}  // namespace byoi
