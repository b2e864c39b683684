// Step 2 of a job (docs/pipeline.md): stream the image over HTTP(S) into one RAM buffer, hashing it
// as it arrives, resuming after network faults.
//
// The transfer runs on libcurl: http and https only, TLS verification on. Redirects are followed by
// RedirectChain (redirect_chain.hpp): at most 5, never from https to http, and the manifest's
// headers and userinfo go to the origin of its URL only. The 16 KiB pieces
// libcurl hands over are gathered into 1 MiB blocks; each block is written into the ImageBuffer
// while a second thread hashes the same block, hot in cache; nothing reads the image twice.
//
// Failure policy, per attempt:
//   - a dropped connection, a stall, a 5xx, 408 or 429, a body shorter than its Content-Length or
//     its Content-Range: try again after an exponential back-off, from the manifest's URL again,
//     with `Range: bytes=N-` from the last byte received (and `If-Range` with the image's ETag or
//     Last-Modified, so a changed image comes whole).
//     A 206 must carry a Content-Range starting at N, of the same total length; a 200 means the
//     server ignored the Range (or the image changed), and the download restarts at byte 0 with
//     fresh digests.
//   - any other 4xx, a refused certificate, a refused redirect (too many, another scheme, https to
//     http), a malformed URL: final at once.
//
// A body is complete when it has all the bytes its answer announced (Content-Length, or the range
// and length of a Content-Range), never fewer. An answer with neither Content-Length nor chunked
// encoding ends when the connection closes (HTTP/1.1, RFC 9112 §6.3): a connection cut early is
// then indistinguishable from the end, so such a download is only as sure as its checksum.
//   - more than the memory budget: final; refused from the headers when Content-Length (or
//     Content-Range) announces it, else the moment the budget is passed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/fetch/hasher.hpp"
#include "agent/fetch/http_headers.hpp"
#include "agent/image/format.hpp"  // ImageType
#include "agent/image/image_buffer.hpp"

namespace byoi {

struct FetchRequest {
  std::string url;  // http or https; may carry userinfo, a presigned query (never shown)
  std::vector<HttpHeader> headers;   // sent on every request to the URL's origin, retries included
  ImageType type = ImageType::kRaw;  // only names the image in the too-big message
  std::vector<HashAlgo> hashes;      // digests to compute while bytes arrive (may be empty)
};

struct FetchOptions {
  // RAM for the image, in bytes (> 0): the ImageBuffer's capacity. The runner passes
  // --memory-limit or MemTotal - 3 GiB.
  uint64_t memory_budget = 0;
  // Requests tried in a row without a single new byte before giving up (>= 1). An attempt that
  // brings new bytes starts the count (and the back-off) again, so a long download over a flaky
  // link finishes as long as it moves; `deadline` bounds the whole.
  int attempts = 10;
  // Back-off before the second attempt; doubles for each further one, up to `max_retry_delay`.
  std::chrono::milliseconds retry_delay{1000};
  std::chrono::milliseconds max_retry_delay{30000};
  // TCP + TLS connection set-up, per attempt.
  std::chrono::milliseconds connect_timeout{30000};
  // An attempt that receives no byte for this long (headers included) is abandoned and retried.
  std::chrono::milliseconds stall_timeout{60000};
  // The whole download, retries and back-offs included; zero means none. Final when passed.
  std::chrono::milliseconds deadline{std::chrono::hours(6)};
  // PEM file of the certificate authorities to trust instead of the system's; empty: the system's.
  std::string ca_bundle;
  // Skip TLS certificate and host name verification (labs only). Off by default.
  bool insecure = false;
  // libcurl's receive buffer (CURLOPT_BUFFERSIZE, at most 10 MiB): large buffers mean fewer
  // callbacks and system calls per byte (2 GiB over loopback, 6 runs each: median 3.15 s with
  // 2 MiB, 2.6 s with 8 MiB).
  size_t receive_buffer = 8 << 20;
  // Hash on a thread of our own, in parallel with storing the bytes, rather than inline.
  bool hash_thread = true;
  // Told about each failed attempt that will be retried ("attempt 2 of 10 failed: ..."), for the
  // log; never holds a secret. May be empty.
  std::function<void(std::string_view)> on_retry;
};

struct FetchResult {
  ImageBuffer image;            // the whole body, exactly
  std::vector<Digest> digests;  // one per FetchRequest::hashes, in the same order
  int requests = 0;             // HTTP requests made, redirects and retries included
  int restarts = 0;             // times the server ignored a Range and we started over
  double seconds = 0;           // wall time, back-offs included

  // The digest computed for `algo`, or empty if it was not asked for.
  std::string DigestOf(HashAlgo algo) const;
};

// Downloads `req.url` into a new ImageBuffer of `opts.memory_budget` bytes. `progress` (may be
// empty) is called about 5 times a second from this thread with bytes received so far and the
// expected total (0 while unknown). `cancel` is polled at least once a second; a cancelled fetch
// returns within 2 s with kCancelled. On failure nothing is kept; the Status has the catalogue
// message (download failed, too big, cancelled) and the cause in `detail`.
Result<FetchResult> FetchImage(const FetchRequest& req, const FetchOptions& opts,
                               const ProgressFn& progress, const CancelToken& cancel);

}  // namespace byoi
