#include "agent/image/open_image.hpp"

#include "agent/image/raw_source.hpp"

namespace byoi {

std::string_view FormatName(ImageFormat f) { return f == ImageFormat::kQcow2 ? "qcow2" : "raw"; }

Result<OpenedImage> OpenImage(std::span<const uint8_t> image) {
  OpenedImage out;
  if (!HasQcow2Magic(image)) {
    out.layout = RawLayout(image);
    return out;
  }
  BYOI_ASSIGN_OR_RETURN(Qcow2Image q, ReadQcow2(image));
  out.format = ImageFormat::kQcow2;
  out.layout = std::move(q.layout);
  out.qcow2 = q.info;
  return out;
}

}  // namespace byoi
