#include "agent/boot/boot_entry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "agent/base/messages.hpp"
#include "agent/boot/utf16.hpp"

namespace byoi {
namespace {

constexpr size_t kMaxLabelChars = 100;

std::optional<uint16_t> ParseBootNumber(std::string_view name) {
  if (name.size() != 8 || name.substr(0, 4) != "Boot") return std::nullopt;
  uint16_t n = 0;
  for (char c : name.substr(4)) {
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (v < 0) return std::nullopt;  // UEFI names use upper-case hex digits only
    n = static_cast<uint16_t>(n << 4 | v);
  }
  return n;
}

std::vector<uint16_t> ParseU16List(const std::vector<uint8_t>& data) {
  std::vector<uint16_t> out;
  for (size_t i = 0; i + 1 < data.size(); i += 2) {
    out.push_back(static_cast<uint16_t>(data[i] | (data[i + 1] << 8)));
  }
  return out;
}

std::vector<uint8_t> EncodeU16List(const std::vector<uint16_t>& list) {
  std::vector<uint8_t> out;
  for (uint16_t v : list) {
    out.push_back(v & 0xFF);
    out.push_back(v >> 8);
  }
  return out;
}

std::string JoinNumbers(const std::vector<uint16_t>& list) {
  std::string out;
  for (uint16_t v : list) {
    if (!out.empty()) out += ',';
    out += fmt::format("{:04X}", v);
  }
  return out;
}

bool ContainsIgnoreCase(std::string_view haystack, std::string_view needle) {
  std::string h = ToUpperAscii(haystack);
  return h.find(ToUpperAscii(needle)) != std::string::npos;
}

// The variable, or nullopt when it does not exist.
Result<std::optional<EfiVariable>> ReadOptional(EfiVars& vars, std::string_view name) {
  auto var = vars.Read(name);
  if (var.ok()) return std::optional<EfiVariable>(std::move(*var));
  if (var.status().code() == Code::kNotFound) return std::optional<EfiVariable>();
  return std::move(var).status().Context("reading " + std::string(name));
}

// BootOrder, or nullopt when it does not exist. kInvalid when its data is not a list of 2-byte
// entry numbers: rewriting it from a guess could drop the firmware's own entries.
Result<std::optional<EfiVariable>> ReadBootOrder(EfiVars& vars) {
  BYOI_ASSIGN_OR_RETURN(std::optional<EfiVariable> order, ReadOptional(vars, "BootOrder"));
  if (order && order->data.size() % 2 != 0) {
    return Status::Error(Code::kInvalid, "BootOrder holds " + std::to_string(order->data.size()) +
                                             " bytes, not a list of 2-byte entry numbers");
  }
  return order;
}

// What Install reads before its first write, and refuses when it cannot use it.
Status CheckReadable(EfiVars& vars) {
  auto listed = vars.List();
  if (!listed.ok()) return std::move(listed).status().Context("listing EFI variables");
  BYOI_RETURN_IF_ERROR(ReadBootOrder(vars));
  BYOI_RETURN_IF_ERROR(ReadOptional(vars, "BootNext"));
  return Status::Ok();
}

Status WriteAndVerify(EfiVars& vars, const std::string& name, const EfiVariable& var) {
  BYOI_RETURN_IF_ERROR(vars.Write(name, var).Context("writing " + name));
  auto back = vars.Read(name);
  if (!back.ok()) return std::move(back).status().Context("reading back " + name);
  if (*back != var) {
    return Status::Error(
        Code::kIo, "reading back " + name + ": firmware kept " + std::to_string(back->data.size()) +
                       " bytes with attributes " + fmt::format("{:#x}", back->attributes) +
                       ", we wrote " + std::to_string(var.data.size()) + " bytes with " +
                       fmt::format("{:#x}", var.attributes));
  }
  return Status::Ok();
}

Status DeleteAndVerify(EfiVars& vars, const std::string& name) {
  BYOI_RETURN_IF_ERROR(vars.Delete(name).Context("deleting " + name));
  auto back = vars.Read(name);
  if (back.ok()) return Status::Error(Code::kIo, "deleting " + name + ": it is still there");
  if (back.status().code() != Code::kNotFound) {
    return std::move(back).status().Context("reading back deleted " + name);
  }
  return Status::Ok();
}

bool SamePartition(const HardDriveNode& a, const HardDriveNode& b) {
  if (a.signature_type != b.signature_type || a.signature != b.signature) return false;
  // An MBR signature names the disk, not the partition.
  return a.signature_type == kSignatureTypeGuid || a.partition_number == b.partition_number;
}

Result<BootEntryResult> Install(EfiVars& vars, const BootEntryRequest& request,
                                BootOrderPolicy policy) {
  BootEntryResult result;
  if (policy == BootOrderPolicy::kNone) return result;

  BYOI_ASSIGN_OR_RETURN(HardDriveNode hd, HardDriveNodeFor(request.esp));
  std::string wanted_path = NormalizeLoaderPath(request.loader_path);
  BYOI_ASSIGN_OR_RETURN(std::vector<uint8_t> option,
                        EncodeLoadOption(hd, wanted_path, request.label));
  EfiVariable desired{kEfiBootVariableAttributes, option};

  // What NVRAM holds now. Entries that cannot be read or parsed are left alone: never matched,
  // never removed, their numbers never reused.
  auto listed = vars.List();
  if (!listed.ok()) return std::move(listed).status().Context("listing EFI variables");
  std::vector<std::string> names = std::move(*listed);
  std::set<uint16_t> used;
  std::map<uint16_t, std::pair<EfiVariable, LoadOption>> entries;
  for (const std::string& name : names) {
    std::optional<uint16_t> number = ParseBootNumber(name);
    if (!number) continue;
    used.insert(*number);
    auto var = vars.Read(name);
    if (!var.ok()) continue;
    auto decoded = DecodeLoadOption(var->data);
    if (!decoded.ok()) continue;
    entries.emplace(*number, std::make_pair(std::move(*var), std::move(*decoded)));
  }
  BYOI_ASSIGN_OR_RETURN(std::optional<EfiVariable> order_var, ReadBootOrder(vars));
  BYOI_ASSIGN_OR_RETURN(std::optional<EfiVariable> next_var, ReadOptional(vars, "BootNext"));
  std::vector<uint16_t> old_order =
      order_var ? ParseU16List(order_var->data) : std::vector<uint16_t>();
  std::optional<uint16_t> old_next;
  if (next_var && next_var->data.size() == 2) old_next = ParseU16List(next_var->data).front();
  used.insert(old_order.begin(), old_order.end());
  if (old_next) used.insert(*old_next);

  // Reuse or allocate.
  std::optional<uint16_t> match;
  for (const auto& [number, entry] : entries) {
    const LoadOption& opt = entry.second;
    if (opt.hard_drive && SamePartition(*opt.hard_drive, hd) &&
        EqualsIgnoreCaseAscii(NormalizeLoaderPath(opt.file_path), wanted_path)) {
      match = number;
      break;
    }
  }
  if (match) {
    result.number = *match;
    result.reused = true;
  } else {
    uint32_t n = 0;
    while (n <= 0xFFFF && used.count(static_cast<uint16_t>(n))) ++n;
    if (n > 0xFFFF) return Status::Error(Code::kIo, "no free Boot#### number");
    result.number = static_cast<uint16_t>(n);
  }
  for (const auto& [number, entry] : entries) {
    const LoadOption& opt = entry.second;
    if (number != result.number && opt.hard_drive && !IsNetworkBootOption(opt) &&
        opt.description == request.label) {
      result.removed.push_back(number);
    }
  }

  // 1. The entry.
  std::string name = BootVariableName(result.number);
  if (!match || entries.at(*match).first != desired) {
    BYOI_RETURN_IF_ERROR(WriteAndVerify(vars, name, desired));
    result.rewritten = true;
  }

  // 2. BootOrder and BootNext.
  auto is_removed = [&](uint16_t n) {
    return std::find(result.removed.begin(), result.removed.end(), n) != result.removed.end();
  };
  std::vector<uint16_t> order;
  for (uint16_t n : old_order) {
    // bootnext leaves our entry where it was, if it was there at all.
    if (!is_removed(n) && (policy == BootOrderPolicy::kBootNext || n != result.number)) {
      order.push_back(n);
    }
  }
  if (policy == BootOrderPolicy::kFirst) {
    order.insert(order.begin(), result.number);
  } else if (policy == BootOrderPolicy::kAfterNetwork) {
    size_t at = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      auto it = entries.find(order[i]);
      if (it != entries.end() && IsNetworkBootOption(it->second.second)) at = i + 1;
    }
    order.insert(order.begin() + static_cast<std::ptrdiff_t>(at), result.number);
  }
  if (order != old_order) {
    BYOI_RETURN_IF_ERROR(WriteAndVerify(
        vars, "BootOrder", EfiVariable{kEfiBootVariableAttributes, EncodeU16List(order)}));
  }
  result.boot_order = order;

  result.boot_next = old_next;
  if (policy == BootOrderPolicy::kBootNext) {
    EfiVariable next{kEfiBootVariableAttributes, EncodeU16List({result.number})};
    if (!next_var || *next_var != next)
      BYOI_RETURN_IF_ERROR(WriteAndVerify(vars, "BootNext", next));
    result.boot_next = result.number;
  } else if (next_var && (!old_next || *old_next != result.number) &&
             (policy == BootOrderPolicy::kFirst || (old_next && is_removed(*old_next)))) {
    BYOI_RETURN_IF_ERROR(DeleteAndVerify(vars, "BootNext"));
    result.boot_next.reset();
  }

  // 3. The stale entries, now that nothing references them.
  for (uint16_t n : result.removed)
    BYOI_RETURN_IF_ERROR(DeleteAndVerify(vars, BootVariableName(n)));

  result.written = true;
  result.label = request.label;
  auto decoded = DecodeLoadOption(option);
  if (decoded.ok()) result.device_path = FormatDevicePath(decoded->device_path);
  return result;
}

}  // namespace

Result<BootOrderPolicy> ParseBootOrderPolicy(std::string_view text) {
  if (text == "first") return BootOrderPolicy::kFirst;
  if (text == "after-network") return BootOrderPolicy::kAfterNetwork;
  if (text == "bootnext") return BootOrderPolicy::kBootNext;
  if (text == "none") return BootOrderPolicy::kNone;
  return Status::Error(Code::kInvalid, "boot order policy \"" + std::string(text) +
                                           "\": expected first, after-network, bootnext or none");
}

std::string_view BootOrderPolicyName(BootOrderPolicy policy) {
  switch (policy) {
    case BootOrderPolicy::kFirst:
      return "first";
    case BootOrderPolicy::kAfterNetwork:
      return "after-network";
    case BootOrderPolicy::kBootNext:
      return "bootnext";
    case BootOrderPolicy::kNone:
      return "none";
  }
  return "?";
}

std::string ChooseBootLabel(const BootLoader& loader, std::string_view manifest_description) {
  auto clean = [](std::string_view text) {
    // Printable ASCII only: firmware menus rarely draw more, and libefivar encodes little more.
    // Each other character (one UTF-8 sequence) becomes '?'.
    std::string out;
    for (char c : text) {
      auto b = static_cast<unsigned char>(c);
      if (b >= 0x20 && b < 0x7F) {
        out += c;
      } else if (b >= 0xC0) {
        out += '?';
      }
    }
    size_t b = out.find_first_not_of(' ');
    size_t e = out.find_last_not_of(' ');
    out = b == std::string::npos ? std::string() : out.substr(b, e - b + 1);
    if (out.size() > kMaxLabelChars) out.resize(kMaxLabelChars);
    return out;
  };
  for (std::string_view candidate : {std::string_view(loader.csv_label), manifest_description,
                                     std::string_view(loader.os_dir)}) {
    std::string label = clean(candidate);
    if (!label.empty()) return label;
  }
  return "BYOI";
}

Result<HardDriveNode> HardDriveNodeFor(const EspLocation& esp) {
  HardDriveNode hd;
  hd.partition_number = esp.partition_number;
  hd.start_lba = esp.start_lba;
  hd.size_lba = esp.size_lba;
  if (esp.table == PartitionTableType::kGpt) {
    BYOI_ASSIGN_OR_RETURN(hd.signature, GuidToEfiBytes(esp.partition_guid));
    hd.format = PartitionFormat::kGpt;
    hd.signature_type = kSignatureTypeGuid;
  } else {
    for (int i = 0; i < 4; ++i) hd.signature[i] = (esp.mbr_signature >> (8 * i)) & 0xFF;
    hd.format = PartitionFormat::kMbr;
    hd.signature_type = kSignatureTypeMbr;
  }
  return hd;
}

bool IsNetworkBootOption(const LoadOption& option) {
  return option.network || ContainsIgnoreCase(option.description, "PXE") ||
         ContainsIgnoreCase(option.description, "Network") ||
         ContainsIgnoreCase(option.description, "HTTP");
}

std::string BootVariableName(uint16_t number) { return fmt::format("Boot{:04X}", number); }

std::string BootEntryResult::Summary() const {
  if (!written) return "boot entries left unchanged (policy none)";
  std::string out = BootVariableName(number) + " \"" + label + "\"";
  out += reused ? (rewritten ? " (updated)" : " (reused)") : " (new)";
  if (!device_path.empty()) out += " " + device_path;
  out += ", BootOrder " + (boot_order.empty() ? std::string("empty") : JoinNumbers(boot_order));
  if (boot_next) out += fmt::format(", BootNext {:04X}", *boot_next);
  if (!removed.empty()) out += ", removed " + JoinNumbers(removed);
  return out;
}

Status CheckBootVariables(EfiVars& vars) {
  return CheckReadable(vars).DefaultMessage(msg::kBootEntry);
}

Result<BootEntryResult> InstallBootEntry(EfiVars& vars, const BootEntryRequest& request,
                                         BootOrderPolicy policy) {
  auto result = Install(vars, request, policy);
  if (!result.ok()) return std::move(result).status().DefaultMessage(msg::kBootEntry);
  return result;
}

}  // namespace byoi
