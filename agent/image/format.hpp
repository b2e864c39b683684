// Step 3 of a job (docs/pipeline.md): what the downloaded bytes really are, compared with the type
// the manifest declares.
//
// Detection reads only signatures at fixed offsets (no parsing beyond bounds checks), so it is
// safe on any input:
//   qcow2      "QFI\xfb" at 0, version 2 or 3 at 4; virtual size = big-endian u64 at 24
//              (QEMU docs/interop/qcow2.rst). Version 1 is the old "qcow" format.
//   vmdk       "KDMV" at 0 (a sparse extent), a descriptor file, a VMDK3 or seSparse extent
//              (vmdk.hpp LooksLikeVmdk); virtual size = capacity (u64 at 12) × 512 for "KDMV".
//   ova        a tar archive whose first member is named *.ovf (ova.hpp LooksLikeOva: its first
//              header is read with libarchive, within the first 64 KiB).
//   raw        a GPT header ("EFI PART") in LBA 1 for 512- or 4096-byte sectors, or an MBR: 0x55AA
//              at 510 and four well-formed partition entries with at least one in use.
//   the rest   is named for the error message: other disk image formats (VHD, VHDX, VDI),
//              compressed data (gzip, xz, zstd, bzip2), archives, bare filesystems (ext2/3/4, XFS,
//              Btrfs, FAT, NTFS), ISO 9660, swap, LUKS, squashfs, an empty image, zeros, unknown.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

// The image types a manifest may declare (docs/manifest.md).
enum class ImageType { kQcow2, kRaw, kOva };
std::string_view ImageTypeName(ImageType type);  // "qcow2", "raw", "ova"

enum class ImageFormat {
  kQcow2,      // a qcow2 image (version 2 or 3)
  kRaw,        // a raw disk image with an MBR or a GPT
  kVmdk,       // a VMDK file (what vmdk.hpp reads, and what it refuses)
  kOva,        // an OVA: a tar archive led by an OVF descriptor
  kContainer,  // another disk image format: qcow (v1), VHD, VHDX, VDI
  kOther,      // anything else: a filesystem, compressed data, empty, unknown
};

// The kind of partition table at the start of a disk or an image; kOther is one the agent does not
// handle (a BSD or Sun label that libfdisk knows).
enum class PartitionTableType { kNone, kMbr, kGpt, kOther };

std::string_view PartitionTableTypeName(PartitionTableType t);  // "none", "mbr", "gpt", "other"

struct FormatInfo {
  ImageFormat format = ImageFormat::kOther;
  PartitionTableType table = PartitionTableType::kNone;  // for kRaw
  // Short name for "image provided format is <name> ...": "qcow2", "raw", "vmdk", "ova", "vhd",
  // "vhdx", "vdi", "qcow", "gzip", "xz", "zstd", "bzip2", "tar", "iso9660", "ext4", "xfs", "btrfs",
  // "vfat", "ntfs", "swap", "luks", "squashfs", "empty", "zeros", "unknown".
  std::string name;
  // What it seems to contain, for the no-partition-table message: "an ext4 filesystem",
  // "gzip compressed data", "a VMDK disk image", "nothing (the image is empty)".
  std::string contents;
  // Bytes of the disk the image describes: the qcow2 header's size, a sparse VMDK's capacity, a
  // raw image's length; 0 for the others.
  uint64_t virtual_size = 0;
};

// Names what `image` (the whole image) holds. Reads at most the first 64 KiB + 4 KiB.
FormatInfo DetectFormat(std::span<const uint8_t> image);

// The verify rule for the manifest's `type`: Ok when `info` is that type; otherwise kInvalid with
// the catalogue message: the format mismatch for a declared qcow2 or ova, or for a declared raw
// that is another disk image format (an OVA included), the no-partition-table message for a
// declared raw holding anything else.
Status CheckDeclaredType(const FormatInfo& info, ImageType declared);

}  // namespace byoi
