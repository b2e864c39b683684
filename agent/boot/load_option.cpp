#include "agent/boot/load_option.hpp"

#include "agent/base/text.hpp"

// libefivar's headers have no C++ linkage guards of their own.
extern "C" {
#include <efivar/efiboot.h>
#include <efivar/efivar.h>
}

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "agent/base/bytes.hpp"
#include "agent/base/utf16.hpp"

namespace byoi {
namespace {

constexpr size_t kMaxTextChars = 1024;  // libefiboot counts at most 1024 description characters

// Device path node types and subtypes (UEFI 2.10 §10.3).
constexpr uint8_t kTypeMessaging = 0x03;
constexpr uint8_t kTypeMedia = 0x04;
constexpr uint8_t kTypeEnd = 0x7f;
constexpr uint8_t kSubtypeHardDrive = 0x01;
constexpr uint8_t kSubtypeFilePath = 0x04;
constexpr uint8_t kSubtypeEndEntire = 0xff;
constexpr uint8_t kSubtypeMac = 0x0b;
constexpr uint8_t kSubtypeIpv4 = 0x0c;
constexpr uint8_t kSubtypeIpv6 = 0x0d;
constexpr uint8_t kSubtypeUri = 0x18;
constexpr size_t kHardDriveNodeBytes = 42;

Status LibefivarError(std::string_view what) {
  return Status::FromErrno(std::string(what) + " (libefivar)", errno ? errno : EINVAL,
                           Code::kInvalid);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// libefivar 37 converts UTF-8 correctly only for 1- and 2-byte sequences, and reads past the end
// of a truncated one: anything else never reaches it.
bool LibefivarCanEncode(std::string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    auto b = static_cast<unsigned char>(text[i]);
    if (b == 0) return false;
    if (b < 0x80) continue;
    if ((b & 0xE0) != 0xC0 || b < 0xC2 || i + 1 >= text.size()) return false;
    if ((static_cast<unsigned char>(text[i + 1]) & 0xC0) != 0x80) return false;
    ++i;
  }
  return true;
}

// Walks the device path nodes and fills the summary fields of `out`. The walk is bounded by the
// node lengths, each checked against what is left.
Status SummarizeDevicePath(std::span<const uint8_t> dp, LoadOption& out) {
  size_t pos = 0;
  while (pos < dp.size()) {
    if (dp.size() - pos < 4) return Status::Error(Code::kInvalid, "truncated device path node");
    uint8_t type = dp[pos];
    uint8_t subtype = dp[pos + 1];
    size_t length = dp[pos + 2] | (dp[pos + 3] << 8);
    if (length < 4 || length > dp.size() - pos) {
      return Status::Error(Code::kInvalid, "device path node of length " + std::to_string(length) +
                                               " at offset " + std::to_string(pos));
    }
    const uint8_t* node = dp.data() + pos;
    if (type == kTypeEnd && subtype == kSubtypeEndEntire) {
      if (pos + length != dp.size()) {
        return Status::Error(Code::kInvalid, "bytes after the end of the device path");
      }
      return Status::Ok();
    }
    if (type == kTypeMedia && subtype == kSubtypeHardDrive && length >= kHardDriveNodeBytes &&
        !out.hard_drive) {
      HardDriveNode hd;
      hd.partition_number = Le32(node + 4);
      hd.start_lba = Le64(node + 8);
      hd.size_lba = Le64(node + 16);
      std::memcpy(hd.signature.data(), node + 24, 16);
      hd.format = static_cast<PartitionFormat>(node[40]);
      hd.signature_type = node[41];
      out.hard_drive = hd;
    } else if (type == kTypeMedia && subtype == kSubtypeFilePath) {
      std::string part = Utf16LeToUtf8({node + 4, length - 4}, /*stop_at_nul=*/true);
      // Firmware may split a path over several file nodes; UEFI joins them with a separator.
      if (!out.file_path.empty() && out.file_path.back() != '\\' && !part.empty() &&
          part.front() != '\\') {
        out.file_path += '\\';
      }
      out.file_path += part;
    } else if (type == kTypeMessaging && (subtype == kSubtypeMac || subtype == kSubtypeIpv4 ||
                                          subtype == kSubtypeIpv6 || subtype == kSubtypeUri)) {
      out.network = true;
    }
    pos += length;
  }
  return Status::Error(Code::kInvalid, "device path without an end node");
}

}  // namespace

std::string NormalizeLoaderPath(std::string_view path) {
  std::string out;
  out.reserve(path.size() + 1);
  for (char c : path) {
    char d = c == '/' ? '\\' : c;
    if (d == '\\' && !out.empty() && out.back() == '\\') continue;  // "\\EFI" from sloppy JSON
    out += d;
  }
  if (out.empty() || out.front() != '\\') out.insert(out.begin(), '\\');
  return out;
}

Result<std::vector<uint8_t>> EncodeLoadOption(const HardDriveNode& hd, std::string_view loader_path,
                                              std::string_view description, uint32_t attributes) {
  std::string path = NormalizeLoaderPath(loader_path);
  if (path.size() <= 1 || Utf8ToUtf16(path).size() > kMaxTextChars) {
    return Status::Error(Code::kInvalid, "loader path \"" + path + "\" is empty or too long");
  }
  if (description.empty() || Utf8ToUtf16(description).size() > kMaxTextChars) {
    return Status::Error(Code::kInvalid, "boot entry description is empty or too long");
  }
  std::string desc(description);
  if (!LibefivarCanEncode(desc) || !LibefivarCanEncode(path)) {
    return Status::Error(Code::kInvalid,
                         "boot entry description or loader path has characters libefivar cannot "
                         "encode (NUL, invalid UTF-8 or beyond U+07FF)");
  }

  // HD + File (2 bytes per UTF-16 unit, surrogate pairs included) + End, with room to spare.
  std::vector<uint8_t> dp(kHardDriveNodeBytes + 4 + 2 * (2 * path.size() + 1) + 4 + 64);
  std::array<uint8_t, 16> signature = hd.signature;
  errno = 0;
  ssize_t off = efidp_make_hd(dp.data(), static_cast<ssize_t>(dp.size()), hd.partition_number,
                              hd.start_lba, hd.size_lba, signature.data(),
                              static_cast<uint8_t>(hd.format), hd.signature_type);
  if (off < 0) return LibefivarError("making the HD() device path node");
  ssize_t n = efidp_make_file(dp.data() + off, static_cast<ssize_t>(dp.size()) - off, path.data());
  if (n < 0) return LibefivarError("making the File() device path node");
  off += n;
  n = efidp_make_end_entire(dp.data() + off, static_cast<ssize_t>(dp.size()) - off);
  if (n < 0) return LibefivarError("making the end device path node");
  off += n;
  dp.resize(static_cast<size_t>(off));

  auto* dp_ptr = reinterpret_cast<efidp>(dp.data());
  auto* desc_ptr = reinterpret_cast<unsigned char*>(desc.data());
  ssize_t need = efi_loadopt_create(nullptr, 0, attributes, dp_ptr, off, desc_ptr, nullptr, 0);
  if (need <= 0) return LibefivarError("sizing the load option");
  std::vector<uint8_t> out(static_cast<size_t>(need));
  ssize_t made =
      efi_loadopt_create(out.data(), need, attributes, dp_ptr, off, desc_ptr, nullptr, 0);
  if (made != need) return LibefivarError("building the load option");
  // libefivar 37 encodes only ASCII and 2-byte UTF-8 correctly (3-byte sequences come out wrong,
  // 4-byte ones are not UCS-2 at all): an option that does not decode to what was asked is
  // refused rather than written mangled.
  auto check = DecodeLoadOption(out);
  if (!check.ok() || check->description != desc || check->file_path != path) {
    return Status::Error(Code::kInvalid, "libefivar cannot encode the description \"" + desc +
                                             "\" or the path \"" + path + "\" faithfully");
  }
  return out;
}

Result<LoadOption> DecodeLoadOption(std::span<const uint8_t> bytes) {
  constexpr size_t kHeaderBytes = 6;  // attributes + FilePathListLength
  if (bytes.size() < kHeaderBytes + 2 || bytes.size() > 65536) {
    return Status::Error(Code::kInvalid,
                         "load option of " + std::to_string(bytes.size()) + " bytes");
  }
  // The structure is checked here, bounded, before libefiboot sees the bytes: its own validation
  // (efi_loadopt_is_valid) walks device paths past the end of malformed options.
  uint32_t attributes = Le32(bytes.data());
  size_t path_len = bytes[4] | (bytes[5] << 8);
  size_t desc_end = 0;
  for (size_t at = kHeaderBytes; at + 2 <= bytes.size(); at += 2) {
    if (bytes[at] == 0 && bytes[at + 1] == 0) {
      desc_end = at + 2;
      break;
    }
  }
  if (desc_end == 0) return Status::Error(Code::kInvalid, "description without its NUL");
  if (path_len < 4 || path_len > bytes.size() - desc_end) {
    return Status::Error(Code::kInvalid, "FilePathListLength " + std::to_string(path_len) +
                                             " does not fit the load option");
  }
  LoadOption out;
  out.device_path.assign(bytes.begin() + desc_end, bytes.begin() + desc_end + path_len);
  BYOI_RETURN_IF_ERROR(SummarizeDevicePath(out.device_path, out).Context("reading device path"));

  // Now that the layout is sound, read the fields through libefiboot's accessors (which take a
  // mutable pointer: a private copy, padded so a stray read stays inside it).
  std::vector<uint8_t> copy(bytes.begin(), bytes.end());
  copy.resize(bytes.size() + 8, 0);
  auto* opt = reinterpret_cast<efi_load_option*>(copy.data());
  const auto size = static_cast<ssize_t>(bytes.size());
  efidp dp = efi_loadopt_path(opt, size);
  if (efi_loadopt_attrs(opt) != attributes || efi_loadopt_pathlen(opt, size) != path_len ||
      reinterpret_cast<uint8_t*>(dp) != copy.data() + desc_end) {
    return Status::Error(Code::kInvalid, "libefiboot reads the load option differently");
  }
  out.attributes = attributes;
  // efi_loadopt_desc() converts into one process-wide buffer (not thread-safe): decoded here.
  out.description = Utf16LeToUtf8({bytes.data() + kHeaderBytes, desc_end - kHeaderBytes},
                                  /*stop_at_nul=*/true);
  unsigned char* data = nullptr;
  size_t data_len = 0;
  if (efi_loadopt_optional_data(opt, bytes.size(), &data, &data_len) == 0 && data != nullptr &&
      data == copy.data() + desc_end + path_len && data_len == bytes.size() - desc_end - path_len) {
    out.optional_data.assign(data, data + data_len);
  }
  return out;
}

std::string FormatDevicePath(std::span<const uint8_t> device_path) {
  // Our own printer, in efibootmgr's notation for the nodes we write: libefivar's formatter
  // (efidp_format_device_path) trusts per-type node sizes and crashes on malformed paths.
  LoadOption checked;
  if (device_path.empty() || !SummarizeDevicePath(device_path, checked).ok()) {
    return "(unprintable device path)";
  }
  std::string out;
  for (size_t pos = 0; pos + 4 <= device_path.size();) {
    const uint8_t* node = device_path.data() + pos;
    uint8_t type = node[0];
    uint8_t subtype = node[1];
    size_t length = node[2] | (node[3] << 8);
    if (type == kTypeEnd && subtype == kSubtypeEndEntire) break;
    if (!out.empty()) out += type == kTypeEnd ? "," : "/";
    if (type == kTypeEnd) {
      // End of one instance: the comma above separates instances.
    } else if (type == kTypeMedia && subtype == kSubtypeHardDrive &&
               length >= kHardDriveNodeBytes) {
      std::array<uint8_t, 16> sig{};
      std::memcpy(sig.data(), node + 24, 16);
      std::string signature;
      if (node[41] == kSignatureTypeGuid) {
        signature = ToLowerAscii(FormatGuid(sig));
      } else {
        signature = fmt::format("{:08x}", Le32(sig.data()));
      }
      out += fmt::format("HD({},{},{},{:#x},{:#x})", Le32(node + 4),
                         node[40] == 2   ? "GPT"
                         : node[40] == 1 ? "MBR"
                                         : "?",
                         signature, Le64(node + 8), Le64(node + 16));
    } else if (type == kTypeMedia && subtype == kSubtypeFilePath) {
      out += "File(" + Utf16LeToUtf8({node + 4, length - 4}, /*stop_at_nul=*/true) + ")";
    } else if (type == kTypeMessaging && subtype == kSubtypeMac) {
      out += "MAC()";
    } else if (type == kTypeMessaging && subtype == kSubtypeIpv4) {
      out += "IPv4()";
    } else if (type == kTypeMessaging && subtype == kSubtypeIpv6) {
      out += "IPv6()";
    } else if (type == kTypeMessaging && subtype == kSubtypeUri) {
      out += "Uri()";
    } else {
      out += fmt::format("Path({},{})", type, subtype);
    }
    pos += length;
  }
  return out;
}

Result<std::array<uint8_t, 16>> GuidToEfiBytes(std::string_view text) {
  auto invalid = [&] {
    return Status::Error(Code::kInvalid, "\"" + std::string(text) + "\" is not a GUID");
  };
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
      text[23] != '-') {
    return invalid();
  }
  std::array<uint8_t, 16> be{};  // the GUID's bytes in text order
  size_t k = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '-') continue;
    int hi = HexValue(text[i]);
    int lo = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
    if (hi < 0 || lo < 0 || k >= be.size()) return invalid();
    be[k++] = static_cast<uint8_t>(hi << 4 | lo);
    ++i;
  }
  if (k != be.size()) return invalid();
  // Data1 (4 bytes), Data2 and Data3 (2 bytes each) are little-endian; Data4 is a byte array.
  return std::array<uint8_t, 16>{be[3], be[2], be[1],  be[0],  be[5],  be[4],  be[7],  be[6],
                                 be[8], be[9], be[10], be[11], be[12], be[13], be[14], be[15]};
}

}  // namespace byoi
