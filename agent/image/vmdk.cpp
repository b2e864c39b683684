#include "agent/image/vmdk.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/base/text.hpp"
#include "agent/image/refusal.hpp"
#include "agent/image/vmdk_format.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::InRange;
using image_refusal::Invalid;
using image_refusal::Unsupported;

namespace {

// QEMU's bound on a directory ("L1 size too big"): 32 Mi entries.
constexpr uint64_t kMaxGdEntries = 32ull << 20;
// The first bytes of an seSparse extent (little-endian u64 0xcafebabe) and of a VMDK3 one.
constexpr uint8_t kSeSparseMagic[8] = {0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0};

// What the map's decoding needs, fixed once the header is validated.
struct Geometry {
  uint64_t grain_bytes = 0;
  uint64_t gtes = 0;         // entries per grain table
  uint64_t gt_coverage = 0;  // virtual bytes per grain table
  uint64_t virtual_size = 0;
  uint64_t gd_entries = 0;
  bool compressed = false;
  bool zero_grains = false;
};

// One grain as its table entry maps it.
struct Grain {
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  Kind kind = Kind::kUnallocated;
  uint64_t host = 0;               // kData: the grain's offset; kCompressed: its zlib data's
  uint64_t compressed_length = 0;  // kCompressed
};

// Decodes the table entry of the grain at virtual `offset` (`length` bytes of it inside the disk),
// checking that what it maps lies in the file. The one decoder of the validating walk and of
// every later visit: an entry accepted once decodes the same way every time.
Status DecodeGrain(std::span<const uint8_t> file, const Geometry& g, uint32_t entry,
                   uint64_t offset, uint64_t length, Grain& out) {
  out = Grain{};
  if (entry == 0) return Status::Ok();
  if (entry == 1 && g.zero_grains) {
    out.kind = Grain::Kind::kZero;
    return Status::Ok();
  }
  const uint64_t host = uint64_t{entry} * kVmdkSector;
  if (!g.compressed) {
    if (!InRange(host, length, file.size())) {
      return Invalid(fmt::format("the grain at {} maps past the end of the file ({} bytes)",
                                 Hex(host), file.size()));
    }
    out.kind = Grain::Kind::kData;
    out.host = host;
    return Status::Ok();
  }
  if (host >= file.size()) {
    return Invalid(fmt::format("the grain marker at {} lies past the end of the file ({} bytes)",
                               Hex(host), file.size()));
  }
  BYOI_ASSIGN_OR_RETURN(VmdkMarker m, DecodeVmdkMarker(file.subspan(host)));
  if (m.type != VmdkMarkerType::kGrain) {
    return Invalid(fmt::format("{} holds a metadata marker, not a grain", Hex(host)));
  }
  if (m.value != offset / kVmdkSector) {
    return Invalid(fmt::format("the grain marker at {} names sector {}, not {}", Hex(host), m.value,
                               offset / kVmdkSector));
  }
  BYOI_RETURN_IF_ERROR(CheckVmdkGrainSize(m, host, g.grain_bytes));
  if (!InRange(host + m.header_bytes, m.size, file.size())) {
    return Invalid(fmt::format("the compressed grain at {} ({} bytes) passes the end of the file",
                               Hex(host), m.size));
  }
  out.kind = Grain::Kind::kCompressed;
  out.host = host + m.header_bytes;
  out.compressed_length = m.size;
  return Status::Ok();
}

// Calls on_table(directory index, table start, table end, table offset or 0) for the grain tables
// covering [begin, end), then decodes their entries from the one holding `begin` up to `end`,
// calling on_grain(virtual offset, length inside the disk, Grain). Errors of the callbacks are
// returned unchanged; a decoding error names the table and the entry.
class TableWalker {
 public:
  TableWalker(std::span<const uint8_t> file, const Geometry& g, const uint8_t* gd)
      : file_(file), g_(g), gd_(gd) {}

  template <typename OnTable, typename OnGrain>
  Status Walk(uint64_t begin, uint64_t end, OnTable&& on_table, OnGrain&& on_grain) const {
    for (uint64_t i = begin / g_.gt_coverage; i * g_.gt_coverage < end; ++i) {
      const uint64_t start = i * g_.gt_coverage;
      const uint64_t table_end = std::min(g_.virtual_size, start + g_.gt_coverage);
      const uint64_t gt = uint64_t{Le32(gd_ + i * 4)} * kVmdkSector;
      BYOI_RETURN_IF_ERROR(on_table(i, start, table_end, gt));
      if (gt == 0) continue;
      const uint64_t first = begin > start ? (begin - start) / g_.grain_bytes : 0;
      const uint64_t stop = std::min(end, table_end);
      for (uint64_t j = first, offset = start + first * g_.grain_bytes; offset < stop;
           ++j, offset += g_.grain_bytes) {
        const uint32_t entry = Le32(file_.data() + gt + j * 4);
        const uint64_t length = std::min(g_.grain_bytes, table_end - offset);
        Grain grain;
        Status s = DecodeGrain(file_, g_, entry, offset, length, grain);
        if (!s.ok()) {
          return std::move(s).Context(
              fmt::format("in the grain table at {} (directory entry {}): "
                          "entry {} ({})",
                          Hex(gt), i, j, Hex(entry)));
        }
        BYOI_RETURN_IF_ERROR(on_grain(offset, length, grain));
      }
    }
    return Status::Ok();
  }

 private:
  std::span<const uint8_t> file_;
  const Geometry& g_;
  const uint8_t* gd_;
};

// A validated file's virtual disk, decoded from its tables at every visit.
class VmdkSource : public ExtentSource {
 public:
  VmdkSource(std::span<const uint8_t> file, const Geometry& g, const uint8_t* gd)
      : file_(file), g_(g), gd_(gd) {}

  Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const override {
    auto on_table = [&](uint64_t, uint64_t start, uint64_t table_end, uint64_t gt) {
      if (gt != 0) return Status::Ok();
      Extent e;
      e.offset = start;
      e.length = table_end - start;
      return visit(e);
    };
    return TableWalker(file_, g_, gd_)
        .Walk(begin, end, on_table, [&](uint64_t offset, uint64_t length, const Grain& grain) {
          Extent e;
          e.offset = offset;
          e.length = length;
          if (grain.kind == Grain::Kind::kData) {
            e.kind = Extent::Kind::kData;
            e.data = file_.data() + grain.host;
          } else if (grain.kind == Grain::Kind::kCompressed) {
            e.kind = Extent::Kind::kCompressed;
            e.data = file_.data() + grain.host;
            e.compressed_length = grain.compressed_length;
            e.cluster_size = static_cast<uint32_t>(g_.grain_bytes);
            e.cluster_min = length < g_.grain_bytes ? static_cast<uint32_t>(length) : 0;
            e.compression = Compression::kZlib;
          }
          return visit(e);
        });
  }

 private:
  std::span<const uint8_t> file_;
  Geometry g_;
  const uint8_t* gd_;
};

// The one full walk at open: every grain table in the file and referenced once, every grain it
// maps inside the file; counts the bytes by kind.
Status ValidateMap(std::span<const uint8_t> file, const Geometry& g, const uint8_t* gd,
                   VmdkInfo& info) {
  // One bit per sector of the file remembers the tables seen, which also bounds the walk by the
  // file's size.
  std::vector<bool> seen(file.size() / kVmdkSector + 1);
  const uint64_t table_bytes = g.gtes * 4;
  auto on_table = [&](uint64_t i, uint64_t start, uint64_t table_end, uint64_t gt) {
    if (gt == 0) {
      info.unallocated_bytes += table_end - start;
      return Status::Ok();
    }
    const std::string where = fmt::format("the grain table at {} (directory entry {})", Hex(gt), i);
    if (!InRange(gt, table_bytes, file.size())) return Invalid(where + " lies outside the file");
    if (seen[gt / kVmdkSector]) return Invalid(where + " is referenced twice");
    seen[gt / kVmdkSector] = true;
    ++info.grain_tables;
    return Status::Ok();
  };
  auto on_grain = [&](uint64_t, uint64_t length, const Grain& grain) {
    switch (grain.kind) {
      case Grain::Kind::kUnallocated:
        info.unallocated_bytes += length;
        break;
      case Grain::Kind::kZero:
        info.zero_bytes += length;
        break;
      case Grain::Kind::kData:
        info.data_bytes += length;
        break;
      case Grain::Kind::kCompressed:
        info.compressed_bytes += length;
        break;
    }
    return Status::Ok();
  };
  return TableWalker(file, g, gd).Walk(0, g.virtual_size, on_table, on_grain);
}

// Names the files a descriptor-only VMDK points to, for the refusal.
Status RefuseDescriptorOnly(std::span<const uint8_t> file) {
  const size_t n = std::min<size_t>(file.size(), kMaxVmdkDescriptorBytes);
  VmdkDescriptor d =
      ParseVmdkDescriptor(std::string_view(reinterpret_cast<const char*>(file.data()), n));
  std::string files;
  for (size_t i = 0; i < d.extents.size() && i < 4; ++i) {
    files += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", PrintableText(d.extents[i].file, 256));
  }
  if (d.extents.size() > 4) files += fmt::format(" and {} more", d.extents.size() - 4);
  return Unsupported(
      fmt::format("a descriptor-only VMDK (createType \"{}\") whose data is in other files{}{}",
                  PrintableText(d.create_type, 64), files.empty() ? "" : ": " + files,
                  d.extents.size() > 1 ? " (split extents)" : ""));
}

}  // namespace

bool LooksLikeVmdk(std::span<const uint8_t> bytes) {
  return HasVmdkMagic(bytes) || LooksLikeVmdkDescriptor(bytes) ||
         (bytes.size() >= 4 && std::memcmp(bytes.data(), "COWD", 4) == 0) ||
         (bytes.size() >= 8 && std::memcmp(bytes.data(), kSeSparseMagic, 8) == 0);
}

Result<VmdkImage> ReadVmdk(std::span<const uint8_t> file) {
  if (!HasVmdkMagic(file)) {
    if (file.size() >= 8 && std::memcmp(file.data(), kSeSparseMagic, 8) == 0) {
      return Unsupported("an seSparse VMDK (ESXi's snapshot format)");
    }
    if (file.size() >= 4 && std::memcmp(file.data(), "COWD", 4) == 0) {
      return Unsupported("a VMDK3 (COWD) sparse extent");
    }
    if (LooksLikeVmdkDescriptor(file)) return RefuseDescriptorOnly(file);
    return Invalid("not a VMDK file");
  }
  BYOI_ASSIGN_OR_RETURN(VmdkHeader first, DecodeVmdkHeader(file));
  BYOI_ASSIGN_OR_RETURN(VmdkHeader h, FindVmdkHeader(file, first));

  VmdkImage out;
  VmdkInfo& info = out.info;
  info.subformat = h.compressed() ? "streamOptimized" : "monolithicSparse";
  info.version = h.version;
  info.flags = h.flags;
  info.virtual_size = h.capacity * kVmdkSector;
  info.grain_size = static_cast<uint32_t>(h.grain_bytes());
  info.gtes_per_gt = h.gtes_per_gt;
  info.footer = first.gd_offset == kVmdkGdAtEnd;
  info.unclean_shutdown = h.unclean_shutdown;

  const uint64_t file_sectors = (file.size() + kVmdkSector - 1) / kVmdkSector;
  if (h.grain_offset > file_sectors) {
    return Invalid(
        fmt::format("the file is truncated: its grains start at sector {}, past its "
                    "end ({} bytes)",
                    h.grain_offset, file.size()));
  }
  BYOI_ASSIGN_OR_RETURN(VmdkDescriptor d, ReadEmbeddedDescriptor(file, h));
  info.create_type = PrintableText(d.create_type, 64);

  Geometry g;
  g.grain_bytes = h.grain_bytes();
  g.gtes = h.gtes_per_gt;
  g.gt_coverage = g.grain_bytes * g.gtes;
  g.virtual_size = info.virtual_size;
  g.gd_entries = (g.virtual_size + g.gt_coverage - 1) / g.gt_coverage;
  g.compressed = h.compressed();
  g.zero_grains = h.zero_grains();
  info.gd_entries = g.gd_entries;
  if (g.virtual_size == 0) {
    out.layout = ImageLayout();
    return out;
  }
  const std::string gd_where = fmt::format("grain directory at {} ({} entries)",
                                           Hex(h.gd_offset * kVmdkSector), g.gd_entries);
  if (g.gd_entries > kMaxGdEntries) {
    return Invalid(gd_where + " is larger than 32 Mi entries");
  }
  if (h.gd_offset >= file_sectors ||
      !InRange(h.gd_offset * kVmdkSector, g.gd_entries * 4, file.size())) {
    return Invalid(gd_where + " lies outside the file");
  }
  const uint8_t* gd = file.data() + h.gd_offset * kVmdkSector;
  BYOI_RETURN_IF_ERROR(ValidateMap(file, g, gd, info));
  out.layout = ImageLayout(g.virtual_size, std::make_unique<VmdkSource>(file, g, gd));
  return out;
}

}  // namespace byoi
