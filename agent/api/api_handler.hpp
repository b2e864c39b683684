// The HTTP API's request handler (docs/api.md), Beast style: a pure request -> response function
// with no socket in sight, so every route, status code and body is unit-tested without a network.
// The session (http_server.hpp) owns the I/O, the size limits and the time-outs.
//
//   POST /v1/bringYourOwnImage    202 + status | 400 {"message"} | 409 {"message"} (job doing)
//   GET /v1/bringYourOwnImage     200 + status | 404 {"message"} (no job)
//   DELETE /v1/bringYourOwnImage  cancels a doing job and clears it (docs/api.md): 204 once it
//                                 stopped (within 2 s) and was cleared; 202 + status (doing)
//                                 while it is still stopping; a finished job is cleared, 204
//   GET, HEAD /healthz            200 "ok" (the only route without a token); HEAD without the body
//   GET /v1/disks                 200 + inventory
//   GET /metrics                  200 Prometheus text
// After a DELETE answered 204, GET answers 404 and the state file is gone. After a 202, GET
// answers the job's status (still doing) until the runner returns, and 404 from then on: the job
// is cleared the moment it stops, so a restart never brings it back either. A POST meanwhile is
// 409, as for any doing job.
//
// Every other route needs `Authorization: Bearer <token>`: 401 with an empty body otherwise (before
// any routing, so an unauthenticated client learns nothing). Each refusal is counted
// (byoi_api_unauthorized_total) and logged with the client's address, never with the token it
// gave, at most one line per 10 s. Unknown paths 404, wrong methods 405 with an Allow header; both
// with a JSON {"message"} body. A response to HEAD never has a body.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/value.hpp>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "agent/api/log_throttle.hpp"
#include "agent/api/metrics.hpp"
#include "agent/base/status.hpp"
#include "agent/job/job_control.hpp"

namespace byoi {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;

// Produces the disk inventory for GET /v1/disks (the seam to agent/disk/).
using DisksFn = std::function<Result<boost::json::value>()>;

// What the server learns from a request's header before it reads the body (HeaderCheck).
struct HeaderVerdict {
  // When set: the answer, sent at once; the connection is then closed.
  std::optional<HttpResponse> refusal;
  // The request carried the right token. Its connection is never closed to make room for others.
  bool authenticated = false;
};

class ApiHandler {
 public:
  // Borrows `jobs` and `metrics`, which must outlive the handler. `token` must not be empty.
  ApiHandler(JobControl& jobs, Metrics& metrics, DisksFn disks, std::string token);

  // Answers one request. Thread-safe. The response's keep-alive follows the request's.
  HttpResponse Handle(const HttpRequest& request) const;

  // The 401 for a request (its header is enough) that needs a token and lacks the right one;
  // nullopt when the request may go on. A refusal is counted and logged (rate-limited) with
  // `peer`, the client's address ("" when unknown). Thread-safe.
  std::optional<HttpResponse> Unauthorized(const HttpRequest& request,
                                           std::string_view peer = {}) const;

  // Unauthorized() and whether the token was right, for the HTTP server to call before it reads a
  // body (HeaderCheck). Thread-safe.
  HeaderVerdict CheckHeader(const HttpRequest& header, std::string_view peer) const;

  // Called on a handler thread whenever GET /v1/bringYourOwnImage answers with a status that is
  // no longer doing (FinalStatusGate). REQUIRES: set before the server starts.
  void OnFinalStatusServed(std::function<void()> callback) { final_served_ = std::move(callback); }

 private:
  HttpResponse Route(const HttpRequest& request) const;
  // The 401, counted and logged.
  HttpResponse Refuse(const HttpRequest& request, std::string_view peer, bool gave_token) const;
  HttpResponse Deployment(const HttpRequest& request) const;

  JobControl& jobs_;
  Metrics& metrics_;
  DisksFn disks_;
  std::string token_;
  std::function<void()> final_served_;
  mutable LogThrottle unauthorized_log_;
};

// True when `authorization` is "Bearer <token>" (scheme case-insensitive). Compares in constant
// time with respect to the token's content and length (SHA-256 of both, then CRYPTO_memcmp).
bool BearerTokenMatches(std::string_view authorization, std::string_view token);

// A response with a JSON body {"message": message}.
HttpResponse JsonError(unsigned status, std::string_view message, unsigned version = 11);

}  // namespace byoi
