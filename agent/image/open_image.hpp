// One entry point from an image in RAM to the virtual disk the writer writes: qcow2 (by its magic)
// through the validating reader, a VMDK through the VMDK reader, an OVA through the OVA reader and
// the VMDK reader of the disk it installs, anything else as raw. The runner and
// `convert`/`inspect` use it after the format has been checked against the manifest.
#pragma once

#include <optional>
#include <span>
#include <string_view>

#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"
#include "agent/image/format.hpp"
#include "agent/image/ova.hpp"
#include "agent/image/qcow2.hpp"
#include "agent/image/vmdk.hpp"

namespace byoi {

// "qcow2", "vmdk", "ova" for those, "raw" for the rest (the names of the manifest and of
// `convert --type`).
std::string_view FormatName(ImageFormat f);

// How OpenImage will read `image`: kQcow2 when it starts with "QFI\xfb", kVmdk when it looks like
// a VMDK (vmdk.hpp LooksLikeVmdk), kOva when it looks like an OVA (ova.hpp LooksLikeOva), kRaw
// otherwise. Reads at most the first 64 KiB.
ImageFormat SourceFormat(std::span<const uint8_t> image);

struct OpenedImage {
  ImageFormat format = ImageFormat::kRaw;
  ImageLayout layout;              // borrows the bytes given to OpenImage
  std::optional<Qcow2Info> qcow2;  // set for qcow2 images
  std::optional<VmdkInfo> vmdk;    // set for VMDK files and OVAs (the disk installed)
  std::optional<OvaInfo> ova;      // set for OVAs

  // Bytes of the virtual disk stored compressed (qcow2 clusters, VMDK grains): what
  // VerifyCompressedClusters has to inflate.
  uint64_t compressed_bytes() const;
};

// Reads `image` as SourceFormat says: ReadQcow2, ReadVmdk, or ReadOva then ReadVmdk of its disk
// (every metadata error is returned, with the archive's member named for an OVA; nothing is
// written anywhere), or as raw. An OVA's manifest digests are not computed here
// (VerifyOvaManifest). `image` must outlive the returned layout.
Result<OpenedImage> OpenImage(std::span<const uint8_t> image);

}  // namespace byoi
