#include "agent/image/qcow2.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/image/qcow2_header.hpp"

namespace byoi {
namespace {

constexpr uint32_t kMagic = 0x514649fb;        // "QFI\xfb"
constexpr uint64_t kMaxL1Bytes = 32ull << 20;  // QEMU's implementation limit (qcow2.rst)

constexpr uint64_t kIncompatKnown = kQcow2IncompatDirty | kQcow2IncompatCorrupt |
                                    kQcow2IncompatDataFile | kQcow2IncompatCompression |
                                    kQcow2IncompatExtendedL2;
constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;

// L1/L2 entry fields.
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9-55
constexpr uint64_t kCompressedFlag = 1ull << 62;
constexpr uint64_t kZeroFlag = 1ull;
constexpr uint32_t kSubclusters = 32;

std::string Hex(uint64_t v) { return fmt::format("{:#x}", v); }

Status Invalid(std::string detail) { return Status::Error(Code::kInvalid, std::move(detail)); }
Status Unsupported(std::string detail) {
  return Status::Error(Code::kUnsupported, std::move(detail));
}

// True when [offset, offset + length) lies inside a file of `size` bytes, without overflow.
bool InFile(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

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

// What the map's decoding needs to know of an image, fixed once its header is validated.
struct Geometry {
  uint32_t version = 0;
  uint32_t cluster_bits = 0;
  uint64_t cluster_size = 0;
  bool extended_l2 = false;
  uint64_t entry_size = 8;    // bytes per L2 entry
  uint64_t l2_coverage = 0;   // virtual bytes per L2 table
  uint64_t virtual_size = 0;  // rounded down to 512 bytes
  Compression compression = Compression::kDeflate;
};

// A run of one virtual cluster, as its L2 entry maps it.
struct Piece {
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  Kind kind = Kind::kUnallocated;
  uint64_t start = 0;              // offset in the cluster
  uint64_t length = 0;             // bytes of the cluster
  uint64_t host = 0;               // kData: file offset of `start`; kCompressed: of the stream
  uint64_t compressed_length = 0;  // kCompressed: bytes from `host` to the end of its last sector
};

// Decodes one L2 entry (and its subcluster bitmap with extended L2) for the first `length` bytes
// of its virtual cluster, calling emit(Piece) for each run in order, neighbours of the same kind
// merged. The one decoder of the validating walk and of every later visit: an entry accepted
// once decodes the same way every time. kInvalid for an entry no sound image holds; whether its
// host offsets lie inside the file is the caller's business.
template <typename Emit>
Status DecodeL2Entry(const Geometry& g, uint64_t entry, uint64_t bitmap, uint64_t length,
                     Emit&& emit) {
  Piece p;
  if (entry & kCompressedFlag) {
    if (bitmap != 0) return Invalid("compressed cluster with a subcluster bitmap");
    const uint32_t shift = 62 - (g.cluster_bits - 8);
    p.kind = Piece::Kind::kCompressed;
    p.length = length;
    p.host = entry & ((1ull << shift) - 1);
    const uint64_t sectors = ((entry >> shift) & ((1ull << (g.cluster_bits - 8)) - 1)) + 1;
    // The data runs from `host` to the end of the last of `sectors` 512-byte sectors counted
    // from the one holding `host`.
    p.compressed_length = sectors * 512 - (p.host & 511);
    return emit(p);
  }
  const uint64_t host = entry & kOffsetMask;
  if (!g.extended_l2) {
    p.length = length;
    if (entry & kZeroFlag) {
      if (g.version < 3) return Invalid("zero cluster in a version 2 image");
      if (host & (g.cluster_size - 1)) return Invalid("zero cluster offset not aligned");
      p.kind = Piece::Kind::kZero;
    } else if (host != 0) {
      if (host & (g.cluster_size - 1)) return Invalid("cluster offset not aligned");
      p.kind = Piece::Kind::kData;
      p.host = host;
    }
    return emit(p);
  }
  // Extended L2: 32 subclusters, "allocated" bits 0-31 and "reads as zeros" bits 32-63.
  const uint32_t alloc = static_cast<uint32_t>(bitmap);
  const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
  if (host == 0) {
    if (alloc != 0) return Invalid("allocated subclusters without a cluster offset");
  } else {
    if (alloc & zero) return Invalid("subclusters both allocated and zero");
    if (host & (g.cluster_size - 1)) return Invalid("cluster offset not aligned");
  }
  const uint64_t sc_size = g.cluster_size / kSubclusters;
  auto kind_of = [&](uint32_t sc) {
    if (zero & (1u << sc)) return Piece::Kind::kZero;
    return (alloc & (1u << sc)) ? Piece::Kind::kData : Piece::Kind::kUnallocated;
  };
  for (uint32_t sc = 0; sc < kSubclusters && sc * sc_size < length;) {
    uint32_t last = sc + 1;
    const Piece::Kind kind = kind_of(sc);
    while (last < kSubclusters && last * sc_size < length && kind_of(last) == kind) ++last;
    p.kind = kind;
    p.start = sc * sc_size;
    p.length = std::min(last * sc_size, length) - p.start;
    p.host = kind == Piece::Kind::kData ? host + p.start : 0;
    BYOI_RETURN_IF_ERROR(emit(p));
    sc = last;
  }
  return Status::Ok();
}

// Calls on_table(L1 index, table start, table end, L2 table offset or 0) for the L2 tables
// covering [begin, end), then decodes their entries from the one holding `begin` up to `end`
// through DecodeL2Entry, calling emit(virtual offset of the cluster, Piece). Errors of on_table
// and emit are returned unchanged; a decoding error names the table and the entry.
class TableWalker {
 public:
  TableWalker(std::span<const uint8_t> image, const Geometry& g, const uint8_t* l1)
      : image_(image), g_(g), l1_(l1) {}

  template <typename OnTable, typename Emit>
  Status Walk(uint64_t begin, uint64_t end, OnTable&& on_table, Emit&& emit) const {
    for (uint64_t i = begin / g_.l2_coverage; i * g_.l2_coverage < end; ++i) {
      const uint64_t start = i * g_.l2_coverage;
      const uint64_t table_end = std::min(g_.virtual_size, start + g_.l2_coverage);
      const uint64_t l2_offset = Be64(l1_ + i * 8) & kOffsetMask;
      BYOI_RETURN_IF_ERROR(on_table(i, start, table_end, l2_offset));
      if (l2_offset == 0) continue;
      const uint8_t* l2 = image_.data() + l2_offset;
      const uint64_t first = begin > start ? (begin - start) >> g_.cluster_bits : 0;
      const uint64_t stop = std::min(end, table_end);
      for (uint64_t j = first, offset = start + (first << g_.cluster_bits); offset < stop;
           ++j, offset += g_.cluster_size) {
        const uint8_t* e = l2 + j * g_.entry_size;
        const uint64_t entry = Be64(e);
        const uint64_t bitmap = g_.extended_l2 ? Be64(e + 8) : 0;
        const uint64_t length = std::min(g_.cluster_size, table_end - offset);
        bool emit_failed = false;
        Status s = DecodeL2Entry(g_, entry, bitmap, length, [&](const Piece& p) {
          Status e = emit(offset, p);
          emit_failed = !e.ok();
          return e;
        });
        if (emit_failed) return s;  // the caller's own error, unchanged
        if (!s.ok()) {
          return std::move(s).Context(fmt::format("in L2 table at {} (L1 index {}): entry {} ({})",
                                                  Hex(l2_offset), i, j, Hex(entry)));
        }
      }
    }
    return Status::Ok();
  }

 private:
  std::span<const uint8_t> image_;
  const Geometry& g_;
  const uint8_t* l1_;
};

// A validated image's virtual disk, decoded from its tables at every visit.
class Qcow2Source : public ExtentSource {
 public:
  Qcow2Source(std::span<const uint8_t> image, const Geometry& g, const uint8_t* l1)
      : image_(image), g_(g), l1_(l1) {}

  Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const override {
    TableWalker walker(image_, g_, l1_);
    auto on_table = [&](uint64_t, uint64_t start, uint64_t table_end, uint64_t l2_offset) {
      if (l2_offset != 0) return Status::Ok();
      Extent e;
      e.offset = start;
      e.length = table_end - start;
      return visit(e);
    };
    return walker.Walk(begin, end, on_table, [&](uint64_t offset, const Piece& p) {
      Extent e;
      e.offset = offset + p.start;
      e.length = p.length;
      if (p.kind == Piece::Kind::kData) {
        e.kind = Extent::Kind::kData;
        e.data = image_.data() + p.host;
      } else if (p.kind == Piece::Kind::kCompressed) {
        // The file may end inside the stream's last sector (ReadQcow2 checked the rest).
        e.kind = Extent::Kind::kCompressed;
        e.data = image_.data() + p.host;
        e.compressed_length = std::min(p.compressed_length, image_.size() - p.host);
        e.cluster_size = static_cast<uint32_t>(g_.cluster_size);
        e.compression = g_.compression;
      }
      return visit(e);
    });
  }

 private:
  std::span<const uint8_t> image_;
  Geometry g_;
  const uint8_t* l1_;
};

// The one full walk at open: every L2 table of the active L1 in the file and referenced once,
// every entry decodable, every mapped byte inside the file; counts the bytes by kind.
Status ValidateMap(std::span<const uint8_t> image, const Geometry& g, const uint8_t* l1,
                   Qcow2Info& info) {
  // Each L2 table of the active L1 is referenced once in a sound image; refusing repeats also
  // bounds the walk by the image's size (one bit per cluster of the file remembers the tables).
  std::vector<bool> seen((image.size() >> g.cluster_bits) + 1);
  auto on_table = [&](uint64_t i, uint64_t start, uint64_t table_end, uint64_t l2_offset) {
    if (l2_offset == 0) {
      info.unallocated_bytes += table_end - start;
      return Status::Ok();
    }
    const std::string where = fmt::format("L2 table at {} (L1 index {})", Hex(l2_offset), i);
    if (l2_offset & (g.cluster_size - 1)) {
      return Invalid(where + " is not aligned to the cluster size");
    }
    if (!InFile(l2_offset, g.cluster_size, image.size())) {
      return Invalid(where + " lies outside the image");
    }
    if (seen[l2_offset >> g.cluster_bits]) return Invalid(where + " is referenced twice");
    seen[l2_offset >> g.cluster_bits] = true;
    ++info.l2_tables;
    return Status::Ok();
  };
  auto truncated = [&](uint64_t virtual_offset, std::string_view what, uint64_t host) {
    return Invalid(fmt::format(
        "image is truncated: the {} at virtual {} maps to {}, past the end of the file ({} bytes)",
        what, Hex(virtual_offset), Hex(host), image.size()));
  };
  auto on_piece = [&](uint64_t offset, const Piece& p) {
    switch (p.kind) {
      case Piece::Kind::kUnallocated:
        info.unallocated_bytes += p.length;
        break;
      case Piece::Kind::kZero:
        info.zero_bytes += p.length;
        break;
      case Piece::Kind::kData:
        if (!InFile(p.host, p.length, image.size())) {
          return truncated(offset + p.start, "cluster", p.host);
        }
        info.data_bytes += p.length;
        break;
      case Piece::Kind::kCompressed: {
        // qemu-img ends the file where the stream ends, inside its last sector; a file that
        // ends before that sector lost data.
        const uint64_t last_sector =
            (p.host & ~uint64_t{511}) + p.compressed_length + (p.host & 511) - 512;
        if (p.host >= image.size() || image.size() <= last_sector) {
          return truncated(offset, "compressed cluster", p.host);
        }
        info.compressed_bytes += p.length;
        break;
      }
    }
    return Status::Ok();
  };
  return TableWalker(image, g, l1).Walk(0, g.virtual_size, on_table, on_piece);
}

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
    case Compression::kZlib:
      return "zlib stream";
  }
  return "unknown";
}

Result<Qcow2Image> ReadQcow2(std::span<const uint8_t> image) {
  BYOI_ASSIGN_OR_RETURN(Qcow2Header h, ParseQcow2Header(image));
  const uint64_t cluster_size = h.cluster_size();

  if (uint64_t unknown = h.incompatible & ~kIncompatKnown) {
    std::string names = FeatureNames(FindQcow2FeatureTable(image, h), unknown);
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

  Qcow2Image out;
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
  BYOI_RETURN_IF_ERROR(CheckQcow2Snapshots(image, h));

  // The active L1 table must cover the whole virtual disk.
  Geometry g;
  g.version = h.version;
  g.cluster_bits = h.cluster_bits;
  g.cluster_size = cluster_size;
  g.extended_l2 = info.extended_l2;
  g.entry_size = info.extended_l2 ? 16 : 8;
  g.l2_coverage = cluster_size * (cluster_size / g.entry_size);
  g.virtual_size = info.virtual_size;
  g.compression = info.compression;
  const uint64_t l1_needed =
      info.virtual_size / g.l2_coverage + (info.virtual_size % g.l2_coverage != 0 ? 1 : 0);
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

  BYOI_ASSIGN_OR_RETURN(Qcow2Bitmaps bitmaps, ReadQcow2Extensions(image, h));
  // An image whose data file is raw must have one (qemu: "data-file-raw requires a data file").
  if (h.autoclear & kQcow2AutoclearDataFileRaw) {
    return Invalid("the data_file_raw bit is set but the image has no external data file");
  }
  BYOI_RETURN_IF_ERROR(CheckQcow2Bitmaps(image, h, bitmaps, info.virtual_size));

  const uint8_t* l1 = l1_needed > 0 ? image.data() + h.l1_table_offset : nullptr;
  BYOI_RETURN_IF_ERROR(ValidateMap(image, g, l1, info));
  out.layout = info.virtual_size == 0
                   ? ImageLayout()
                   : ImageLayout(info.virtual_size, std::make_unique<Qcow2Source>(image, g, l1));
  return out;
}

}  // namespace byoi
