// One entry point from an image in RAM to the virtual disk the writer writes: qcow2 (by its magic)
// through the validating reader, anything else as raw. The runner and `convert`/`inspect` use it
// after the format has been checked against the manifest.
#pragma once

#include <optional>
#include <span>
#include <string_view>

#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"
#include "agent/image/format.hpp"
#include "agent/image/qcow2.hpp"

namespace byoi {

// "qcow2" for kQcow2, "raw" for the rest (OpenImage yields only these two; the manifest's names).
std::string_view FormatName(ImageFormat f);

struct OpenedImage {
  ImageFormat format = ImageFormat::kRaw;
  ImageLayout layout;              // borrows the bytes given to OpenImage
  std::optional<Qcow2Info> qcow2;  // set for qcow2 images
};

// qcow2 when `image` starts with "QFI\xfb" (ReadQcow2: every metadata error is returned, nothing
// is written anywhere), raw otherwise. `image` must outlive the returned layout.
Result<OpenedImage> OpenImage(std::span<const uint8_t> image);

}  // namespace byoi
