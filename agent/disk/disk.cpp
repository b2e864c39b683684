#include "agent/disk/disk.hpp"

#include <cctype>

namespace byoi {

std::string_view DiskKindName(DiskKind kind) {
  switch (kind) {
    case DiskKind::kNvme:
      return "nvme";
    case DiskKind::kSsd:
      return "ssd";
    case DiskKind::kHdd:
      return "hdd";
  }
  return "hdd";
}

std::string PartitionName(std::string_view disk_name, int number) {
  std::string out(disk_name);
  if (!out.empty() && std::isdigit(static_cast<unsigned char>(out.back()))) out += 'p';
  out += std::to_string(number);
  return out;
}

}  // namespace byoi
