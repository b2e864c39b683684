#include "agent/image/verify_compressed.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

// A multiple of the largest cluster (2 MiB), so no compressed cluster spans two slices.
constexpr uint64_t kSlice = 16ull << 20;

// The compressed extents of a layout read from the clusters kept at their virtual offsets.
class InflatedSource : public ExtentSource {
 public:
  InflatedSource(ImageLayout layout, ImageBuffer kept)
      : layout_(std::move(layout)), kept_(std::move(kept)) {}
  Status Visit(uint64_t begin, uint64_t end, const ExtentVisitor& visit) const override {
    return layout_.ForEachExtent(begin, end - begin, [&](const Extent& e) -> Status {
      if (e.kind != Extent::Kind::kCompressed) return visit(e);
      return visit(Extent{.kind = Extent::Kind::kData,
                          .offset = e.offset,
                          .length = e.length,
                          .data = kept_.data() + e.offset});
    });
  }

 private:
  ImageLayout layout_;
  ImageBuffer kept_;
};

}  // namespace

ImageLayout InflatedLayout(ImageLayout layout, ImageBuffer kept) {
  const uint64_t size = layout.virtual_size();
  return ImageLayout(size, std::make_unique<InflatedSource>(std::move(layout), std::move(kept)));
}

Result<bool> VerifyAndKeepCompressedClusters(OpenedImage& image, uint64_t room,
                                             const CancelToken& cancel) {
  const uint64_t inflated = image.compressed_bytes();
  std::optional<ImageBuffer> kept;
  if (inflated > 0 && inflated <= room) {
    // Without the address space for it, the clusters are inflated again by the writer.
    Result<ImageBuffer> buffer = ImageBuffer::Create(image.layout.virtual_size());
    if (buffer.ok()) kept = std::move(*buffer);
  }
  BYOI_RETURN_IF_ERROR(VerifyCompressedClusters(image.layout, 0, cancel, kept ? &*kept : nullptr));
  if (!kept) return false;
  image.layout = InflatedLayout(std::move(image.layout), std::move(*kept));
  return true;
}

Status VerifyCompressedClusters(const ImageLayout& layout, unsigned threads,
                                const CancelToken& cancel, ImageBuffer* keep) {
  const uint64_t size = layout.virtual_size();
  const uint64_t slices = (size + kSlice - 1) / kSlice;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<uint64_t>(threads, std::max<uint64_t>(slices, 1)));

  std::atomic<uint64_t> next{0};
  std::mutex mu;
  // The failure at the lowest virtual offset seen so far; slices past it are not looked at.
  uint64_t failed_at = std::numeric_limits<uint64_t>::max();
  std::atomic<uint64_t> failed_slice{std::numeric_limits<uint64_t>::max()};
  Status failure;

  auto work = [&] {
    ClusterDecompressor decompressor;
    std::vector<uint8_t> cluster;
    for (uint64_t i = next++; i < slices && i < failed_slice.load(); i = next++) {
      const uint64_t begin = i * kSlice;
      Status s = cancel.Check();
      if (s.ok())
        s = layout.ForEachExtent(
            begin, std::min(kSlice, size - begin), [&](const Extent& e) -> Status {
              if (e.kind != Extent::Kind::kCompressed) return Status::Ok();
              cluster.resize(e.cluster_size);
              BYOI_RETURN_IF_ERROR(decompressor.Decompress(e, cluster));
              // Stored whole pages go into the memfd without being cleared first, where
              // inflating through its mapping faults and clears each page (a third more time).
              if (keep == nullptr) return Status::Ok();
              return keep->StoreAt(
                  e.offset, std::span<const uint8_t>(cluster).subspan(e.cluster_skip, e.length));
            });
      if (s.ok()) continue;
      std::lock_guard lock(mu);
      if (begin < failed_at) {
        failed_at = begin;
        failed_slice = i;
        failure = std::move(s);
      }
      return;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return failure;
}

}  // namespace byoi
