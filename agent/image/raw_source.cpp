#include "agent/image/raw_source.hpp"

namespace byoi {

ImageLayout RawLayout(std::span<const uint8_t> image) {
  ImageLayout layout;
  const uint64_t size = image.size();
  layout.virtual_size = (size + 511) / 512 * 512;
  if (size > 0) {
    Extent e;
    e.kind = Extent::Kind::kData;
    e.offset = 0;
    e.length = size;
    e.data = image.data();
    layout.extents.push_back(e);
  }
  if (layout.virtual_size > size) {
    Extent pad;
    pad.kind = Extent::Kind::kZero;
    pad.offset = size;
    pad.length = layout.virtual_size - size;
    layout.extents.push_back(pad);
  }
  return layout;
}

}  // namespace byoi
