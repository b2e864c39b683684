#include "agent/image/raw_source.hpp"

namespace byoi {

ImageLayout RawLayout(std::span<const uint8_t> image) {
  ImageLayout layout;
  layout.virtual_size = image.size();
  if (!image.empty()) {
    Extent e;
    e.kind = Extent::Kind::kData;
    e.offset = 0;
    e.length = image.size();
    e.data = image.data();
    layout.extents.push_back(e);
  }
  return layout;
}

}  // namespace byoi
