// The one download engine behind FetchImage and FetchStream (fetch.hpp has the policy): N
// connections that fetch the pieces of a PiecePlan into a PieceStore, which takes the complete
// prefix in order.
//
// Why libcurl's multi interface on one thread rather than N easy handles on N threads: the work
// is waiting on sockets, not computing (the hasher has its thread already), and one thread owns
// every piece of state: the plan, the store, the back-offs, the restarts. No lock, no thread
// that can lag behind a cancel, and a piece's bytes reach the store in the order libcurl reads
// them. A single connection costs what it did before the engine had more (one thread receiving
// and storing, one hashing).
#pragma once

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/fetch/fetch.hpp"
#include "agent/fetch/piece_store.hpp"

namespace byoi {

struct DownloadStats {
  uint64_t bytes = 0;  // the body's length
  int requests = 0;    // HTTP requests made, redirects and retries included
  int restarts = 0;    // times the download started over from byte 0
};

// Downloads `req.url` into `store`; on success every byte of the body is stored and taken (the
// store was flushed). Errors as FetchImage and FetchStream document; the store's sink errors are
// returned as they are. `store` is then left with whatever it had.
Result<DownloadStats> RunDownload(const FetchRequest& req, const FetchOptions& opts,
                                  PieceStore& store, const ProgressFn& progress,
                                  const CancelToken& cancel);

}  // namespace byoi
