#include "agent/image/extent.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace byoi {
namespace {

// The extents of a list, found by binary search.
class ListSource : public ExtentSource {
 public:
  explicit ListSource(std::vector<Extent> extents) : extents_(std::move(extents)) {}

  Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const override {
    auto it = std::upper_bound(extents_.begin(), extents_.end(), begin,
                               [](uint64_t off, const Extent& e) { return off < e.offset; });
    if (it != extents_.begin()) --it;
    for (; it != extents_.end() && it->offset < end; ++it) {
      BYOI_RETURN_IF_ERROR(visit(*it));
    }
    return Status::Ok();
  }

 private:
  std::vector<Extent> extents_;
};

// `e` cut to [begin, end); its length is 0 when they do not meet.
Extent Clip(const Extent& e, uint64_t begin, uint64_t end) {
  Extent c = e;
  const uint64_t from = std::max(e.offset, begin);
  const uint64_t to = std::min(e.offset + e.length, end);
  if (from >= to) {
    c.length = 0;
    return c;
  }
  const uint64_t skip = from - e.offset;
  c.offset = from;
  c.length = to - from;
  if (c.kind == Extent::Kind::kData) c.data += skip;
  if (c.kind == Extent::Kind::kCompressed) c.cluster_skip += static_cast<uint32_t>(skip);
  return c;
}

// True when `next` continues `prev` as one extent.
bool Continues(const Extent& prev, const Extent& next) {
  if (prev.kind != next.kind || prev.offset + prev.length != next.offset) return false;
  if (prev.kind == Extent::Kind::kZero) return true;
  return prev.kind == Extent::Kind::kData && prev.data + prev.length == next.data;
}

}  // namespace

ImageLayout::ImageLayout(uint64_t virtual_size, std::unique_ptr<const ExtentSource> source)
    : virtual_size_(virtual_size), source_(std::move(source)) {}

ImageLayout ImageLayout::FromExtents(std::vector<Extent> extents) {
  uint64_t size = 0;
  for (const Extent& e : extents) size += e.length;
  return ImageLayout(size, std::make_unique<ListSource>(std::move(extents)));
}

Status ImageLayout::ForEachExtent(uint64_t offset, uint64_t length,
                                  const ExtentVisitor& visit) const {
  if (offset > virtual_size_ || length > virtual_size_ - offset) {
    return Status::Error(Code::kInvalid,
                         fmt::format("reading {} bytes at {:#x}: past the virtual size of {}",
                                     length, offset, virtual_size_));
  }
  if (length == 0) return Status::Ok();
  if (source_ == nullptr) return Status::Error(Code::kInternal, "layout without a source");
  const uint64_t end = offset + length;
  uint64_t pos = offset;  // where the next extent must start
  Extent pending;         // the merged run not yet visited (length 0: none)
  Status s = source_->Visit(offset, end, [&](const Extent& raw) -> Status {
    Extent e = Clip(raw, offset, end);
    if (e.length == 0) return Status::Ok();
    if (e.offset != pos) {
      return Status::Error(Code::kInternal, fmt::format("layout has no extent at {:#x}", pos));
    }
    pos += e.length;
    if (pending.length != 0 && Continues(pending, e)) {
      pending.length += e.length;
      return Status::Ok();
    }
    if (pending.length != 0) BYOI_RETURN_IF_ERROR(visit(pending));
    pending = e;
    return Status::Ok();
  });
  if (!s.ok()) return s;
  if (pos != end) {
    return Status::Error(Code::kInternal, fmt::format("layout has no extent at {:#x}", pos));
  }
  return visit(pending);
}

}  // namespace byoi
