// The HTTP(S) listener and its sessions (docs/api.md), on Boost.Beast with C++20 coroutines on one
// io_context. Beast's three roles: the listener accepts (at most `max_connections` at once; more
// are closed at once), a session per connection owns only I/O state, and ApiHandler answers.
// Handlers run on a small thread pool, so a slow one (DELETE waits up to 2 s for the job to stop)
// never stalls the io_context.
//
// Limits, so that no client can hold the agent: headers ≤ 16 KiB (431), then the header check (an
// unauthenticated client gets its 401 before any body is read), body ≤ 1 MiB (413, sent as soon
// as the header announces more), a deadline for each whole request — headers and body — and
// for each response write, an idle deadline between keep-alive requests, and a TLS handshake
// deadline. After an error answer (400, 413, 431) the connection is closed after a short lingering
// drain, so a client still sending its body reads the answer instead of a reset.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "agent/api/api_handler.hpp"
#include "agent/base/status.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

// Answers one request; called on the server's handler threads, so it must be thread-safe.
using RequestHandler = std::function<HttpResponse(const HttpRequest& request)>;

// Looks at a request's header before its body is read (the request's body is still empty); a
// response it returns is sent at once and the connection closed. Lets the API turn away a client
// without a valid token before it can send (or announce) a body. Called on the io_context: it must
// be quick and thread-safe.
using HeaderCheck = std::function<std::optional<HttpResponse>(const HttpRequest& header)>;

// "0.0.0.0:9999", "127.0.0.1:0", "[::1]:9999" → address and port. kInvalid otherwise.
struct ListenAddress {
  std::string address;
  uint16_t port = 0;
};
Result<ListenAddress> ParseListenAddress(std::string_view text);

struct HttpServerOptions {
  ListenAddress listen;
  std::string tls_cert, tls_key;  // PEM files; TLS (1.2 or later) when both are set
  size_t max_connections = 64;
  size_t header_limit = 16 * 1024;
  size_t body_limit = kMaxManifestBytes;
  std::chrono::milliseconds request_timeout{20000};  // a whole request, or a response write
  std::chrono::milliseconds idle_timeout{30000};     // between requests on a kept-alive connection
  size_t handler_threads = 4;
  HeaderCheck header_check;  // optional
};

class HttpServer {
 public:
  // Binds and listens on `ioc` (which the caller runs). kIo when the address cannot be bound;
  // kInvalid when the TLS files cannot be loaded.
  static Result<std::unique_ptr<HttpServer>> Start(boost::asio::io_context& ioc,
                                                   RequestHandler handler,
                                                   HttpServerOptions options);
  // REQUIRES: Stop() was called and the io_context has run until the sessions ended (or stopped).
  ~HttpServer();

  // The bound port (useful with port 0).
  uint16_t port() const;
  // Stops accepting and closes every connection. Thread-safe; returns at once (the io_context
  // finishes the sessions). Handlers already running complete, their answers are dropped.
  void Stop();

  class Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace byoi
