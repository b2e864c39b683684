// The native qcow2 reader: validates a qcow2 image held in RAM and serves its virtual disk as an
// ImageLayout (extent.hpp) that decodes the image's own L1/L2 tables on demand. Serves
// docs/pipeline.md steps 3-4: the writer never sees a byte of an image whose header, tables or
// mapped data are not sound, and no extent list is kept (a map's memory does not grow with the
// image).
//
// Format notes (QEMU docs/interop/qcow2.rst; all numbers big-endian):
// - Header: magic "QFI\xfb", version 2 or 3, cluster_bits 9..21, size, crypt_method, l1_size,
//   l1_table_offset, refcount_table_offset/_clusters, nb_snapshots, snapshots_offset, v3 feature
//   bitmasks, refcount_order, header_length, compression_type (byte 104 when header_length >
//   104). Header extensions follow the header, 8-byte aligned, until type 0, inside the first
//   cluster.
// - Two-level map: L1 entries (bits 9-55 = L2 table offset) point to one-cluster L2 tables of
//   8-byte entries, or 16-byte entries with Extended L2 (a second word: bits 0-31 "subcluster
//   allocated", bits 32-63 "subcluster reads as zeros", 32 subclusters per cluster).
// - L2 entry: bit 62 = compressed, bit 0 = zero cluster (v3, no extended L2), bits 9-55 = host
//   cluster offset. A compressed descriptor with x = 62 - (cluster_bits - 8) holds the host byte
//   offset in bits 0..x-1 and (number of 512-byte sectors - 1) in bits x..61; the stream is raw
//   deflate or a zstd frame and must inflate to exactly one cluster.
// - Like qemu-img: the virtual size is rounded down to 512 bytes, unallocated clusters read as
//   zeros (no backing file is accepted), metadata that qemu reads past the end of the file (a
//   snapshot table, a bitmap directory) reads as zeros there.
// - Unlike qemu-img, which reads them as zeros, data that an L2 entry maps past the end of the
//   file is refused: such an image is a short upload, not a disk (a compressed stream may end
//   inside its last sector, as qemu-img writes them).
// The open-time checks follow qcow2_do_open and friends (QEMU block/qcow2.c, qcow2-snapshot.c,
// qcow2-bitmap.c): refcount table and snapshot table placement and size, every snapshot table
// entry, header extensions, the data_file_raw bit, the persistent bitmap directory and tables.
// What is refused, with kUnsupported: backing files, external data files, encryption, unknown
// incompatible feature bits, versions other than 2 and 3, cluster sizes outside 512 B..2 MiB,
// compression types other than deflate and zstd. With kInvalid: anything malformed (what qemu-img
// refuses to open, unaligned or out-of-file offsets, an L1 table over 32 MiB or too small for the
// disk, invalid entries, truncated data).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"

namespace byoi {

// What `inspect` shows of a qcow2 image, and what the reader learnt while walking it.
struct Qcow2Info {
  uint32_t version = 0;
  uint32_t cluster_bits = 0;
  uint32_t cluster_size = 0;
  uint64_t virtual_size = 0;  // header size rounded down to 512 bytes, as qemu-img uses it
  Compression compression = Compression::kDeflate;  // the type compressed clusters would use
  bool extended_l2 = false;
  bool dirty = false;           // incompatible bit 0 (refcounts may be stale; harmless to a reader)
  bool corrupt = false;         // incompatible bit 1 (qemu-img convert still reads such images)
  bool lazy_refcounts = false;  // compatible bit 0
  uint32_t refcount_bits = 16;
  uint32_t snapshots = 0;  // internal snapshots; only the active L1 table is read
  uint64_t l1_entries = 0;
  uint64_t l2_tables = 0;  // distinct L2 tables referenced by the active L1 table
  // Bytes of the virtual disk by kind (they add up to virtual_size):
  uint64_t data_bytes = 0;         // allocated, uncompressed clusters/subclusters
  uint64_t compressed_bytes = 0;   // compressed clusters
  uint64_t zero_bytes = 0;         // explicit zero clusters/subclusters
  uint64_t unallocated_bytes = 0;  // nothing stored: reads as zeros
};

struct Qcow2Image {
  Qcow2Info info;
  ImageLayout layout;  // decodes the tables of the image bytes passed to ReadQcow2: borrows them
};

// True when `bytes` starts with the qcow2 magic "QFI\xfb".
bool HasQcow2Magic(std::span<const uint8_t> bytes);

// Parses and validates the header, header extensions, the refcount, snapshot and bitmap tables as
// qemu-img does at open, then walks the active L1 table and every L2 entry it references once
// (counting Qcow2Info's bytes, storing nothing per cluster), so that the returned layout's walks
// cannot fail on metadata. Compressed clusters are checked for a descriptor inside the file here;
// whether they inflate to exactly one cluster is VerifyCompressedClusters' job
// (verify_compressed.hpp). Memory: a bitmap of the image's clusters (size / cluster size / 8
// bytes) during the walk; nothing after. The returned layout points into `image`, which must
// outlive it. Errors: kUnsupported or kInvalid, with the reason in detail ("L2 table at 0x50000
// (L1 index 0) is not aligned to the cluster size").
Result<Qcow2Image> ReadQcow2(std::span<const uint8_t> image);

std::string_view CompressionName(Compression c);  // "none", "zlib", "zstd" (qemu-img's names)

}  // namespace byoi
