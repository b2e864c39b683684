#include "agent/image/verify_compressed.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

// A multiple of the largest cluster (2 MiB), so no compressed cluster spans two slices.
constexpr uint64_t kSlice = 16ull << 20;

}  // namespace

Status VerifyCompressedClusters(const ImageLayout& layout, unsigned threads,
                                const CancelToken& cancel) {
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
        s = layout.ForEachExtent(begin, std::min(kSlice, size - begin),
                                 [&](const Extent& e) -> Status {
                                   if (e.kind != Extent::Kind::kCompressed) return Status::Ok();
                                   cluster.resize(e.cluster_size);
                                   return decompressor.Decompress(e, cluster);
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
