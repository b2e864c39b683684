// The parts of a qcow2 image that qemu-img checks when it opens one, before any cluster is read:
// the header, its extensions, the refcount table's placement, the snapshot table and the
// persistent bitmaps. Used by the qcow2 readers (qcow2.hpp, qcow2_stream.hpp) only; the reader
// refuses what qemu-img refuses to open (QEMU block/qcow2.c qcow2_do_open, qcow2-snapshot.c
// qcow2_do_read_snapshots, qcow2-bitmap.c bitmap_list_load), so that a corrupt image is never
// written to a disk.
//
// Every function here reads only inside `image`; metadata that qemu reads past the end of the
// file (where its block layer returns zeros) is read as zeros here too, with the same bounds
// qemu sets (at most 65536 snapshots of at most 1024 bytes of extra data in a table of at most
// 64 MiB; a bitmap directory of at most 64 MiB), so a hostile header cannot make the walk long.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

struct Qcow2Header {
  uint32_t version = 0;
  uint64_t backing_file_offset = 0;
  uint32_t cluster_bits = 0;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible = 0;
  uint64_t compatible = 0;
  uint64_t autoclear = 0;
  uint32_t refcount_order = 4;
  uint64_t header_length = 72;
  uint8_t compression_type = 0;

  uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
};

// incompatible_features and autoclear_features bits (qcow2.rst).
inline constexpr uint64_t kQcow2IncompatDirty = 1ull << 0;
inline constexpr uint64_t kQcow2IncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kQcow2IncompatDataFile = 1ull << 2;
inline constexpr uint64_t kQcow2IncompatCompression = 1ull << 3;
inline constexpr uint64_t kQcow2IncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kQcow2AutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kQcow2AutoclearDataFileRaw = 1ull << 1;

// The fixed header: magic, version (kUnsupported unless 2 or 3), cluster_bits (kUnsupported
// outside 9..21), header_length, refcount_order. kInvalid with the reason otherwise.
Result<Qcow2Header> ParseQcow2Header(std::span<const uint8_t> image);

// The feature name table extension's bytes (empty when there is none or the extensions cannot be
// walked): for naming unknown incompatible bits.
std::span<const uint8_t> FindQcow2FeatureTable(std::span<const uint8_t> image,
                                               const Qcow2Header& h);

// What the header extensions say about persistent bitmaps.
struct Qcow2Bitmaps {
  bool present = false;  // a bitmaps extension and the autoclear bitmaps bit
  uint32_t count = 0;
  uint64_t directory_size = 0;
  uint64_t directory_offset = 0;
};

// Walks the header extensions up to the end of the first cluster as qemu does: each must fit in
// it; a backing format, LUKS header or bitmaps extension must be well formed. kInvalid otherwise.
Result<Qcow2Bitmaps> ReadQcow2Extensions(std::span<const uint8_t> image, const Qcow2Header& h);

// The refcount table's placement and size (qemu checks them at open, though a reader never uses
// them): at least one cluster, at most 8 MiB, cluster-aligned, below 2^63. kInvalid otherwise.
Status CheckQcow2RefcountTable(const Qcow2Header& h);

// The snapshot table's placement: at most 65536 entries, cluster-aligned (even when empty, as
// qemu wants), ending below 2^63. kInvalid otherwise.
Status CheckQcow2SnapshotPlacement(const Qcow2Header& h);

// Bytes of a snapshot table entry's fixed part.
inline constexpr uint64_t kQcow2SnapshotHeaderSize = 40;

// Entry `index` of the snapshot table, whose fixed part `entry` lies at file offset `pos`
// (8-byte aligned): at most 1024 bytes of extra data, the table at most 64 MiB so far. Returns
// the offset of the next entry (8-byte aligned); kInvalid otherwise.
Result<uint64_t> CheckQcow2SnapshotEntry(const Qcow2Header& h, uint32_t index, uint64_t pos,
                                         std::span<const uint8_t, kQcow2SnapshotHeaderSize> entry);

// The snapshot table: its placement, then at most 65536 entries, cluster-aligned (even when empty,
// as qemu wants), every entry walked (at most 1024 bytes of extra data each, at most 64 MiB in
// all). kInvalid otherwise.
Status CheckQcow2Snapshots(std::span<const uint8_t> image, const Qcow2Header& h);

// A bitmap's table that qemu reads (the bitmap is not marked in use): `entries` 8-byte entries at
// `offset`. `name` names the bitmap for messages ("bitmap 0 'b0'").
struct Qcow2BitmapTable {
  std::string name;
  uint64_t offset = 0;
  uint32_t entries = 0;
};

// The persistent bitmap directory, from `bytes`, which hold the file's bytes from offset `base`
// on (bytes outside them read as zeros, as past the end of the file): every entry checked as qemu
// does (check_dir_entry), the count against the header's, each table's size against the disk.
// Returns the tables whose entries qemu reads; kInvalid otherwise.
Result<std::vector<Qcow2BitmapTable>> CheckQcow2BitmapDirectory(std::span<const uint8_t> bytes,
                                                                uint64_t base, const Qcow2Header& h,
                                                                const Qcow2Bitmaps& bitmaps,
                                                                uint64_t virtual_size);

// Entry `index` of a bitmap table: no reserved bits, a cluster-aligned offset or none.
// kInvalid ("its table entry 3 (0x201) is invalid") otherwise.
Status CheckQcow2BitmapTableEntry(uint64_t index, uint64_t entry, uint64_t cluster_size);
bool IsValidQcow2BitmapTableEntry(uint64_t entry, uint64_t cluster_size);

// The persistent bitmap directory and the tables of bitmaps not marked in use, checked as qemu
// does when it loads them (every image it opens has its bitmaps loaded). `virtual_size` is the
// disk the bitmaps describe. kInvalid otherwise.
Status CheckQcow2Bitmaps(std::span<const uint8_t> image, const Qcow2Header& h,
                         const Qcow2Bitmaps& bitmaps, uint64_t virtual_size);

}  // namespace byoi
