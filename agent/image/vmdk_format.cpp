#include "agent/image/vmdk_format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "agent/base/bytes.hpp"
#include "agent/base/text.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Invalid;
using image_refusal::Unsupported;

namespace {

constexpr uint32_t kKnownFlags = kVmdkFlagNewlineCheck | kVmdkFlagRedundantGd | kVmdkFlagZeroGrain |
                                 kVmdkFlagCompressed | kVmdkFlagMarkers;
// A grain of at most 2 MiB, the largest qcow2 cluster too: the compressed-cluster check cuts the
// disk in 16 MiB slices that no compressed cluster may cross (verify_compressed.cpp).
constexpr uint64_t kMaxGranularity = 4096;
// QEMU refuses more ("L2 table size too big"); VMware always writes 512.
constexpr uint32_t kMaxGtesPerGt = 512;
// capacity * 512 must not overflow, with room for the arithmetic on top.
constexpr uint64_t kMaxCapacity = 1ull << 55;
constexpr size_t kMaxExtentLines = 1024;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

// The value of a `key=value` or `key = "value"` line, unquoted.
std::string_view Unquote(std::string_view v) {
  v = TrimBlanks(v);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  return v;
}

// An extent line: ACCESS SECTORS TYPE "FILE" [OFFSET]. False when the line is not one.
bool ParseExtentLine(std::string_view line, VmdkExtentLine& out) {
  auto word = [&line]() {
    line = TrimBlanks(line);
    size_t end = std::min(line.find_first_of(" \t"), line.size());
    std::string_view w = line.substr(0, end);
    line.remove_prefix(end);
    return w;
  };
  std::string_view access = word();
  if (access != "RW" && access != "RDONLY" && access != "NOACCESS") return false;
  std::string_view sectors = word();
  if (sectors.empty() || sectors.size() > 19 ||
      !std::all_of(sectors.begin(), sectors.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  out.access = std::string(access);
  out.sectors = std::stoull(std::string(sectors));
  out.type = std::string(word());
  line = TrimBlanks(line);
  if (!line.empty() && line.front() == '"') {
    size_t close = line.find('"', 1);
    out.file =
        std::string(line.substr(1, close == std::string_view::npos ? line.size() - 1 : close - 1));
  }
  return !out.type.empty();
}

}  // namespace

bool HasVmdkMagic(std::span<const uint8_t> bytes) {
  return bytes.size() >= 4 && std::memcmp(bytes.data(), "KDMV", 4) == 0;
}

Result<VmdkHeader> DecodeVmdkHeader(std::span<const uint8_t> s) {
  if (s.size() < kVmdkSector) {
    return Invalid(fmt::format("{} bytes are too few for a VMDK header", s.size()));
  }
  if (!HasVmdkMagic(s)) return Invalid("no VMDK sparse header (magic KDMV)");
  VmdkHeader h;
  h.version = Le32(&s[4]);
  h.flags = Le32(&s[8]);
  h.capacity = Le64(&s[12]);
  h.granularity = Le64(&s[20]);
  h.desc_offset = Le64(&s[28]);
  h.desc_size = Le64(&s[36]);
  h.gtes_per_gt = Le32(&s[44]);
  h.rgd_offset = Le64(&s[48]);
  h.gd_offset = Le64(&s[56]);
  h.grain_offset = Le64(&s[64]);
  h.unclean_shutdown = s[72] != 0;
  std::memcpy(h.check_bytes, &s[73], 4);
  h.compress_algorithm = Le16(&s[77]);

  if (h.version < 1 || h.version > 3) {
    return Unsupported(fmt::format("VMDK version {}", h.version));
  }
  if (uint32_t unknown = h.flags & ~kKnownFlags) {
    return Unsupported(fmt::format("unknown VMDK flags {:#x}", unknown));
  }
  if ((h.flags & kVmdkFlagNewlineCheck) && std::memcmp(h.check_bytes, "\n \r\n", 4) != 0) {
    return Invalid(
        "the header's newline check bytes are damaged (the file went through a text-mode "
        "transfer)");
  }
  if (h.compress_algorithm > 1) {
    return Unsupported(fmt::format("VMDK compression algorithm {}", h.compress_algorithm));
  }
  if (h.compressed() && !h.markers()) return Unsupported("compressed grains without markers");
  if (!h.compressed() && h.markers()) return Unsupported("grain markers without compression");
  if (h.granularity == 0 || h.granularity > kMaxGranularity ||
      !std::has_single_bit(h.granularity)) {
    return Unsupported(
        fmt::format("a grain of {} sectors (a power of two from 1 to {} is expected)",
                    h.granularity, kMaxGranularity));
  }
  if (h.gtes_per_gt == 0 || h.gtes_per_gt > kMaxGtesPerGt) {
    return Unsupported(fmt::format("grain tables of {} entries (1 to {} are expected)",
                                   h.gtes_per_gt, kMaxGtesPerGt));
  }
  if (h.capacity >= kMaxCapacity) {
    return Unsupported(fmt::format("a capacity of {} sectors", h.capacity));
  }
  return h;
}

Result<VmdkHeader> FindVmdkHeader(std::span<const uint8_t> file, const VmdkHeader& first) {
  if (first.gd_offset != kVmdkGdAtEnd) return first;
  // QEMU reads the footer from the file's size in whole sectors: a tail of fewer than 512 bytes
  // after the end-of-stream marker is ignored.
  const uint64_t sectors_end = file.size() / kVmdkSector * kVmdkSector;
  if (sectors_end < 4 * kVmdkSector) {
    return Invalid("the grain directory is at the end, but the file is too short for a footer");
  }
  const uint64_t at = sectors_end - 3 * kVmdkSector;
  const uint8_t* f = file.data() + at;
  const std::string where = fmt::format("footer at {:#x}", at);
  if (Le32(f + 8) != 0 || Le32(f + 12) != static_cast<uint32_t>(VmdkMarkerType::kFooter)) {
    return Invalid(where + ": no footer marker");
  }
  const uint8_t* eos = f + 2 * kVmdkSector;
  if (Le64(eos) != 0 || Le32(eos + 8) != 0 ||
      Le32(eos + 12) != static_cast<uint32_t>(VmdkMarkerType::kEndOfStream)) {
    return Invalid(where + ": no end-of-stream marker after it");
  }
  Result<VmdkHeader> footer = DecodeVmdkHeader(std::span(f + kVmdkSector, kVmdkSector));
  if (!footer.ok()) return std::move(footer).status().Context(where);
  if (footer->gd_offset == kVmdkGdAtEnd) {
    return Invalid(where + ": the footer puts the grain directory at the end too");
  }
  return footer;
}

Result<VmdkMarker> DecodeVmdkMarker(std::span<const uint8_t> bytes) {
  if (bytes.size() < 12) return Invalid("a marker is cut by the end of the file");
  VmdkMarker m;
  m.value = Le64(bytes.data());
  m.size = Le32(&bytes[8]);
  if (m.size != 0) {
    m.type = VmdkMarkerType::kGrain;
    m.header_bytes = 12;
    return m;
  }
  if (bytes.size() < kVmdkSector) return Invalid("a metadata marker is cut by the end of the file");
  const uint32_t type = Le32(&bytes[12]);
  if (type > static_cast<uint32_t>(VmdkMarkerType::kFooter)) {
    return Invalid(fmt::format("a metadata marker of unknown type {}", type));
  }
  m.type = static_cast<VmdkMarkerType>(type);
  m.header_bytes = kVmdkSector;
  return m;
}

Status CheckVmdkGrainSize(const VmdkMarker& m, uint64_t at, uint64_t grain_bytes) {
  if (m.size <= 2 * grain_bytes) return Status::Ok();
  return Invalid(
      fmt::format("the grain at {:#x} has {} compressed bytes, more than two grains", at, m.size));
}

VmdkDescriptor ParseVmdkDescriptor(std::string_view text) {
  text = text.substr(0, std::min<size_t>(text.size(), kMaxVmdkDescriptorBytes));
  text = text.substr(0, std::min(text.find('\0'), text.size()));
  VmdkDescriptor d;
  while (!text.empty()) {
    size_t nl = std::min(text.find('\n'), text.size());
    std::string_view line = TrimBlanks(text.substr(0, nl));
    text.remove_prefix(std::min(nl + 1, text.size()));
    if (line.empty() || line.front() == '#') continue;
    VmdkExtentLine extent;
    if (ParseExtentLine(line, extent)) {
      if (d.extents.size() < kMaxExtentLines) d.extents.push_back(std::move(extent));
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = TrimBlanks(line.substr(0, eq));
    std::string value(Unquote(line.substr(eq + 1)));
    if (key == "createType") d.create_type = std::move(value);
    if (key == "parentCID") d.parent_cid = std::move(value);
    if (key == "parentFileNameHint") d.parent_hint = std::move(value);
  }
  return d;
}

Result<VmdkDescriptor> ReadEmbeddedDescriptor(std::span<const uint8_t> file, const VmdkHeader& h) {
  const uint64_t file_sectors = (file.size() + kVmdkSector - 1) / kVmdkSector;
  if (h.desc_offset == 0 || h.desc_size == 0 || h.desc_offset >= file_sectors) {
    return VmdkDescriptor{};
  }
  const uint64_t at = h.desc_offset * kVmdkSector;
  const uint64_t n =
      std::min({h.desc_size * kVmdkSector, kMaxVmdkDescriptorBytes, file.size() - at});
  VmdkDescriptor d =
      ParseVmdkDescriptor(std::string_view(reinterpret_cast<const char*>(file.data() + at), n));
  if (!d.parent_hint.empty()) {
    return Unsupported(fmt::format("the VMDK has a parent disk (parentFileNameHint \"{}\")",
                                   PrintableText(d.parent_hint, 256)));
  }
  return d;
}

bool LooksLikeVmdkDescriptor(std::span<const uint8_t> bytes) {
  std::string_view text(reinterpret_cast<const char*>(bytes.data()),
                        std::min<size_t>(bytes.size(), 4096));
  if (StartsWith(text, "# Disk DescriptorFile")) return true;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return false;  // QEMU wants "version=N" and its newline
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    text.remove_prefix(nl + 1);
    if (!line.empty() && line.front() == '#') continue;
    if (line.find_first_not_of(' ') == std::string_view::npos) continue;
    return line == "version=1" || line == "version=2" || line == "version=3";
  }
  return false;
}

}  // namespace byoi
