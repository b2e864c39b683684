// The HTTP(S) listener and its sessions (docs/api.md), on Boost.Beast with C++20 coroutines on one
// io_context. Beast's three roles: the listener accepts, a session per connection owns only I/O
// state, and ApiHandler answers. Handlers run on two small thread pools, one for GET and HEAD and
// one for every other method, so that slow POSTs and DELETEs (a manifest to parse, a job to wait
// for up to 2 s) never delay a status call or /healthz, and no handler stalls the io_context.
//
// Limits, so that no client can hold the agent: headers ≤ 16 KiB (431), then the header check (an
// unauthenticated client gets its 401 before any body is read), body ≤ 1 MiB (413, sent as soon
// as the header announces more), a deadline for each whole request — headers and body — and
// for each response write, an idle deadline between keep-alive requests, and a TLS handshake
// deadline. After an error answer (400, 413, 431) the connection is closed after a short lingering
// drain, so a client still sending its body reads the answer instead of a reset.
//
// Connections, so that nobody without the token can shut the API out: a connection has
// `head_timeout` from its accept to a complete request head (the TLS handshake included); each
// source address (an IPv6 /64) may hold `max_connections_per_address`; when all
// `max_connections` are taken, a connection that has not authenticated is closed to make room: the
// oldest of the address holding the most such connections (never one whose request carried the
// right token; when there is none, the new connection is refused). Refusals, closings and accept
// errors are logged at most once per `refusal_log_period`, with a count.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "agent/api/api_handler.hpp"
#include "agent/base/status.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

// Answers one request; called on the server's handler threads, so it must be thread-safe.
using RequestHandler = std::function<HttpResponse(const HttpRequest& request)>;

// Looks at a request's header before its body is read (the request's body is still empty), with
// the client's address as text. A refusal it returns is sent at once and the connection closed;
// `authenticated` protects the connection from being closed to make room for others. Lets the API
// turn away a client without a valid token before it can send (or announce) a body. Called on the
// io_context: it must be quick and thread-safe.
using HeaderCheck = std::function<HeaderVerdict(const HttpRequest& header, std::string_view peer)>;

// "0.0.0.0:9999", "127.0.0.1:0", "[::1]:9999" → address and port. kInvalid otherwise.
struct ListenAddress {
  std::string address;
  uint16_t port = 0;
};
Result<ListenAddress> ParseListenAddress(std::string_view text);

struct HttpServerOptions {
  ListenAddress listen;
  // PEM files; TLS when both are set: 1.3, or 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305.
  std::string tls_cert, tls_key;
  size_t max_connections = 64;  // open at once (the daemon fits it to its descriptor limit)
  size_t max_connections_per_address = 16;  // per IPv4 address or IPv6 /64
  size_t header_limit = 16 * 1024;
  size_t body_limit = kMaxManifestBytes;
  // From accept to a complete first request head, the TLS handshake included; and, for a
  // connection that has not authenticated, between requests (with idle_timeout, the shorter).
  std::chrono::milliseconds head_timeout{5000};
  std::chrono::milliseconds request_timeout{20000};  // a whole request, or a response write
  std::chrono::milliseconds idle_timeout{30000};     // between requests on a kept-alive connection
  size_t read_threads = 2;                           // handlers of GET and HEAD
  size_t write_threads = 2;                          // handlers of every other method
  std::chrono::milliseconds refusal_log_period{10000};
  // Optional. Without one, a connection counts as authenticated once it sent a complete head.
  HeaderCheck header_check;
};

class HttpServer {
 public:
  // Binds and listens on `ioc` (which the caller runs). kIo when the address cannot be bound;
  // kInvalid when the TLS files cannot be loaded or a limit is 0.
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
