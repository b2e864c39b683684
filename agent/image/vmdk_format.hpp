// The pieces of a VMDK file, each decoded from a span of bytes: the sparse header (and the footer
// copy of it that a streamOptimized file may carry at its end), the markers that stand before
// every grain and table of a streamOptimized file, and the text descriptor. The random-access
// reader (vmdk.hpp) walks them through the grain directory; a reader that takes the file in one
// pass, in order (stream mode, docs/pipeline.md), needs only DecodeVmdkHeader on the first sector
// and then DecodeVmdkMarker from grain_offset on: every grain's marker carries its LBA and length,
// metadata markers say how many sectors to skip, and the end-of-stream marker ends the file.
//
// Format notes (VMware "Virtual Disk Format 5.0", little-endian; QEMU block/vmdk.c is the reader
// we match):
// - Sector 0 of a hosted sparse extent: "KDMV", version (1-3), flags, capacity (sectors),
//   granularity (sectors per grain), descriptor offset and size (sectors), grain table entries per
//   table, redundant and primary grain directory offsets (sectors), overhead (grain_offset,
//   sectors), the unclean-shutdown byte, the four newline check bytes "\n \r\n" and the
//   compression algorithm (0 none, 1 deflate).
// - flags: 0 the newline check bytes are valid, 1 a redundant grain directory exists, 2 a grain
//   table entry of 1 is a zero grain, 16 grains are compressed, 17 grains and metadata have
//   markers. A primary directory offset of ~0 (GD_AT_END) means that the real header is the
//   footer: a footer marker, a copy of sector 0 with the real offsets, and the end-of-stream
//   marker in the last three sectors.
// - A marker: LBA (u64) and size (u32); size > 0 is a grain whose `size` zlib bytes follow at
//   +12; size 0 is a metadata marker whose type (u32 at +12: 0 end of stream, 1 grain table,
//   2 grain directory, 3 footer) is followed, from the next sector, by LBA sectors of metadata.
// - The descriptor is text: "# Disk DescriptorFile", key=value lines (version, CID, parentCID,
//   createType, parentFileNameHint), extent lines `RW <sectors> SPARSE "file"` and `ddb.` keys.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

inline constexpr uint64_t kVmdkSector = 512;
inline constexpr uint64_t kVmdkGdAtEnd = ~uint64_t{0};

// Header flags (VMware's spec; QEMU's VMDK4_FLAG_*).
inline constexpr uint32_t kVmdkFlagNewlineCheck = 1u << 0;
inline constexpr uint32_t kVmdkFlagRedundantGd = 1u << 1;
inline constexpr uint32_t kVmdkFlagZeroGrain = 1u << 2;
inline constexpr uint32_t kVmdkFlagCompressed = 1u << 16;
inline constexpr uint32_t kVmdkFlagMarkers = 1u << 17;

struct VmdkHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint64_t capacity = 0;     // sectors of the virtual disk
  uint64_t granularity = 0;  // sectors per grain
  uint64_t desc_offset = 0;  // sectors
  uint64_t desc_size = 0;    // sectors
  uint32_t gtes_per_gt = 0;
  uint64_t rgd_offset = 0;    // sectors
  uint64_t gd_offset = 0;     // sectors, or kVmdkGdAtEnd
  uint64_t grain_offset = 0;  // sectors before the first grain (the "overhead")
  bool unclean_shutdown = false;
  uint8_t check_bytes[4] = {};
  uint16_t compress_algorithm = 0;  // 0 none, 1 deflate

  bool compressed() const { return compress_algorithm == 1; }
  bool markers() const { return (flags & kVmdkFlagMarkers) != 0; }
  bool zero_grains() const { return (flags & kVmdkFlagZeroGrain) != 0; }
  uint64_t grain_bytes() const { return granularity * kVmdkSector; }
};

// True when `bytes` starts with the sparse extent magic "KDMV".
bool HasVmdkMagic(std::span<const uint8_t> bytes);

// Decodes the header in the first 512 bytes of `sector` (the file's sector 0, or the header
// sector of a footer) and checks what a reader relies on, so that a header accepted here can be
// used without overflow: kInvalid when `sector` is shorter than 512 bytes, has no "KDMV" magic, or
// the newline check bytes are damaged (a file sent through a text-mode transfer); kUnsupported
// for versions other than 1-3, unknown flags, compression other than none and deflate, compressed
// grains without markers (or markers without compression), a grain that is not a power of two
// from 1 to 4096 sectors (2 MiB), grain tables of more than 512 entries (QEMU's limit) or of
// none, a capacity of 2^55 sectors or more. Offsets are not checked against any file here.
Result<VmdkHeader> DecodeVmdkHeader(std::span<const uint8_t> sector);

// Where the header that counts is, for a file of `file` bytes whose sector 0 decoded as `first`:
// `first` itself, or, when its grain directory is at the end (kVmdkGdAtEnd), the footer's copy,
// checked as QEMU checks it (a footer marker, the header sector, an end-of-stream marker in the
// file's last three whole sectors) and decoded by DecodeVmdkHeader. kInvalid with the reason
// otherwise ("no footer at 0x1f400: ...").
Result<VmdkHeader> FindVmdkHeader(std::span<const uint8_t> file, const VmdkHeader& first);

enum class VmdkMarkerType : uint32_t {
  kEndOfStream = 0,
  kGrainTable = 1,
  kGrainDirectory = 2,
  kFooter = 3,
  kGrain = 0x100,  // not on disk: a marker with a size is a grain
};

struct VmdkMarker {
  VmdkMarkerType type = VmdkMarkerType::kEndOfStream;
  uint64_t value =
      0;              // kGrain: the grain's first sector in the virtual disk; metadata: its sectors
  uint32_t size = 0;  // kGrain: bytes of zlib data after the 12-byte marker
  // Bytes from the marker's start to what follows it: 12 for a grain (its data), 512 for metadata.
  uint64_t header_bytes = 0;
};

// Decodes the marker at the start of `bytes`: kInvalid when fewer than 12 bytes (a grain marker)
// or 512 bytes (a metadata marker) are there, or a metadata marker has an unknown type. Whether a
// grain's data is there too is the caller's business.
Result<VmdkMarker> DecodeVmdkMarker(std::span<const uint8_t> bytes);

// A grain marker's size against QEMU's bound: it reads at most two grains for a marker and its
// data, and refuses a longer one. kInvalid naming the marker at file offset `at` otherwise.
Status CheckVmdkGrainSize(const VmdkMarker& m, uint64_t at, uint64_t grain_bytes);

struct VmdkExtentLine {
  std::string access;  // RW, RDONLY, NOACCESS
  uint64_t sectors = 0;
  std::string type;  // SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, SESPARSE, ...
  std::string file;
};

struct VmdkDescriptor {
  std::string create_type;  // "monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", ...
  std::string parent_cid;
  std::string parent_hint;  // parentFileNameHint: the disk has a parent (a snapshot's delta)
  std::vector<VmdkExtentLine> extents;
};

// Parses descriptor text (NUL bytes and what follows them are ignored: an embedded descriptor is
// padded with them). Keys are matched whole, case-sensitively, as VMware writes them; lines it
// does not know are skipped. At most 1 MiB of text is looked at, and at most 1024 extent lines
// kept. Never fails: what is missing is empty.
VmdkDescriptor ParseVmdkDescriptor(std::string_view text);

inline constexpr uint64_t kMaxVmdkDescriptorBytes = 1 << 20;

// The descriptor embedded in a sparse file (`h.desc_offset`, `h.desc_size` sectors, at most
// kMaxVmdkDescriptorBytes, cut at the end of `file`; empty when there is none). kUnsupported when
// it names a parent disk (parentFileNameHint: the file holds a snapshot's changes only).
Result<VmdkDescriptor> ReadEmbeddedDescriptor(std::span<const uint8_t> file, const VmdkHeader& h);

// True when `bytes` starts like a descriptor file: "# Disk DescriptorFile", or comment and blank
// lines then "version=N" (QEMU's vmdk_probe).
bool LooksLikeVmdkDescriptor(std::span<const uint8_t> bytes);

}  // namespace byoi
