#include "agent/image/raw_source.hpp"

#include <memory>

namespace byoi {
namespace {

// [0, size) is the image itself, then zeros up to the next whole sector.
class RawSource : public ExtentSource {
 public:
  explicit RawSource(std::span<const uint8_t> image) : image_(image) {}

  Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const override {
    const uint64_t size = image_.size();
    if (begin < size) {
      Extent e;
      e.kind = Extent::Kind::kData;
      e.length = size;
      e.data = image_.data();
      BYOI_RETURN_IF_ERROR(visit(e));
    }
    if (end > size) {
      Extent pad;
      pad.kind = Extent::Kind::kZero;
      pad.offset = size;
      pad.length = end - size;
      BYOI_RETURN_IF_ERROR(visit(pad));
    }
    return Status::Ok();
  }

 private:
  std::span<const uint8_t> image_;
};

}  // namespace

ImageLayout RawLayout(std::span<const uint8_t> image) {
  const uint64_t virtual_size = (uint64_t{image.size()} + 511) / 512 * 512;
  return ImageLayout(virtual_size, std::make_unique<RawSource>(image));
}

}  // namespace byoi
