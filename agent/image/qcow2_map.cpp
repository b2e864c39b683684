#include "agent/image/qcow2_map.hpp"

#include <cstring>

#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::Invalid;
using image_refusal::Unsupported;

namespace {

constexpr uint64_t kMaxL1Bytes = 32ull << 20;  // QEMU's implementation limit (qcow2.rst)

constexpr uint64_t kIncompatKnown = kQcow2IncompatDirty | kQcow2IncompatCorrupt |
                                    kQcow2IncompatDataFile | kQcow2IncompatCompression |
                                    kQcow2IncompatExtendedL2;
constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;

// Names of unknown incompatible bits from the feature name table, when the image has one, so
// the refusal says what the image needs ("unknown incompatible features 0x20 (foo)").
std::string FeatureNames(std::span<const uint8_t> table, uint64_t bits) {
  std::string names;
  for (size_t i = 0; i + 48 <= table.size(); i += 48) {
    if (table[i] != 0 || table[i + 1] > 63 || !(bits & (1ull << table[i + 1]))) continue;
    const char* name = reinterpret_cast<const char*>(&table[i + 2]);
    std::string n(name, strnlen(name, 46));
    for (char& c : n) {
      if (c < 0x20 || c > 0x7e) c = '?';
    }
    names += names.empty() ? n : ", " + n;
  }
  return names;
}

}  // namespace

Result<Qcow2Opened> OpenQcow2Header(std::span<const uint8_t> head,
                                    std::optional<uint64_t> file_size) {
  BYOI_ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(head));
  const uint64_t cluster_size = h.cluster_size();

  if (uint64_t unknown = h.incompatible & ~kIncompatKnown) {
    std::string names = FeatureNames(FindQcow2FeatureTable(head, h), unknown);
    return Unsupported(fmt::format("unknown incompatible features {}{}", Hex(unknown),
                                   names.empty() ? "" : " (" + names + ")"));
  }
  if (h.backing_file_offset != 0) return Unsupported("image has a backing file");
  if (h.incompatible & kQcow2IncompatDataFile) {
    return Unsupported("image has an external data file");
  }
  if (h.crypt_method == 1) return Unsupported("image is encrypted (AES)");
  if (h.crypt_method == 2) return Unsupported("image is encrypted (LUKS)");
  if (h.crypt_method != 0) {
    return Unsupported(fmt::format("image is encrypted (method {})", h.crypt_method));
  }

  Qcow2Opened out;
  out.header = h;
  Qcow2Info& info = out.info;
  info.version = h.version;
  info.cluster_bits = h.cluster_bits;
  info.cluster_size = static_cast<uint32_t>(cluster_size);
  info.dirty = h.incompatible & kQcow2IncompatDirty;
  info.corrupt = h.incompatible & kQcow2IncompatCorrupt;
  info.lazy_refcounts = h.compatible & kCompatLazyRefcounts;
  info.extended_l2 = h.incompatible & kQcow2IncompatExtendedL2;
  info.refcount_bits = 1u << h.refcount_order;
  info.snapshots = h.nb_snapshots;
  // qemu sees the disk in 512-byte sectors and drops a partial last one.
  info.virtual_size = h.size & ~uint64_t{511};

  if (h.incompatible & kQcow2IncompatCompression) {
    if (h.compression_type == 0) return Invalid("compression type bit set but type is deflate");
    if (h.compression_type != 1) {
      return Unsupported(fmt::format("compression type {}", h.compression_type));
    }
    info.compression = Compression::kZstd;
  } else if (h.compression_type != 0) {
    return Invalid(
        fmt::format("compression type {} without the compression type bit", h.compression_type));
  }
  if (info.extended_l2 && h.cluster_bits < 14) {
    return Invalid("extended L2 entries with clusters smaller than 16 KiB");
  }
  BYOI_RETURN_IF_ERROR(CheckQcow2RefcountTable(h));
  BYOI_RETURN_IF_ERROR(CheckQcow2SnapshotPlacement(h));

  // The active L1 table must cover the whole virtual disk.
  Qcow2Geometry& g = out.geometry;
  g.version = h.version;
  g.cluster_bits = h.cluster_bits;
  g.cluster_size = cluster_size;
  g.extended_l2 = info.extended_l2;
  g.entry_size = info.extended_l2 ? 16 : 8;
  g.l2_coverage = cluster_size * (cluster_size / g.entry_size);
  g.virtual_size = info.virtual_size;
  g.compression = info.compression;
  out.l1_needed =
      info.virtual_size / g.l2_coverage + (info.virtual_size % g.l2_coverage != 0 ? 1 : 0);
  info.l1_entries = h.l1_size;
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) {
    return Invalid(fmt::format("L1 table of {} entries is larger than 32 MiB", h.l1_size));
  }
  if (h.l1_size < out.l1_needed) {
    return Invalid(fmt::format("L1 table of {} entries is too small for a virtual size of {}",
                               h.l1_size, info.virtual_size));
  }
  if (h.l1_size > 0) {
    if (h.l1_table_offset & (cluster_size - 1)) {
      return Invalid(
          fmt::format("L1 table at {} is not aligned to the cluster size", Hex(h.l1_table_offset)));
    }
    if (file_size && !InQcow2File(h.l1_table_offset, uint64_t{h.l1_size} * 8, *file_size)) {
      return Invalid(fmt::format("L1 table at {} lies outside the image", Hex(h.l1_table_offset)));
    }
  }

  BYOI_ASSIGN_OR_RETURN(out.bitmaps, ReadQcow2Extensions(head, h));
  // An image whose data file is raw must have one (qemu: "data-file-raw requires a data file").
  if (h.autoclear & kQcow2AutoclearDataFileRaw) {
    return Invalid("the data_file_raw bit is set but the image has no external data file");
  }
  return out;
}

}  // namespace byoi
