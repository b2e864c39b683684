// What both qcow2 readers share: the checks of everything the first cluster shows (header,
// feature bits, header extensions, the placement of the L1, refcount and snapshot tables), the
// geometry they fix, and the one decoder of L1/L2 entries. The RAM reader (qcow2.hpp) decodes
// tables in place in the image; stream mode's reader (qcow2_stream.hpp) decodes each L2 table as
// its cluster passes. Both go through DecodeQcow2L2Table, so an entry means the same thing to
// both (QEMU docs/interop/qcow2.rst, "Cluster mapping").
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "agent/base/bytes.hpp"
#include "agent/base/status.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/qcow2_header.hpp"

namespace byoi {

// L1/L2 entry fields.
inline constexpr uint64_t kQcow2OffsetMask = 0x00fffffffffffe00ull;  // bits 9-55
inline constexpr uint64_t kQcow2CompressedFlag = 1ull << 62;
inline constexpr uint64_t kQcow2ZeroFlag = 1ull;
inline constexpr uint32_t kQcow2Subclusters = 32;

// What the map's decoding needs to know of an image, fixed once its header is validated.
struct Qcow2Geometry {
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
struct Qcow2Piece {
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  Kind kind = Kind::kUnallocated;
  uint64_t start = 0;              // offset in the cluster
  uint64_t length = 0;             // bytes of the cluster
  uint64_t host = 0;               // kData: file offset of `start`; kCompressed: of the stream
  uint64_t compressed_length = 0;  // kCompressed: bytes from `host` to the end of its last sector
};

// The checks of an image's first cluster, and what they fix.
struct Qcow2Opened {
  Qcow2Header header;
  Qcow2Geometry geometry;
  Qcow2Info info;  // the header's fields; the byte counts are the map walk's to fill
  Qcow2Bitmaps bitmaps;
  uint64_t l1_needed = 0;  // L1 entries that cover the virtual disk (the rest are never read)
};

// Checks what `head` (the image's first cluster, or the whole image when it is shorter) shows, in
// the order qemu-img does at open: the fixed header (ParseQcow2Header), unknown incompatible bits
// (named from the feature table), backing file, external data file, encryption, compression type,
// extended L2, the refcount table's and the snapshot table's placement, the L1 table's size and
// alignment, the header extensions, the data_file_raw bit. `file_size`, when known, is the
// image's length, for the L1 table's "lies outside the image". kUnsupported or kInvalid with the
// reason in detail. What it does not check needs bytes past the first cluster: the snapshot
// entries, the bitmap directory and tables, the L1 and L2 tables.
Result<Qcow2Opened> OpenQcow2Header(std::span<const uint8_t> head,
                                    std::optional<uint64_t> file_size);

// True when [offset, offset + length) lies inside a file of `size` bytes, without overflow.
inline bool InQcow2File(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

// Decodes one L2 entry (and its subcluster bitmap with extended L2) for the first `length` bytes
// of its virtual cluster, calling emit(Qcow2Piece) for each run in order, neighbours of the same
// kind merged. kInvalid for an entry no sound image holds; whether its host offsets lie inside
// the file is the caller's business.
template <typename Emit>
Status DecodeQcow2L2Entry(const Qcow2Geometry& g, uint64_t entry, uint64_t bitmap, uint64_t length,
                          Emit&& emit) {
  auto invalid = [](const char* why) { return Status::Error(Code::kInvalid, why); };
  Qcow2Piece p;
  if (entry & kQcow2CompressedFlag) {
    if (bitmap != 0) return invalid("compressed cluster with a subcluster bitmap");
    const uint32_t shift = 62 - (g.cluster_bits - 8);
    p.kind = Qcow2Piece::Kind::kCompressed;
    p.length = length;
    p.host = entry & ((1ull << shift) - 1);
    const uint64_t sectors = ((entry >> shift) & ((1ull << (g.cluster_bits - 8)) - 1)) + 1;
    // The data runs from `host` to the end of the last of `sectors` 512-byte sectors counted
    // from the one holding `host`.
    p.compressed_length = sectors * 512 - (p.host & 511);
    return emit(p);
  }
  const uint64_t host = entry & kQcow2OffsetMask;
  if (!g.extended_l2) {
    p.length = length;
    if (entry & kQcow2ZeroFlag) {
      if (g.version < 3) return invalid("zero cluster in a version 2 image");
      if (host & (g.cluster_size - 1)) return invalid("zero cluster offset not aligned");
      p.kind = Qcow2Piece::Kind::kZero;
    } else if (host != 0) {
      if (host & (g.cluster_size - 1)) return invalid("cluster offset not aligned");
      p.kind = Qcow2Piece::Kind::kData;
      p.host = host;
    }
    return emit(p);
  }
  // Extended L2: 32 subclusters, "allocated" bits 0-31 and "reads as zeros" bits 32-63.
  const uint32_t alloc = static_cast<uint32_t>(bitmap);
  const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
  if (host == 0) {
    if (alloc != 0) return invalid("allocated subclusters without a cluster offset");
  } else {
    if (alloc & zero) return invalid("subclusters both allocated and zero");
    if (host & (g.cluster_size - 1)) return invalid("cluster offset not aligned");
  }
  const uint64_t sc_size = g.cluster_size / kQcow2Subclusters;
  auto kind_of = [&](uint32_t sc) {
    if (zero & (1u << sc)) return Qcow2Piece::Kind::kZero;
    return (alloc & (1u << sc)) ? Qcow2Piece::Kind::kData : Qcow2Piece::Kind::kUnallocated;
  };
  for (uint32_t sc = 0; sc < kQcow2Subclusters && sc * sc_size < length;) {
    uint32_t last = sc + 1;
    const Qcow2Piece::Kind kind = kind_of(sc);
    while (last < kQcow2Subclusters && last * sc_size < length && kind_of(last) == kind) ++last;
    p.kind = kind;
    p.start = sc * sc_size;
    p.length = std::min(last * sc_size, length) - p.start;
    p.host = kind == Qcow2Piece::Kind::kData ? host + p.start : 0;
    BYOI_RETURN_IF_ERROR(emit(p));
    sc = last;
  }
  return Status::Ok();
}

// Decodes the entries of the L2 table `l2` (one cluster, at file offset `l2_offset`, L1 index
// `l1_index`) that map [begin, end) of the virtual disk, from the entry holding `begin` on,
// through DecodeQcow2L2Entry, calling emit(virtual offset of the cluster, Qcow2Piece). REQUIRES:
// [begin, end) inside the table's coverage and the virtual size. Errors of emit are returned
// unchanged; a decoding error names the table and the entry.
template <typename Emit>
Status DecodeQcow2L2Table(const Qcow2Geometry& g, const uint8_t* l2, uint64_t l1_index,
                          uint64_t l2_offset, uint64_t begin, uint64_t end, Emit&& emit) {
  const uint64_t start = l1_index * g.l2_coverage;
  const uint64_t table_end = std::min(g.virtual_size, start + g.l2_coverage);
  const uint64_t first = begin > start ? (begin - start) >> g.cluster_bits : 0;
  const uint64_t stop = std::min(end, table_end);
  for (uint64_t j = first, offset = start + (first << g.cluster_bits); offset < stop;
       ++j, offset += g.cluster_size) {
    const uint8_t* e = l2 + j * g.entry_size;
    const uint64_t entry = Be64(e);
    const uint64_t bitmap = g.extended_l2 ? Be64(e + 8) : 0;
    const uint64_t length = std::min(g.cluster_size, table_end - offset);
    bool emit_failed = false;
    Status s = DecodeQcow2L2Entry(g, entry, bitmap, length, [&](const Qcow2Piece& p) {
      Status e = emit(offset, p);
      emit_failed = !e.ok();
      return e;
    });
    if (emit_failed) return s;  // the caller's own error, unchanged
    if (!s.ok()) {
      return std::move(s).Context(fmt::format(
          "in L2 table at {:#x} (L1 index {}): entry {} ({:#x})", l2_offset, l1_index, j, entry));
    }
  }
  return Status::Ok();
}

}  // namespace byoi
