#include "agent/api/agent_id.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <vector>

#include "agent/base/fd.hpp"

namespace byoi {

namespace {

std::string ReadAttribute(const std::string& path) {
  Result<std::string> text = ReadSmallFile(path, 4096);
  if (!text.ok()) return {};
  std::string value = *text;
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.pop_back();
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return value;
}

bool IsUsableUuid(const std::string& uuid) {
  if (uuid.size() != 36) return false;
  bool all_zero = true, all_f = true;
  for (size_t i = 0; i < uuid.size(); ++i) {
    char c = uuid[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
      continue;
    }
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
    all_zero = all_zero && c == '0';
    all_f = all_f && c == 'f';
  }
  return !all_zero && !all_f;
}

}  // namespace

Result<std::string> ResolveAgentId(const std::string& configured, const std::string& sysfs) {
  if (!configured.empty()) return configured;

  std::string uuid = ReadAttribute(sysfs + "/class/dmi/id/product_uuid");
  if (IsUsableUuid(uuid)) return uuid;

  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(sysfs + "/class/net", ec)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    std::string dir = sysfs + "/class/net/" + name;
    // type 1 is ARPHRD_ETHER; a `device` link means real hardware (not a bridge, bond or veth);
    // addr_assign_type 0 is NET_ADDR_PERM, the address burnt into the card.
    if (ReadAttribute(dir + "/type") != "1" || ReadAttribute(dir + "/addr_assign_type") != "0" ||
        !std::filesystem::exists(dir + "/device", ec)) {
      continue;
    }
    std::string mac = ReadAttribute(dir + "/address");
    if (mac.size() == 17 && mac != "00:00:00:00:00:00") return mac;
  }
  return Status::Error(Code::kNotFound,
                       "no agent id: set agent_id; there is no DMI product UUID and no permanent "
                       "MAC address");
}

}  // namespace byoi
