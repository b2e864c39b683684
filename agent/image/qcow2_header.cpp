#include "agent/image/qcow2_header.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::Invalid;

namespace {

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint64_t kV2HeaderLength = 72;
constexpr uint64_t kV3HeaderLength = 104;
constexpr uint64_t kMaxOffset = uint64_t{INT64_MAX};  // qemu keeps every offset a signed int64

// Header extension types.
constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint32_t kExtFeatureTable = 0x6803f857;
constexpr uint32_t kExtCryptoHeader = 0x0537be77;
constexpr uint32_t kExtBitmaps = 0x23852875;
constexpr uint32_t kBitmapsExtLength = 24;
constexpr uint32_t kMaxBackingFormat = 15;  // qemu's backing_format[16], NUL included

// QEMU's limits (block/qcow2.h).
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint32_t kMaxSnapshotExtraData = 1024;
constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;
constexpr uint32_t kMaxBitmaps = 65535;
constexpr uint64_t kMaxBitmapDirectoryBytes = 1024ull * kMaxBitmaps;

// Bitmap directory entries (QEMU block/qcow2-bitmap.c).
constexpr uint64_t kBitmapEntrySize = 24;
constexpr uint32_t kBitmapMaxTableSize = 0x8000000;
constexpr uint64_t kBitmapMaxPhysBytes = 0x20000000;
constexpr uint32_t kBitmapMinGranularityBits = 9;
constexpr uint32_t kBitmapMaxGranularityBits = 31;
constexpr uint32_t kBitmapMaxNameSize = 1023;
constexpr uint32_t kBitmapFlagInUse = 1u << 0;
constexpr uint32_t kBitmapKnownFlags = 3;
constexpr uint8_t kBitmapTypeDirtyTracking = 1;
constexpr uint64_t kBitmapTableReserved = 0xff000000000001feull;
constexpr uint64_t kBitmapTableOffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kBitmapTableAllOnes = 1;

// Copies out.size() bytes from file offset `offset` out of `bytes`, which hold the file's bytes
// from `base` on; what lies outside them reads as zeros, as qemu's block layer returns bytes past
// the end of the file.
void CopyZeroFilledAt(std::span<const uint8_t> bytes, uint64_t base, uint64_t offset,
                      std::span<uint8_t> out) {
  std::fill(out.begin(), out.end(), 0);
  if (offset < base || offset - base >= bytes.size()) return;
  const uint64_t at = offset - base;
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), bytes.size() - at));
  std::memcpy(out.data(), bytes.data() + at, n);
}

void CopyZeroFilled(std::span<const uint8_t> image, uint64_t offset, std::span<uint8_t> out) {
  CopyZeroFilledAt(image, 0, offset, out);
}

// A name from the image, printable and bounded, for messages.
std::string Printable(std::span<const uint8_t> bytes, uint64_t base, uint64_t offset,
                      uint64_t length) {
  uint8_t buf[64];
  const size_t n = static_cast<size_t>(std::min<uint64_t>(length, sizeof buf));
  CopyZeroFilledAt(bytes, base, offset, {buf, n});
  std::string s(reinterpret_cast<const char*>(buf), n);
  for (char& c : s) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return length > n ? s + "..." : s;
}

// The number of bitmap table entries qemu expects for a disk of `disk` bytes: one bit per
// granule, stored in 64-bit words, in whole clusters (hbitmap_serialization_size).
uint64_t ExpectedBitmapTableSize(uint64_t disk, uint32_t granularity_bits, uint64_t cluster_size) {
  if (disk == 0) return 0;
  const uint64_t words = (((disk - 1) >> granularity_bits) >> 6) + 1;
  return (words * 8 + cluster_size - 1) / cluster_size;
}

// Why a bitmap directory entry breaks qemu's constraints (check_dir_entry), or empty.
std::string BitmapEntryProblem(uint64_t table_offset, uint32_t table_size, uint32_t flags,
                               uint8_t type, uint32_t granularity_bits, uint32_t name_size,
                               uint64_t cluster_size, uint64_t disk) {
  if (table_size == 0) return "its table is empty";
  if (table_offset == 0) return "its table offset is 0";
  if (table_offset % cluster_size != 0) {
    return fmt::format("its table at {} is not aligned to the cluster size", Hex(table_offset));
  }
  if (table_size > kBitmapMaxTableSize) {
    return fmt::format("its table of {} entries is too large", table_size);
  }
  if (granularity_bits < kBitmapMinGranularityBits ||
      granularity_bits > kBitmapMaxGranularityBits) {
    return fmt::format("granularity bits {} (only {} to {})", granularity_bits,
                       kBitmapMinGranularityBits, kBitmapMaxGranularityBits);
  }
  if (flags & ~kBitmapKnownFlags) return fmt::format("reserved flags {}", Hex(flags));
  if (name_size > kBitmapMaxNameSize) return fmt::format("a name of {} bytes", name_size);
  if (type != kBitmapTypeDirtyTracking) return fmt::format("type {}", type);
  const uint64_t phys = uint64_t{table_size} * cluster_size;
  if (phys > kBitmapMaxPhysBytes) return "its table covers more than 512 MiB";
  if (!(flags & kBitmapFlagInUse) && disk > ((phys * 8) << granularity_bits)) {
    return "its table is too small for the disk";
  }
  return {};
}

// The in-file entries of the bitmap table of one bitmap not in use. Entries past the end of the
// file read as zeros (valid); `budget` bounds the in-file bytes read over all bitmaps (a sound
// image stores each table once, so they add up to less than the file).
Status CheckBitmapTable(std::span<const uint8_t> image, const Qcow2BitmapTable& t,
                        uint64_t cluster_size, uint64_t& budget) {
  uint64_t in_file = 0;
  if (t.offset < image.size()) {
    in_file = std::min<uint64_t>(t.entries, (image.size() - t.offset) / 8);
  }
  if (in_file * 8 > budget) return Invalid("bitmap tables add up to more than the image");
  budget -= in_file * 8;
  for (uint64_t i = 0; i < in_file; ++i) {
    BYOI_RETURN_IF_ERROR(
        CheckQcow2BitmapTableEntry(i, Be64(image.data() + t.offset + 8 * i), cluster_size));
  }
  return Status::Ok();
}

}  // namespace

Result<Qcow2Header> ParseQcow2Header(std::span<const uint8_t> image) {
  if (image.size() < kV2HeaderLength) {
    return Invalid(fmt::format("file of {} bytes is too small for a qcow2 header", image.size()));
  }
  const uint8_t* p = image.data();
  if (Be32(p) != kMagic) return Invalid("no qcow2 magic");
  Qcow2Header h;
  h.version = Be32(p + 4);
  if (h.version != 2 && h.version != 3) {
    return Status::Error(Code::kUnsupported,
                         fmt::format("qcow2 version {} (only 2 and 3 are supported)", h.version));
  }
  h.backing_file_offset = Be64(p + 8);
  h.cluster_bits = Be32(p + 20);
  h.size = Be64(p + 24);
  h.crypt_method = Be32(p + 32);
  h.l1_size = Be32(p + 36);
  h.l1_table_offset = Be64(p + 40);
  h.refcount_table_offset = Be64(p + 48);
  h.refcount_table_clusters = Be32(p + 56);
  h.nb_snapshots = Be32(p + 60);
  h.snapshots_offset = Be64(p + 64);
  if (h.cluster_bits < 9 || h.cluster_bits > 21) {
    return Status::Error(
        Code::kUnsupported,
        fmt::format("cluster_bits {} (only 9 to 21: 512 B to 2 MiB clusters)", h.cluster_bits));
  }
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
    if (h.header_length > h.cluster_size() || h.header_length > image.size()) {
      return Invalid(fmt::format("header_length {} exceeds the first cluster", h.header_length));
    }
    if (h.header_length > kV3HeaderLength) h.compression_type = p[104];
  }
  if (h.refcount_order > 6) {
    return Invalid(fmt::format("refcount_order {} is above 6", h.refcount_order));
  }
  return h;
}

std::span<const uint8_t> FindQcow2FeatureTable(std::span<const uint8_t> image,
                                               const Qcow2Header& h) {
  const uint64_t end = std::min<uint64_t>(h.cluster_size(), image.size());
  for (uint64_t pos = h.header_length; pos + 8 <= end;) {
    const uint32_t type = Be32(&image[pos]);
    const uint32_t length = Be32(&image[pos + 4]);
    if (type == kExtEnd || length > end - pos - 8) break;
    if (type == kExtFeatureTable) return image.subspan(pos + 8, length);
    pos += 8 + ((uint64_t{length} + 7) & ~uint64_t{7});
  }
  return {};
}

Result<Qcow2Bitmaps> ReadQcow2Extensions(std::span<const uint8_t> image, const Qcow2Header& h) {
  // Extensions live in the first cluster, after the header; qemu reads each one's type and length
  // even where they would cross the cluster's end, and refuses it then.
  const uint64_t end = h.cluster_size();
  Qcow2Bitmaps bitmaps;
  uint64_t pos = h.header_length;
  while (pos < end) {
    uint8_t head[8];
    CopyZeroFilled(image, pos, head);
    const uint32_t type = Be32(head);
    const uint32_t length = Be32(head + 4);
    if (pos + 8 > end || length > end - pos - 8) {
      return Invalid(fmt::format("header extension {} at {} of {} bytes passes the first cluster",
                                 Hex(type), Hex(pos), length));
    }
    const uint64_t data = pos + 8;
    if (type == kExtEnd) break;
    if (type == kExtBackingFormat && length > kMaxBackingFormat) {
      return Invalid(fmt::format("backing format extension of {} bytes (at most {})", length,
                                 kMaxBackingFormat));
    }
    if (type == kExtCryptoHeader && h.crypt_method != 2) {
      return Invalid("LUKS header extension in an image that is not LUKS-encrypted");
    }
    if (type == kExtBitmaps) {
      if (length != kBitmapsExtLength) {
        return Invalid(
            fmt::format("bitmaps extension of {} bytes ({} expected)", length, kBitmapsExtLength));
      }
      // Without the autoclear bit a program that does not know bitmaps has changed the image:
      // qemu ignores the extension then (the bitmaps are stale).
      if (h.autoclear & kQcow2AutoclearBitmaps) {
        uint8_t ext[kBitmapsExtLength];
        CopyZeroFilled(image, data, ext);
        bitmaps.present = true;
        bitmaps.count = Be32(ext);
        bitmaps.directory_size = Be64(ext + 8);
        bitmaps.directory_offset = Be64(ext + 16);
        if (Be32(ext + 4) != 0) return Invalid("bitmaps extension: reserved field is not zero");
        if (bitmaps.count == 0) return Invalid("bitmaps extension with zero bitmaps");
        if (bitmaps.count > kMaxBitmaps) {
          return Invalid(fmt::format("{} bitmaps (at most {})", bitmaps.count, kMaxBitmaps));
        }
        if (bitmaps.directory_offset & (h.cluster_size() - 1)) {
          return Invalid(fmt::format("bitmap directory at {} is not aligned to the cluster size",
                                     Hex(bitmaps.directory_offset)));
        }
        if (bitmaps.directory_size > kMaxBitmapDirectoryBytes) {
          return Invalid(fmt::format("bitmap directory of {} bytes is larger than {}",
                                     bitmaps.directory_size, kMaxBitmapDirectoryBytes));
        }
      }
    }
    pos = data + ((uint64_t{length} + 7) & ~uint64_t{7});
  }
  return bitmaps;
}

Status CheckQcow2RefcountTable(const Qcow2Header& h) {
  const uint64_t cluster_size = h.cluster_size();
  if (h.refcount_table_clusters == 0) {
    return Invalid("image has no refcount table (refcount_table_clusters is 0)");
  }
  if (h.refcount_table_clusters > kMaxRefcountTableBytes / cluster_size) {
    return Invalid(fmt::format("refcount table of {} clusters is larger than 8 MiB",
                               h.refcount_table_clusters));
  }
  const uint64_t bytes = uint64_t{h.refcount_table_clusters} * cluster_size;
  if (h.refcount_table_offset & (cluster_size - 1)) {
    return Invalid(fmt::format("refcount table offset {} is not aligned to the cluster size",
                               Hex(h.refcount_table_offset)));
  }
  if (h.refcount_table_offset > kMaxOffset - bytes) {
    return Invalid(
        fmt::format("refcount table at {} ends past 2^63", Hex(h.refcount_table_offset)));
  }
  return Status::Ok();
}

Status CheckQcow2SnapshotPlacement(const Qcow2Header& h) {
  if (h.nb_snapshots > kMaxSnapshots) {
    return Invalid(fmt::format("{} snapshots (at most {})", h.nb_snapshots, kMaxSnapshots));
  }
  if (h.snapshots_offset & (h.cluster_size() - 1)) {
    return Invalid(fmt::format("snapshot table offset {} is not aligned to the cluster size",
                               Hex(h.snapshots_offset)));
  }
  if (h.snapshots_offset > kMaxOffset - h.nb_snapshots * kQcow2SnapshotHeaderSize) {
    return Invalid(fmt::format("snapshot table at {} ends past 2^63", Hex(h.snapshots_offset)));
  }
  return Status::Ok();
}

Result<uint64_t> CheckQcow2SnapshotEntry(const Qcow2Header& h, uint32_t index, uint64_t pos,
                                         std::span<const uint8_t, kQcow2SnapshotHeaderSize> entry) {
  const uint32_t extra = Be32(entry.data() + 36);
  if (extra > kMaxSnapshotExtraData) {
    return Invalid(
        fmt::format("snapshot table entry {} (at {}) has {} bytes of extra data (at most {})",
                    index, Hex(pos), extra, kMaxSnapshotExtraData));
  }
  const uint64_t next =
      pos + kQcow2SnapshotHeaderSize + extra + Be16(entry.data() + 12) + Be16(entry.data() + 14);
  if (next - h.snapshots_offset > kMaxSnapshotTableBytes) {
    return Invalid(fmt::format("snapshot table is larger than 64 MiB at entry {}", index));
  }
  return (next + 7) & ~uint64_t{7};
}

Status CheckQcow2Snapshots(std::span<const uint8_t> image, const Qcow2Header& h) {
  BYOI_RETURN_IF_ERROR(CheckQcow2SnapshotPlacement(h));
  // Entries are variable-sized (extra data, ID and name follow a 40-byte header), so the table's
  // size is known only once every entry has been walked.
  uint64_t pos = h.snapshots_offset;
  for (uint32_t i = 0; i < h.nb_snapshots; ++i) {
    uint8_t entry[kQcow2SnapshotHeaderSize];
    CopyZeroFilled(image, pos, entry);
    BYOI_ASSIGN_OR_RETURN(pos, CheckQcow2SnapshotEntry(h, i, pos, entry));
  }
  return Status::Ok();
}

bool IsValidQcow2BitmapTableEntry(uint64_t entry, uint64_t cluster_size) {
  const uint64_t offset = entry & kBitmapTableOffsetMask;
  return !((entry & kBitmapTableReserved) ||
           (offset != 0 && ((entry & kBitmapTableAllOnes) || offset % cluster_size != 0)));
}

Status CheckQcow2BitmapTableEntry(uint64_t index, uint64_t entry, uint64_t cluster_size) {
  if (!IsValidQcow2BitmapTableEntry(entry, cluster_size)) {
    return Invalid(fmt::format("its table entry {} ({}) is invalid", index, Hex(entry)));
  }
  return Status::Ok();
}

Result<std::vector<Qcow2BitmapTable>> CheckQcow2BitmapDirectory(std::span<const uint8_t> bytes,
                                                                uint64_t base, const Qcow2Header& h,
                                                                const Qcow2Bitmaps& bitmaps,
                                                                uint64_t virtual_size) {
  std::vector<Qcow2BitmapTable> tables;
  if (!bitmaps.present) return tables;
  if (bitmaps.directory_size == 0) return Invalid("bitmap directory size is 0");
  const uint64_t cluster_size = h.cluster_size();
  const uint64_t begin = bitmaps.directory_offset;
  const uint64_t end = begin + bitmaps.directory_size;  // both below 2^63: no overflow
  const std::string broken = fmt::format("bitmap directory at {} of {} bytes is broken", Hex(begin),
                                         bitmaps.directory_size);
  uint32_t count = 0;
  uint64_t pos = begin;
  while (pos < end) {
    if (end - pos < kBitmapEntrySize) return Invalid(broken + ": an entry passes its end");
    if (++count > bitmaps.count) {
      return Invalid(fmt::format("bitmap directory holds more than the {} bitmaps of the header",
                                 bitmaps.count));
    }
    uint8_t e[kBitmapEntrySize];
    CopyZeroFilledAt(bytes, base, pos, e);
    const uint64_t table_offset = Be64(e);
    const uint32_t table_size = Be32(e + 8);
    const uint32_t flags = Be32(e + 12);
    const uint8_t type = e[16];
    const uint32_t granularity_bits = e[17];
    const uint32_t name_size = Be16(e + 18);
    const uint32_t extra = Be32(e + 20);
    const uint64_t entry_size = (kBitmapEntrySize + name_size + uint64_t{extra} + 7) & ~7ull;
    if (entry_size > end - pos) return Invalid(broken + ": an entry passes its end");
    if (extra != 0) return Invalid("bitmap extra data is not supported");
    const std::string name = fmt::format("bitmap {} '{}'", count - 1,
                                         Printable(bytes, base, pos + kBitmapEntrySize, name_size));
    std::string problem =
        BitmapEntryProblem(table_offset, table_size, flags, type, granularity_bits, name_size,
                           cluster_size, virtual_size);
    if (!problem.empty()) return Invalid(name + " is invalid: " + problem);
    // qemu reads the table and the data of every bitmap that is not marked in use.
    if (!(flags & kBitmapFlagInUse)) {
      const uint64_t expected =
          ExpectedBitmapTableSize(virtual_size, granularity_bits, cluster_size);
      if (table_size != expected) {
        return Invalid(fmt::format("{}: its table has {} entries, {} expected for the disk", name,
                                   table_size, expected));
      }
      tables.push_back({name, table_offset, table_size});
    }
    pos += entry_size;
  }
  if (count != bitmaps.count) {
    return Invalid(fmt::format("bitmap directory holds {} of the {} bitmaps of the header", count,
                               bitmaps.count));
  }
  return tables;
}

Status CheckQcow2Bitmaps(std::span<const uint8_t> image, const Qcow2Header& h,
                         const Qcow2Bitmaps& bitmaps, uint64_t virtual_size) {
  BYOI_ASSIGN_OR_RETURN(std::vector<Qcow2BitmapTable> tables,
                        CheckQcow2BitmapDirectory(image, 0, h, bitmaps, virtual_size));
  uint64_t table_budget = image.size();
  for (const Qcow2BitmapTable& t : tables) {
    BYOI_RETURN_IF_ERROR(
        CheckBitmapTable(image, t, h.cluster_size(), table_budget).Context(t.name));
  }
  return Status::Ok();
}

}  // namespace byoi
