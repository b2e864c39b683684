// A raw image as the source of the writer: its virtual disk is the file itself, one data extent.
#pragma once

#include <cstdint>
#include <span>

#include "agent/image/extent.hpp"

namespace byoi {

// The layout of a raw image: [0, size) as one data extent borrowing `image` (which must outlive
// the layout). Like qemu-img, which sees every disk in 512-byte sectors, a size that is not a
// multiple of 512 is padded with zeros up to the next one. An empty image is an empty disk.
ImageLayout RawLayout(std::span<const uint8_t> image);

}  // namespace byoi
