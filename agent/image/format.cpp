#include "agent/image/format.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string_view>

#include "agent/base/bytes.hpp"
#include "agent/base/messages.hpp"
#include "agent/image/ova.hpp"
#include "agent/image/vmdk.hpp"
#include "agent/image/vmdk_format.hpp"

namespace byoi {

std::string_view ImageTypeName(ImageType type) {
  switch (type) {
    case ImageType::kQcow2:
      return "qcow2";
    case ImageType::kRaw:
      return "raw";
    case ImageType::kOva:
      return "ova";
  }
  return "raw";
}

namespace {

bool HasAt(std::span<const uint8_t> b, uint64_t offset, std::string_view magic) {
  if (offset > b.size() || b.size() - offset < magic.size()) return false;
  return std::memcmp(b.data() + offset, magic.data(), magic.size()) == 0;
}

FormatInfo Named(ImageFormat format, std::string name, std::string contents) {
  FormatInfo info;
  info.format = format;
  info.name = std::move(name);
  info.contents = std::move(contents);
  return info;
}

// The classic MBR: boot signature, and four entries each either all zero or well formed (status
// 0x00 or 0x80, a type, a start past the MBR itself, a length), at least one in use. Requiring
// unused entries to be all zero keeps the boot code of a filesystem's boot sector from passing
// for a partition table.
bool HasMbr(std::span<const uint8_t> b) {
  if (b.size() < 512 || b[510] != 0x55 || b[511] != 0xAA) return false;
  int used = 0;
  for (int i = 0; i < 4; ++i) {
    const uint8_t* e = b.data() + 446 + 16 * i;
    if (std::all_of(e, e + 16, [](uint8_t x) { return x == 0; })) continue;
    uint8_t status = e[0];
    uint8_t type = e[4];
    uint32_t start = Le32(&b[446 + 16 * i + 8]);
    uint32_t sectors = Le32(&b[446 + 16 * i + 12]);
    if ((status != 0x00 && status != 0x80) || type == 0 || start == 0 || sectors == 0) return false;
    ++used;
  }
  return used > 0;
}

PartitionTableType FindPartitionTable(std::span<const uint8_t> b) {
  if (HasAt(b, 512, "EFI PART") || HasAt(b, 4096, "EFI PART")) return PartitionTableType::kGpt;
  if (HasMbr(b)) return PartitionTableType::kMbr;
  return PartitionTableType::kNone;
}

// ext2/3/4 superblock at 1024: magic 0xEF53 at +56; feature flags at +92 (compat) and +96
// (incompat). Extents, 64-bit or flex_bg make ext4; a journal without them ext3.
std::optional<FormatInfo> DetectExt(std::span<const uint8_t> b) {
  if (b.size() < 1024 + 100 || b[1024 + 56] != 0x53 || b[1024 + 57] != 0xEF) return std::nullopt;
  uint32_t compat = Le32(&b[1024 + 92]);
  uint32_t incompat = Le32(&b[1024 + 96]);
  if (incompat & (0x40 | 0x80 | 0x200))
    return Named(ImageFormat::kOther, "ext4", "an ext4 filesystem");
  if (compat & 0x4) return Named(ImageFormat::kOther, "ext3", "an ext3 filesystem");
  return Named(ImageFormat::kOther, "ext2", "an ext2 filesystem");
}

FormatInfo DetectOther(std::span<const uint8_t> b) {
  using F = ImageFormat;
  if (b.empty()) return Named(F::kOther, "empty", "nothing (the image is empty)");
  // Other disk image formats (their magic sits at byte 0).
  if (HasAt(b, 0, "QFI\xfb") && b.size() >= 8 && Be32(&b[4]) == 1) {
    return Named(F::kContainer, "qcow", "a qcow (version 1) disk image");
  }
  if (LooksLikeVmdk(b)) {
    FormatInfo info = Named(F::kVmdk, "vmdk", "a VMDK disk image");
    if (HasVmdkMagic(b) && b.size() >= 20 && Le64(&b[12]) < (1ull << 55)) {
      info.virtual_size = Le64(&b[12]) * 512;
    }
    return info;
  }
  if (HasAt(b, 0, "vhdxfile")) return Named(F::kContainer, "vhdx", "a VHDX disk image");
  if (HasAt(b, 0, "conectix")) return Named(F::kContainer, "vhd", "a VHD disk image");
  if (b.size() >= 0x44 && Le32(&b[0x40]) == 0xbeda107f) {
    return Named(F::kContainer, "vdi", "a VDI disk image");
  }
  // Compressed data and archives: a compressed disk image has to be unpacked before upload.
  if (HasAt(b, 0, "\x1f\x8b")) return Named(F::kOther, "gzip", "gzip compressed data");
  if (HasAt(b, 0,
            std::string_view("\xfd"
                             "7zXZ\0",
                             6))) {
    return Named(F::kOther, "xz", "xz compressed data");
  }
  if (HasAt(b, 0, "\x28\xb5\x2f\xfd")) return Named(F::kOther, "zstd", "zstd compressed data");
  if (HasAt(b, 0, "BZh") && b.size() > 3 && b[3] >= '1' && b[3] <= '9') {
    return Named(F::kOther, "bzip2", "bzip2 compressed data");
  }
  if (LooksLikeOva(b)) {
    return Named(F::kOva, "ova", "an OVA (a tar archive led by an OVF descriptor)");
  }
  if (HasAt(b, 257, "ustar")) return Named(F::kOther, "tar", "a tar archive");
  // Volumes without a partition table.
  if (HasAt(b, 0, std::string_view("LUKS\xba\xbe", 6))) {
    return Named(F::kOther, "luks", "a LUKS encrypted volume");
  }
  if (HasAt(b, 0, "XFSB")) return Named(F::kOther, "xfs", "an XFS filesystem");
  if (HasAt(b, 0x10040, "_BHRfS_M")) return Named(F::kOther, "btrfs", "a Btrfs filesystem");
  if (HasAt(b, 0, "hsqs")) return Named(F::kOther, "squashfs", "a squashfs filesystem");
  if (auto ext = DetectExt(b)) return *ext;
  for (uint64_t off : {0x8001, 0x8801, 0x9001}) {
    if (HasAt(b, off, "CD001")) return Named(F::kOther, "iso9660", "an ISO 9660 image");
  }
  if (HasAt(b, 3, "NTFS    ")) return Named(F::kOther, "ntfs", "an NTFS filesystem");
  if (HasAt(b, 0x36, "FAT1") || HasAt(b, 0x52, "FAT32")) {
    return Named(F::kOther, "vfat", "a FAT filesystem");
  }
  if (HasAt(b, 4096 - 10, "SWAPSPACE2") || HasAt(b, 4096 - 10, "SWAP-SPACE")) {
    return Named(F::kOther, "swap", "a Linux swap area");
  }
  auto head = b.first(std::min<size_t>(b.size(), 64 << 10));
  if (std::all_of(head.begin(), head.end(), [](uint8_t x) { return x == 0; })) {
    return Named(F::kOther, "zeros", "only zeros at its start");
  }
  return Named(F::kOther, "unknown", "unknown data");
}

}  // namespace

FormatInfo DetectFormat(std::span<const uint8_t> b) {
  // Any version but 1 is qcow2 here; the qcow2 reader refuses versions and headers it cannot use.
  if (HasAt(b, 0, "QFI\xfb") && !(b.size() >= 8 && Be32(&b[4]) == 1)) {
    FormatInfo info = Named(ImageFormat::kQcow2, "qcow2", "a qcow2 disk image");
    if (b.size() >= 32) info.virtual_size = Be64(&b[24]);
    return info;
  }
  // Before the partition tables: a dynamic VHD or a VMDK starts with its own header, but a
  // hybrid ISO or a disk image whose first partition holds a filesystem is raw.
  FormatInfo info = DetectOther(b);
  if (info.format != ImageFormat::kOther) return info;
  if (PartitionTableType table = FindPartitionTable(b); table != PartitionTableType::kNone) {
    info =
        Named(ImageFormat::kRaw, "raw",
              table == PartitionTableType::kGpt ? "a raw disk image with a GPT"
                                                : "a raw disk image with an MBR partition table");
    info.table = table;
    info.virtual_size = b.size();
  }
  return info;
}

Status CheckDeclaredType(const FormatInfo& info, ImageType declared) {
  if (declared == ImageType::kQcow2 || declared == ImageType::kOva) {
    const ImageFormat wanted =
        declared == ImageType::kQcow2 ? ImageFormat::kQcow2 : ImageFormat::kOva;
    if (info.format == wanted) return Status::Ok();
    return Status::Error(Code::kInvalid, "detected " + info.contents,
                         msg::FormatMismatch(info.name, ImageTypeName(declared)));
  }
  switch (info.format) {
    case ImageFormat::kRaw:
      return Status::Ok();
    case ImageFormat::kQcow2:
    case ImageFormat::kVmdk:
    case ImageFormat::kOva:
    case ImageFormat::kContainer:
      return Status::Error(Code::kInvalid, "detected " + info.contents,
                           msg::FormatMismatch(info.name, "raw"));
    case ImageFormat::kOther:
      break;
  }
  return Status::Error(Code::kInvalid, "no MBR or GPT found", msg::NoPartitionTable(info.contents));
}

}  // namespace byoi
