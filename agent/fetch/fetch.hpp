// Step 2 of a job (docs/pipeline.md): download the image over HTTP(S), hashing it in byte order as
// it arrives, over several connections when the server answers Range requests, resuming each
// piece after network faults. Two entry points share one engine (download.hpp):
//   - FetchImage: into one RAM buffer (an ImageBuffer): each piece is written at its offset;
//   - FetchStream: into a ByteSink (byte_sink.hpp), in order, through a bounded window of RAM
//     where the pieces that arrive ahead wait; the image never has to fit in RAM.
//
// The transfer runs on libcurl: http and https only, TLS verification on. Redirects are followed by
// RedirectChain (redirect_chain.hpp): at most 5, never from https to http, and the manifest's
// headers and userinfo go to the origin of its URL only. Every request, each piece's and each
// retry's, starts at the manifest's URL. A proxy (FetchOptions::proxy, else the environment:
// proxy.hpp) changes the route, not the origin: the credentials' rule is judged on the request's
// URL, and a tunnel's CONNECT carries none of the manifest's headers.
//
// Connections (FetchOptions::connections, N). Range support is found without HEAD (a presigned
// URL is often signed for GET only): the first request asks `Range: bytes=0-(4 MiB - 1)`.
//   - A 206 with `Content-Range: bytes 0-x/TOTAL` proves ranges and tells the length: the rest is
//     cut into pieces (piece_plan.hpp: about 4 per connection, 4-64 MiB) that the N connections
//     take in turn, first pieces first; the bytes before the first unfinished piece go to the
//     hasher (and the sink) in order. Each later request carries `If-Range` with the first
//     answer's strong ETag or Last-Modified.
//   - A 200 means no ranges: that one connection takes the whole body, as a plain download.
//   - With N = 1 the first request has no Range: one request for the whole body.
//
// Failure policy, per request (so per piece: each piece has its own count and back-off):
//   - a dropped connection, a stall, a 5xx, 408 or 429, a body shorter than its Content-Length or
//     its Content-Range: that piece is asked for again after an exponential back-off, from the
//     byte where it stopped; the other pieces go on. A piece whose requests bring no new byte
//     `attempts` times in a row fails the download.
//   - The image changed (a 206 of another total length, a 200 to a Range request after ranges
//     worked): everything starts over at byte 0, with fresh digests. A 206 that is not the range
//     asked for (no or another Content-Range, more bytes than announced): the server's ranges
//     cannot be trusted; everything starts over at byte 0 on one connection without Range. When
//     ranges are not used, a 200 to a resume replaces what was received from byte 0 on.
//     FetchStream cannot start over once the sink has bytes: it fails instead.
//   - any other 4xx, a refused certificate, a refused redirect (too many, another scheme, https to
//     http), a malformed URL: final at once.
//
// A body is complete when it has all the bytes its answer announced (Content-Length, or the range
// and length of a Content-Range), never fewer. An answer with neither Content-Length nor chunked
// encoding ends when the connection closes (HTTP/1.1, RFC 9112 §6.3): a connection cut early is
// then indistinguishable from the end, so such a download is only as sure as its checksum.
//   - FetchImage, more than the memory budget: final; refused from the headers when
//     Content-Length (or Content-Range) announces it, else the moment the budget is passed.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/cancel.hpp"
#include "agent/base/loans.hpp"
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
  // FetchImage: RAM for the image, in bytes (> 0): the ImageBuffer's capacity. The runner passes
  // --memory-limit or MemTotal - 3 GiB.
  uint64_t memory_budget = 0;
  // Connections at once (1-16) when the server answers Range requests; one otherwise. Servers
  // and CDNs often cap each connection's rate; several connections add up (--connections).
  int connections = 4;
  // FetchStream: RAM for the pieces that arrived ahead of the bytes the sink has taken, in bytes
  // (>= 1 MiB); no connection asks for a piece that would end past it.
  uint64_t window_bytes = 64 << 20;
  // FetchStream: when set, the window's bytes are lent to the sink's stages (loans.hpp): the stream
  // writer writes them to the disk from the window instead of copying them. Must outlive the call.
  Loans* loans = nullptr;
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
  // The proxy every request goes through (proxy.hpp has the rule and the form): http:// or
  // https://, optionally with USER:PASSWORD@, which are never shown. Empty: the environment's
  // https_proxy / http_proxy / no_proxy decide, else none. `ca_bundle` and `insecure` apply to an
  // https proxy's certificate too.
  std::string proxy;
  // Skip TLS certificate and host name verification (labs only). Off by default.
  bool insecure = false;
  // libcurl's receive buffer, per connection (CURLOPT_BUFFERSIZE, at most 10 MiB): large buffers
  // mean fewer callbacks and system calls per byte (2 GiB over loopback, 6 runs each: median
  // 3.15 s with 2 MiB, 2.6 s with 8 MiB).
  size_t receive_buffer = 8 << 20;
  // Told about each failed attempt that will be retried ("attempt 2 of 10 failed: ..."), for the
  // log; never holds a secret. May be empty.
  std::function<void(std::string_view)> on_retry;
};

// The digest computed for `algo` among `digests`, or empty if it was not asked for.
std::string DigestOf(const std::vector<Digest>& digests, HashAlgo algo);

struct FetchResult {
  ImageBuffer image;            // the whole body, exactly
  std::vector<Digest> digests;  // one per FetchRequest::hashes, in the same order
  int requests = 0;             // HTTP requests made, redirects and retries included
  int restarts = 0;             // times the download started over from byte 0
  double seconds = 0;           // wall time, back-offs included

  std::string DigestOf(HashAlgo algo) const { return byoi::DigestOf(digests, algo); }
};

// Downloads `req.url` into a new ImageBuffer of `opts.memory_budget` bytes. `progress` (may be
// empty) is called about 5 times a second from this thread with bytes received so far and the
// expected total (0 while unknown). `cancel` is polled at least once a second; a cancelled fetch
// returns within 2 s with kCancelled. On failure nothing is kept; the Status has the catalogue
// message (download failed, too big, cancelled) and the cause in `detail`.
// Memory: the image, 8 MiB of blocks for the hasher, and libcurl's receive buffer per connection.
Result<FetchResult> FetchImage(const FetchRequest& req, const FetchOptions& opts,
                               const ProgressFn& progress, const CancelToken& cancel);

struct FetchStreamResult {
  uint64_t bytes = 0;           // the body's length: every byte went to the sink
  std::vector<Digest> digests;  // one per FetchRequest::hashes, in the same order
  int requests = 0;             // HTTP requests made, redirects and retries included
  int restarts = 0;             // times the download started over before the sink had a byte
  double seconds = 0;           // wall time, back-offs included

  std::string DigestOf(HashAlgo algo) const { return byoi::DigestOf(digests, algo); }
};

// Downloads `req.url` into `sink` (byte_sink.hpp has its contract), the digests computed over the
// same bytes in the same order. `opts.memory_budget` is not used. `progress` and `cancel` as for
// FetchImage (progress counts bytes received, the window's included).
// Errors: the sink's as they are; the download's with the catalogue message (download failed,
// cancelled) and the cause in `detail`; when the image changed (or the server stopped honouring
// Range) after the sink got bytes, the download failed message and a detail that says so, since
// a stream cannot start over. On error the sink has a prefix of the body (possibly none).
// Memory, to count against the RAM budget: at most opts.window_bytes (the reassembly window)
// plus opts.connections × opts.receive_buffer (libcurl's receive buffers), plus a few KiB per
// connection.
Result<FetchStreamResult> FetchStream(const FetchRequest& req, const FetchOptions& opts,
                                      ByteSink& sink, const ProgressFn& progress,
                                      const CancelToken& cancel);

}  // namespace byoi
