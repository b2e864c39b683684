#include "agent/fetch/fetch.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "agent/base/messages.hpp"
#include "agent/fetch/download.hpp"
#include "agent/fetch/piece_store.hpp"

namespace byoi {

namespace {

using Clock = std::chrono::steady_clock;

// A stream's window holds at least a piece of the smallest size (piece_plan.hpp).
constexpr uint64_t kMinWindow = 1 << 20;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

std::string DigestOf(const std::vector<Digest>& digests, HashAlgo algo) {
  for (const Digest& d : digests) {
    if (d.algo == algo) return d.hex;
  }
  return {};
}

Result<FetchResult> FetchImage(const FetchRequest& req, const FetchOptions& opts,
                               const ProgressFn& progress, const CancelToken& cancel) {
  const auto start = Clock::now();
  BYOI_RETURN_IF_ERROR(cancel.Check());
  if (opts.memory_budget == 0) {
    return Status::Error(Code::kTooBig, "the memory budget is 0 bytes",
                         msg::TooBigForMemory(ImageTypeName(req.type)));
  }
  BYOI_ASSIGN_OR_RETURN(ImageBuffer image, ImageBuffer::Create(opts.memory_budget));
  BYOI_ASSIGN_OR_RETURN(auto hasher, StreamHasher::Create(req.hashes, /*threaded=*/true));
  DownloadStats stats;
  {
    RamStore store(image, *hasher);  // waits for the hasher, which reads the image
    BYOI_ASSIGN_OR_RETURN(stats, RunDownload(req, opts, store, progress, cancel));
  }
  BYOI_ASSIGN_OR_RETURN(std::vector<Digest> digests, hasher->Finish());
  if (image.size() != stats.bytes) {
    return Status::Error(Code::kInternal,
                         fmt::format("the image buffer holds {} bytes of a {}-byte body",
                                     image.size(), stats.bytes));
  }
  if (progress) progress(image.size(), image.size());
  FetchResult result;
  result.image = std::move(image);
  result.digests = std::move(digests);
  result.requests = stats.requests;
  result.restarts = stats.restarts;
  result.seconds = SecondsSince(start);
  return result;
}

Result<FetchStreamResult> FetchStream(const FetchRequest& req, const FetchOptions& opts,
                                      ByteSink& sink, const ProgressFn& progress,
                                      const CancelToken& cancel) {
  const auto start = Clock::now();
  BYOI_RETURN_IF_ERROR(cancel.Check());
  BYOI_ASSIGN_OR_RETURN(auto hasher, StreamHasher::Create(req.hashes, /*threaded=*/true));
  DownloadStats stats;
  {
    BYOI_ASSIGN_OR_RETURN(
        std::unique_ptr<RingStore> store,
        RingStore::Create(std::max(opts.window_bytes, kMinWindow), sink, *hasher, opts.loans));
    BYOI_ASSIGN_OR_RETURN(stats, RunDownload(req, opts, *store, progress, cancel));
  }
  BYOI_ASSIGN_OR_RETURN(std::vector<Digest> digests, hasher->Finish());
  if (progress) progress(stats.bytes, stats.bytes);
  FetchStreamResult result;
  result.bytes = stats.bytes;
  result.digests = std::move(digests);
  result.requests = stats.requests;
  result.restarts = stats.restarts;
  result.seconds = SecondsSince(start);
  return result;
}

}  // namespace byoi
