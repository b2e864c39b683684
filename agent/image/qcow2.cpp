#include "agent/image/qcow2.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace byoi {
namespace {

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint64_t kV2HeaderLength = 72;
constexpr uint64_t kV3HeaderLength = 104;
constexpr uint64_t kMaxL1Bytes = 32ull << 20;  // QEMU's implementation limit (qcow2.rst)
constexpr uint32_t kMaxSnapshots = 65536;      // QEMU's QCOW_MAX_SNAPSHOTS

// incompatible_features bits.
constexpr uint64_t kIncompatDirty = 1ull << 0;
constexpr uint64_t kIncompatCorrupt = 1ull << 1;
constexpr uint64_t kIncompatDataFile = 1ull << 2;
constexpr uint64_t kIncompatCompression = 1ull << 3;
constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
constexpr uint64_t kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                    kIncompatCompression | kIncompatExtendedL2;
constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;

// Header extension types.
constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtFeatureTable = 0x6803f857;

// L1/L2 entry fields.
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9-55
constexpr uint64_t kCompressedFlag = 1ull << 62;
constexpr uint64_t kZeroFlag = 1ull;

uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint64_t Be64(const uint8_t* p) { return (uint64_t{Be32(p)} << 32) | Be32(p + 4); }

std::string Hex(uint64_t v) { return fmt::format("{:#x}", v); }

Status Invalid(std::string detail) { return Status::Error(Code::kInvalid, std::move(detail)); }
Status Unsupported(std::string detail) {
  return Status::Error(Code::kUnsupported, std::move(detail));
}

// True when [offset, offset + length) lies inside a file of `size` bytes, without overflow.
bool InFile(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

struct Header {
  uint32_t version = 0;
  uint64_t backing_file_offset = 0;
  uint32_t cluster_bits = 0;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible = 0;
  uint64_t compatible = 0;
  uint64_t autoclear = 0;
  uint32_t refcount_order = 4;
  uint64_t header_length = kV2HeaderLength;
  uint8_t compression_type = 0;
};

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

Result<Header> ParseHeader(std::span<const uint8_t> image) {
  if (image.size() < kV2HeaderLength) {
    return Invalid(fmt::format("file of {} bytes is too small for a qcow2 header", image.size()));
  }
  const uint8_t* p = image.data();
  if (Be32(p) != kMagic) return Invalid("no qcow2 magic");
  Header h;
  h.version = Be32(p + 4);
  if (h.version != 2 && h.version != 3) {
    return Unsupported(fmt::format("qcow2 version {} (only 2 and 3 are supported)", h.version));
  }
  h.backing_file_offset = Be64(p + 8);
  h.cluster_bits = Be32(p + 20);
  h.size = Be64(p + 24);
  h.crypt_method = Be32(p + 32);
  h.l1_size = Be32(p + 36);
  h.l1_table_offset = Be64(p + 40);
  h.refcount_table_offset = Be64(p + 48);
  h.nb_snapshots = Be32(p + 60);
  h.snapshots_offset = Be64(p + 64);
  if (h.cluster_bits < 9 || h.cluster_bits > 21) {
    return Unsupported(
        fmt::format("cluster_bits {} (only 9 to 21: 512 B to 2 MiB clusters)", h.cluster_bits));
  }
  const uint64_t cluster_size = 1ull << h.cluster_bits;
  if (h.version == 3) {
    if (image.size() < kV3HeaderLength) {
      return Invalid("file too small for a version 3 qcow2 header");
    }
    h.incompatible = Be64(p + 72);
    h.compatible = Be64(p + 80);
    h.autoclear = Be64(p + 88);
    h.refcount_order = Be32(p + 96);
    h.header_length = Be32(p + 100);
    if (h.header_length < kV3HeaderLength) {
      return Invalid(fmt::format("header_length {} is below 104", h.header_length));
    }
    if (h.header_length > cluster_size || h.header_length > image.size()) {
      return Invalid(fmt::format("header_length {} exceeds the first cluster", h.header_length));
    }
    if (h.header_length > kV3HeaderLength) h.compression_type = p[104];
  }
  if (h.refcount_order > 6) {
    return Invalid(fmt::format("refcount_order {} is above 6", h.refcount_order));
  }
  return h;
}

// Walks the header extensions: bounds-checked, unknown ones skipped. Returns the feature name
// table (possibly empty) for error messages.
Result<std::span<const uint8_t>> WalkExtensions(std::span<const uint8_t> image, const Header& h) {
  const uint64_t cluster_size = 1ull << h.cluster_bits;
  // Extensions live in the first cluster, after the header (QEMU reads them up to the end of
  // that cluster).
  uint64_t end = std::min<uint64_t>(cluster_size, image.size());
  uint64_t pos = h.header_length;
  std::span<const uint8_t> feature_table;
  while (pos + 8 <= end) {
    uint32_t type = Be32(&image[pos]);
    uint32_t length = Be32(&image[pos + 4]);
    if (type == kExtEnd) break;
    if (length > end - pos - 8) {
      return Invalid(fmt::format("header extension {} at {} of {} bytes passes the first cluster",
                                 Hex(type), Hex(pos), length));
    }
    if (type == kExtFeatureTable) feature_table = image.subspan(pos + 8, length);
    pos += 8 + ((uint64_t{length} + 7) & ~uint64_t{7});
  }
  return feature_table;
}

// Appends extents in virtual-disk order, merging neighbours so a large image stays a short list:
// adjacent zero ranges, and data ranges that are also adjacent in the image buffer.
class LayoutBuilder {
 public:
  explicit LayoutBuilder(ImageLayout& layout) : layout_(layout) {}

  void Zero(uint64_t offset, uint64_t length) {
    if (length == 0) return;
    auto& v = layout_.extents;
    if (!v.empty() && v.back().kind == Extent::Kind::kZero &&
        v.back().offset + v.back().length == offset) {
      v.back().length += length;
      return;
    }
    Extent e;
    e.kind = Extent::Kind::kZero;
    e.offset = offset;
    e.length = length;
    v.push_back(e);
  }

  void Data(uint64_t offset, uint64_t length, const uint8_t* data) {
    if (length == 0) return;
    auto& v = layout_.extents;
    if (!v.empty() && v.back().kind == Extent::Kind::kData &&
        v.back().offset + v.back().length == offset && v.back().data + v.back().length == data) {
      v.back().length += length;
      return;
    }
    Extent e;
    e.kind = Extent::Kind::kData;
    e.offset = offset;
    e.length = length;
    e.data = data;
    v.push_back(e);
  }

  void Compressed(uint64_t offset, uint64_t length, const uint8_t* data, uint64_t clen,
                  uint32_t cluster_size, Compression c) {
    Extent e;
    e.kind = Extent::Kind::kCompressed;
    e.offset = offset;
    e.length = length;
    e.data = data;
    e.compressed_length = clen;
    e.cluster_size = cluster_size;
    e.compression = c;
    layout_.extents.push_back(e);
  }

 private:
  ImageLayout& layout_;
};

class Walker {
 public:
  Walker(std::span<const uint8_t> image, const Header& h, Qcow2Info& info, ImageLayout& layout)
      : image_(image), h_(h), info_(info), extents_(layout), out_(layout) {
    cluster_size_ = 1ull << h.cluster_bits;
    entry_size_ = info.extended_l2 ? 16 : 8;
    l2_entries_ = cluster_size_ / entry_size_;
    subcluster_size_ = cluster_size_ / 32;
  }

  Status Walk(const uint8_t* l1, uint64_t l1_needed) {
    const uint64_t l2_coverage = cluster_size_ * l2_entries_;
    std::unordered_set<uint64_t> seen;
    for (uint64_t i = 0; i < l1_needed; ++i) {
      uint64_t start = i * l2_coverage;
      uint64_t end = std::min(info_.virtual_size, start + l2_coverage);
      uint64_t l2_offset = Be64(l1 + i * 8) & kOffsetMask;
      if (l2_offset == 0) {
        Unallocated(start, end - start);
        continue;
      }
      std::string where = fmt::format("L2 table at {} (L1 index {})", Hex(l2_offset), i);
      if (l2_offset & (cluster_size_ - 1)) {
        return Invalid(where + " is not aligned to the cluster size");
      }
      if (!InFile(l2_offset, cluster_size_, image_.size())) {
        return Invalid(where + " lies outside the image");
      }
      // Each L2 table of the active L1 is referenced once in a sound image; refusing repeats
      // also bounds the walk (and the extent list) by the image size.
      if (!seen.insert(l2_offset).second) return Invalid(where + " is referenced twice");
      ++info_.l2_tables;
      BYOI_RETURN_IF_ERROR(WalkL2(image_.data() + l2_offset, start, end).Context("in " + where));
      // A sound image cannot describe more runs than it has bytes to hold them (the densest is
      // one tiny compressed stream per 512-byte cluster); a crafted one could, through extended
      // L2 bitmaps or entries sharing a host cluster, and exhaust memory.
      if (extents_.extents.size() > image_.size() / 4 + (1u << 20)) {
        return Invalid(fmt::format("more than {} extents in an image of {} bytes",
                                   extents_.extents.size(), image_.size()));
      }
    }
    return Status::Ok();
  }

 private:
  void Unallocated(uint64_t offset, uint64_t length) {
    info_.unallocated_bytes += length;
    out_.Zero(offset, length);
  }
  void ZeroRange(uint64_t offset, uint64_t length) {
    info_.zero_bytes += length;
    out_.Zero(offset, length);
  }
  // Host bytes at `host` for `length` virtual bytes at `offset`; what lies past the end of the
  // file reads as zeros, as in qemu-img.
  void DataRange(uint64_t offset, uint64_t length, uint64_t host) {
    info_.data_bytes += length;
    uint64_t in_file = host >= image_.size() ? 0 : std::min(length, image_.size() - host);
    if (in_file > 0) out_.Data(offset, in_file, image_.data() + host);
    out_.Zero(offset + in_file, length - in_file);
  }

  Status WalkL2(const uint8_t* l2, uint64_t start, uint64_t end) {
    for (uint64_t j = 0; start + j * cluster_size_ < end; ++j) {
      uint64_t offset = start + j * cluster_size_;
      uint64_t length = std::min(cluster_size_, end - offset);
      uint64_t entry = Be64(l2 + j * entry_size_);
      uint64_t bitmap = info_.extended_l2 ? Be64(l2 + j * entry_size_ + 8) : 0;
      Status s = Entry(entry, bitmap, offset, length);
      if (!s.ok()) return std::move(s).Context(fmt::format("entry {} ({})", j, Hex(entry)));
    }
    return Status::Ok();
  }

  Status Entry(uint64_t entry, uint64_t bitmap, uint64_t offset, uint64_t length) {
    if (entry & kCompressedFlag) {
      if (bitmap != 0) return Invalid("compressed cluster with a subcluster bitmap");
      return CompressedEntry(entry, offset, length);
    }
    const uint64_t host = entry & kOffsetMask;
    if (!info_.extended_l2) {
      if (entry & kZeroFlag) {
        if (info_.version < 3) return Invalid("zero cluster in a version 2 image");
        if (host & (cluster_size_ - 1)) return Invalid("zero cluster offset not aligned");
        ZeroRange(offset, length);
        return Status::Ok();
      }
      if (host == 0) {
        Unallocated(offset, length);
        return Status::Ok();
      }
      if (host & (cluster_size_ - 1)) return Invalid("cluster offset not aligned");
      DataRange(offset, length, host);
      return Status::Ok();
    }
    // Extended L2: 32 subclusters, "allocated" bits 0-31 and "reads as zeros" bits 32-63.
    const uint32_t alloc = static_cast<uint32_t>(bitmap);
    const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
    if (host == 0) {
      if (alloc != 0) return Invalid("allocated subclusters without a cluster offset");
    } else {
      if (alloc & zero) return Invalid("subclusters both allocated and zero");
      if (host & (cluster_size_ - 1)) return Invalid("cluster offset not aligned");
    }
    for (uint32_t sc = 0; sc < 32; ++sc) {
      uint64_t sc_offset = sc * subcluster_size_;
      if (sc_offset >= length) break;
      uint64_t sc_length = std::min(subcluster_size_, length - sc_offset);
      if (zero & (1u << sc)) {
        ZeroRange(offset + sc_offset, sc_length);
      } else if (alloc & (1u << sc)) {
        DataRange(offset + sc_offset, sc_length, host + sc_offset);
      } else {
        Unallocated(offset + sc_offset, sc_length);
      }
    }
    return Status::Ok();
  }

  Status CompressedEntry(uint64_t entry, uint64_t offset, uint64_t length) {
    const uint32_t shift = 62 - (h_.cluster_bits - 8);
    const uint64_t host = entry & ((1ull << shift) - 1);
    const uint64_t sectors = ((entry >> shift) & ((1ull << (h_.cluster_bits - 8)) - 1)) + 1;
    // The data runs from `host` to the end of the last of `sectors` 512-byte sectors counted
    // from the one holding `host`; the file may end inside that last sector.
    const uint64_t csize = sectors * 512 - (host & 511);
    if (host >= image_.size() || host >= (1ull << 56)) {
      return Invalid(fmt::format("compressed cluster at {} lies outside the image", Hex(host)));
    }
    const uint64_t available = std::min(csize, image_.size() - host);
    info_.compressed_bytes += length;
    out_.Compressed(offset, length, image_.data() + host, available,
                    static_cast<uint32_t>(cluster_size_), info_.compression);
    return Status::Ok();
  }

  std::span<const uint8_t> image_;
  const Header& h_;
  Qcow2Info& info_;
  const ImageLayout& extents_;
  LayoutBuilder out_;
  uint64_t cluster_size_ = 0;
  uint64_t entry_size_ = 8;
  uint64_t l2_entries_ = 0;
  uint64_t subcluster_size_ = 0;
};

}  // namespace

bool HasQcow2Magic(std::span<const uint8_t> bytes) {
  return bytes.size() >= 4 && Be32(bytes.data()) == kMagic;
}

std::string_view CompressionName(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kDeflate:
      return "zlib";
    case Compression::kZstd:
      return "zstd";
  }
  return "unknown";
}

Result<Qcow2Image> ReadQcow2(std::span<const uint8_t> image) {
  BYOI_ASSIGN_OR_RETURN(Header h, ParseHeader(image));
  BYOI_ASSIGN_OR_RETURN(auto feature_table, WalkExtensions(image, h));
  const uint64_t cluster_size = 1ull << h.cluster_bits;

  if (uint64_t unknown = h.incompatible & ~kIncompatKnown) {
    std::string names = FeatureNames(feature_table, unknown);
    return Unsupported(fmt::format("unknown incompatible features {}{}", Hex(unknown),
                                   names.empty() ? "" : " (" + names + ")"));
  }
  if (h.backing_file_offset != 0) return Unsupported("image has a backing file");
  if (h.incompatible & kIncompatDataFile) return Unsupported("image has an external data file");
  if (h.crypt_method == 1) return Unsupported("image is encrypted (AES)");
  if (h.crypt_method == 2) return Unsupported("image is encrypted (LUKS)");
  if (h.crypt_method != 0) {
    return Unsupported(fmt::format("image is encrypted (method {})", h.crypt_method));
  }

  Qcow2Image out;
  Qcow2Info& info = out.info;
  info.version = h.version;
  info.cluster_bits = h.cluster_bits;
  info.cluster_size = static_cast<uint32_t>(cluster_size);
  info.dirty = h.incompatible & kIncompatDirty;
  info.corrupt = h.incompatible & kIncompatCorrupt;
  info.lazy_refcounts = h.compatible & kCompatLazyRefcounts;
  info.extended_l2 = h.incompatible & kIncompatExtendedL2;
  info.refcount_bits = 1u << h.refcount_order;
  info.snapshots = h.nb_snapshots;
  // qemu sees the disk in 512-byte sectors and drops a partial last one.
  info.virtual_size = h.size & ~uint64_t{511};

  if (h.incompatible & kIncompatCompression) {
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
  if (h.refcount_table_offset & (cluster_size - 1)) {
    return Invalid("refcount table offset not aligned to the cluster size");
  }
  if (h.nb_snapshots > kMaxSnapshots) {
    return Invalid(fmt::format("{} snapshots (at most {})", h.nb_snapshots, kMaxSnapshots));
  }
  if (h.nb_snapshots > 0 && (h.snapshots_offset & (cluster_size - 1))) {
    return Invalid("snapshot table offset not aligned to the cluster size");
  }

  // The active L1 table must cover the whole virtual disk.
  const uint64_t entry_size = info.extended_l2 ? 16 : 8;
  const uint64_t l2_coverage = cluster_size * (cluster_size / entry_size);
  const uint64_t l1_needed =
      info.virtual_size / l2_coverage + (info.virtual_size % l2_coverage != 0 ? 1 : 0);
  info.l1_entries = h.l1_size;
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) {
    return Invalid(fmt::format("L1 table of {} entries is larger than 32 MiB", h.l1_size));
  }
  if (h.l1_size < l1_needed) {
    return Invalid(fmt::format("L1 table of {} entries is too small for a virtual size of {}",
                               h.l1_size, info.virtual_size));
  }
  if (h.l1_size > 0) {
    if (h.l1_table_offset & (cluster_size - 1)) {
      return Invalid(
          fmt::format("L1 table at {} is not aligned to the cluster size", Hex(h.l1_table_offset)));
    }
    if (!InFile(h.l1_table_offset, uint64_t{h.l1_size} * 8, image.size())) {
      return Invalid(fmt::format("L1 table at {} lies outside the image", Hex(h.l1_table_offset)));
    }
  }

  Walker walker(image, h, info, out.layout);
  const uint8_t* l1 = l1_needed > 0 ? image.data() + h.l1_table_offset : nullptr;
  BYOI_RETURN_IF_ERROR(walker.Walk(l1, l1_needed));
  out.layout.virtual_size = info.virtual_size;
  return out;
}

}  // namespace byoi
