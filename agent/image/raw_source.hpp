// A raw image as the source of the writer: its virtual disk is the file itself, one data extent.
#pragma once

#include <cstdint>
#include <span>

#include "agent/image/extent.hpp"

namespace byoi {

// The layout of a raw image: [0, size) as one data extent borrowing `image` (which must outlive
// the layout); an empty image has no extents and a virtual size of 0.
ImageLayout RawLayout(std::span<const uint8_t> image);

}  // namespace byoi
