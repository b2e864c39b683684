// The native VMDK reader: validates a hosted sparse VMDK held in RAM (the disk of an OVA, or a
// .vmdk given to `convert`) and serves its virtual disk as an ImageLayout (extent.hpp) that
// decodes the file's own grain directory and grain tables on demand, as the qcow2 reader does
// (qcow2.hpp): no per-grain list is kept, so a map's memory does not grow with the disk.
//
// What is read (vmdk_format.hpp has the format notes): the two hosted sparse subformats,
//   monolithicSparse  grains stored as they are, found through the grain directory and tables;
//   streamOptimized   every grain deflated (zlib) behind a marker that names its LBA, the
//                     directory either where the header says or, in VMware's own files, in the
//                     footer at the end.
// As qemu-img: the virtual disk is `capacity` sectors; a grain table entry of 0, or a directory
// entry of 0, reads as zeros (no parent disk is accepted), and so does an entry of 1 when the
// zero-grain flag is set; the redundant grain directory is not read.
// Unlike qemu-img, which reads them as zeros, grains that a table maps past the end of the file
// are refused (a short upload, not a disk); a compressed grain's marker must name the LBA the
// table maps it to; a grain table may be referenced once only (so a walk costs at most the file's
// size); a capacity of 0 is an empty disk (qemu-img takes such a file for a descriptor and
// refuses it).
// Refused with kUnsupported: descriptor-only VMDKs whose data is in other files (split extents,
// flat extents), VMDK3 (COWD) and seSparse extents, a parent disk (parentFileNameHint), versions,
// flags, compression and geometry vmdk_format.hpp does not accept. With kInvalid: anything
// malformed (a directory or table outside the file, a marker that is not a grain, a grain whose
// data passes the end of the file).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"

namespace byoi {

// What `inspect` shows of a VMDK, and what the reader learnt while walking it.
struct VmdkInfo {
  // "streamOptimized" (compressed grains behind markers) or "monolithicSparse", from the header.
  std::string subformat;
  std::string create_type;  // the embedded descriptor's createType, as written (may be empty)
  uint32_t version = 0;
  uint32_t flags = 0;
  uint64_t virtual_size = 0;  // capacity * 512
  uint32_t grain_size = 0;    // bytes
  uint32_t gtes_per_gt = 0;
  bool footer = false;  // the header that counts is the footer's (grain directory at the end)
  bool unclean_shutdown = false;
  uint64_t gd_entries = 0;
  uint64_t grain_tables = 0;  // allocated grain tables
  // Bytes of the virtual disk by kind (they add up to virtual_size):
  uint64_t data_bytes = 0;         // grains stored as they are
  uint64_t compressed_bytes = 0;   // compressed grains
  uint64_t zero_bytes = 0;         // zero grains (the zero-grain flag and an entry of 1)
  uint64_t unallocated_bytes = 0;  // nothing stored: reads as zeros
};

struct VmdkImage {
  VmdkInfo info;
  ImageLayout layout;  // decodes the tables of the bytes passed to ReadVmdk: borrows them
};

// True when `bytes` starts like a VMDK of any kind: the sparse magic "KDMV", a descriptor file,
// a VMDK3 ("COWD") or seSparse extent (ReadVmdk explains what it does not read).
bool LooksLikeVmdk(std::span<const uint8_t> bytes);

// Parses and validates the header (the footer's, when the directory is at the end), the embedded
// descriptor, the grain directory and every grain table it references, and every grain they map
// (its data, or its marker and compressed data, inside the file), counting VmdkInfo's bytes and
// storing nothing per grain, so that the returned layout's walks cannot fail on metadata. Whether
// compressed grains inflate to exactly one grain is VerifyCompressedClusters' job
// (verify_compressed.hpp). Memory: a bitmap of the file's sectors during the walk. The layout
// points into `file`, which must outlive it. Errors: kUnsupported or kInvalid, with the reason in
// detail ("grain directory at 0x5000 (3 entries) lies outside the file").
Result<VmdkImage> ReadVmdk(std::span<const uint8_t> file);

}  // namespace byoi
