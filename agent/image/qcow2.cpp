#include "agent/image/qcow2.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/image/qcow2_header.hpp"
#include "agent/image/qcow2_map.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::Invalid;

namespace {

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
using Geometry = Qcow2Geometry;
using Piece = Qcow2Piece;

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
      const uint64_t l2_offset = Be64(l1_ + i * 8) & kQcow2OffsetMask;
      BYOI_RETURN_IF_ERROR(on_table(i, start, table_end, l2_offset));
      if (l2_offset == 0) continue;
      BYOI_RETURN_IF_ERROR(DecodeQcow2L2Table(g_, image_.data() + l2_offset, i, l2_offset,
                                              std::max(begin, start), end, emit));
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
    if (!InQcow2File(l2_offset, g.cluster_size, image.size())) {
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
        if (!InQcow2File(p.host, p.length, image.size())) {
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
  BYOI_ASSIGN_OR_RETURN(Qcow2Opened opened, OpenQcow2Header(image, image.size()));
  const Qcow2Header& h = opened.header;
  BYOI_RETURN_IF_ERROR(CheckQcow2Snapshots(image, h));
  BYOI_RETURN_IF_ERROR(CheckQcow2Bitmaps(image, h, opened.bitmaps, opened.info.virtual_size));

  Qcow2Image out;
  out.info = opened.info;
  const Geometry& g = opened.geometry;
  const uint8_t* l1 = opened.l1_needed > 0 ? image.data() + h.l1_table_offset : nullptr;
  BYOI_RETURN_IF_ERROR(ValidateMap(image, g, l1, out.info));
  out.layout = g.virtual_size == 0
                   ? ImageLayout()
                   : ImageLayout(g.virtual_size, std::make_unique<Qcow2Source>(image, g, l1));
  return out;
}

}  // namespace byoi
