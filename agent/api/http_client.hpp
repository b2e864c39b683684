// A small blocking HTTP(S) client on libcurl, for the backend poller (docs/backend.md) and
// `byoi-agent status`. One HttpClient per thread; it reuses its connection between requests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"
#include "agent/fetch/curl_handles.hpp"

namespace byoi {

struct HttpResult {
  long status = 0;  // the HTTP status code
  std::string body;
};

class HttpClient {
 public:
  // `abort`, when given, is polled during transfers: once true, a transfer in progress fails at
  // once with kCancelled. It must outlive the client. `ca_bundle`: a PEM file of the certificate
  // authorities to trust for https instead of the system's (the agent's --ca-bundle); empty: the
  // system's.
  explicit HttpClient(const std::atomic<bool>* abort = nullptr, std::string ca_bundle = {});
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends `method` to `url` with `body` (sent as application/json when not empty) and, when
  // `bearer_token` is not empty, `Authorization: Bearer <token>`. Any HTTP status is a success
  // here; kIo when the transfer fails, kTooBig when the answer exceeds `max_body` bytes. Error
  // details name the URL without its userinfo and never the token.
  Result<HttpResult> Send(std::string_view method, const std::string& url, std::string_view body,
                          std::string_view bearer_token,
                          std::chrono::milliseconds timeout = std::chrono::seconds(30),
                          size_t max_body = 1 << 20);

 private:
  CurlPtr curl_;
  const std::atomic<bool>* abort_;
  const std::string ca_bundle_;
};

// Percent-encodes `text` for use as one URL path segment (RFC 3986 unreserved characters kept).
std::string EscapePathSegment(std::string_view text);

}  // namespace byoi
