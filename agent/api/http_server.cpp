#include "agent/api/http_server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <map>

#include "agent/api/log_throttle.hpp"

namespace byoi {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

// After an error answer, read (and drop) what the client is still sending for at most this long and
// this much, so that it sees our answer rather than a connection reset.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerBytes = 4 << 20;

// TLS 1.2 suites with forward secrecy (ECDHE) and authenticated encryption (GCM, ChaCha20-Poly1305)
// only: Mozilla's "intermediate" list. TLS 1.3 suites all have both; OpenSSL's default set stays.
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

bool IsDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == beast::error::timeout || ec == asio::error::broken_pipe ||
         ec == ssl::error::stream_truncated;
}

// The client's address as logs show it (an IPv4-mapped IPv6 address as IPv4).
asio::ip::address Unmapped(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}

// What the per-address limit counts by: an IPv4 address, or an IPv6 /64, which one host on a LAN
// can fill with addresses at will.
std::string SourceKey(const asio::ip::address& unmapped) {
  if (unmapped.is_v4()) return unmapped.to_string();
  asio::ip::address_v6::bytes_type bytes = unmapped.to_v6().to_bytes();
  std::fill(bytes.begin() + 8, bytes.end(), 0);
  return asio::ip::address_v6(bytes).to_string() + "/64";
}

std::string MoreSince(uint64_t n) {
  return n > 1 ? fmt::format("; {} more since the last such line", n - 1) : "";
}

}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
 public:
  Impl(asio::io_context& ioc, RequestHandler handler, HttpServerOptions options)
      : handler_(std::move(handler)),
        options_(std::move(options)),
        acceptor_(asio::make_strand(ioc)),
        read_pool_(std::max<size_t>(options_.read_threads, 1)),
        write_pool_(std::max<size_t>(options_.write_threads, 1)),
        tls_(ssl::context::tls_server),
        refusal_log_(options_.refusal_log_period),
        accept_error_log_(options_.refusal_log_period) {}

  ~Impl() {
    read_pool_.join();
    write_pool_.join();
  }

  Status CheckOptions() const {
    if (options_.max_connections == 0 || options_.max_connections_per_address == 0 ||
        options_.read_threads == 0 || options_.write_threads == 0) {
      return Status::Error(Code::kInvalid,
                           "http server: connection limits and threads must be > 0");
    }
    return Status::Ok();
  }

  Status Listen() {
    beast::error_code ec;
    auto address = asio::ip::make_address(options_.listen.address, ec);
    if (ec) return Status::Error(Code::kInvalid, "listen address: " + ec.message());
    tcp::endpoint endpoint(address, options_.listen.port);
    std::string where = options_.listen.address + ":" + std::to_string(options_.listen.port);
    auto failed = [&] {
      return Status::Error(Code::kIo, "listening on " + where + ": " + ec.message());
    };
    acceptor_.open(endpoint.protocol(), ec);
    if (ec) return failed();
    acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (ec) return failed();
    acceptor_.bind(endpoint, ec);
    if (ec) return failed();
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return failed();
    port_ = acceptor_.local_endpoint(ec).port();
    return Status::Ok();
  }

  Status LoadTls() {
    if (options_.tls_cert.empty()) return Status::Ok();
    beast::error_code ec;
    tls_.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                         ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                         ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                     ec);
    if (SSL_CTX_set_min_proto_version(tls_.native_handle(), TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(tls_.native_handle(), kTls12Ciphers) != 1) {
      return Status::Error(Code::kInvalid, "TLS: OpenSSL refused the protocol or cipher settings");
    }
    tls_.use_certificate_chain_file(options_.tls_cert, ec);
    if (ec) {
      return Status::Error(Code::kInvalid,
                           "loading TLS certificate " + options_.tls_cert + ": " + ec.message());
    }
    tls_.use_private_key_file(options_.tls_key, ssl::context::pem, ec);
    if (ec) {
      return Status::Error(Code::kInvalid,
                           "loading TLS key " + options_.tls_key + ": " + ec.message());
    }
    use_tls_ = true;
    return Status::Ok();
  }

  void StartAccepting() {
    asio::co_spawn(acceptor_.get_executor(), Accept(shared_from_this()), asio::detached);
  }

  void Stop() {
    asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      beast::error_code ec;
      self->acceptor_.close(ec);
      for (auto& [serial, connection] : self->connections_) connection->stream.close();
    });
  }

  uint16_t port() const { return port_; }

 private:
  // One accepted connection. Owned by its session and, while it counts against the limits, by the
  // registry; every field but `stream` is used on the acceptor's strand only.
  struct Connection {
    explicit Connection(tcp::socket socket) : stream(std::move(socket)) {}
    beast::tcp_stream stream;
    uint64_t serial = 0;  // accept order
    std::string source;   // SourceKey
    std::string peer;     // the address, for the header check and the logs
    Clock::time_point accepted_at;
    bool authenticated = false;  // a request on it carried the right token
    bool evicted = false;        // closed to make room; no longer counted
  };

  // Removes a session's connection from the registry when the session ends (unless it was evicted
  // before). Lives in the session's coroutine frame; every session runs on the acceptor's strand.
  class Registration {
   public:
    Registration(Impl& server, uint64_t serial) : server_(server), serial_(serial) {}
    ~Registration() { server_.Forget(serial_); }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

   private:
    Impl& server_;
    uint64_t serial_;
  };

  // What one source holds.
  struct SourceCount {
    size_t open = 0;
    size_t unauthenticated = 0;
  };

  void Forget(uint64_t serial) {
    auto it = connections_.find(serial);
    if (it == connections_.end()) return;
    auto source = per_source_.find(it->second->source);
    --source->second.open;
    if (!it->second->authenticated) --source->second.unauthenticated;
    if (source->second.open == 0) per_source_.erase(source);
    connections_.erase(it);
  }

  void Authenticated(Connection& connection) {
    if (connection.authenticated || connection.evicted) return;
    connection.authenticated = true;
    --per_source_[connection.source].unauthenticated;
  }

  // Decides on a connection from `source` before its session starts: nullopt to accept it, else
  // why it is refused. When every connection is taken, one that has not authenticated is closed to
  // make room: the oldest of the source holding the most of them. An attacker's idle connections go
  // before a client that just connected, and one with many addresses still closes its own first.
  std::optional<std::string> Admit(const std::string& source, const std::string& peer) {
    if (auto it = per_source_.find(source);
        it != per_source_.end() && it->second.open >= options_.max_connections_per_address) {
      return fmt::format("{} connections open from that address", it->second.open);
    }
    if (connections_.size() < options_.max_connections) return std::nullopt;
    size_t most = 0;
    for (const auto& [key, count] : per_source_) most = std::max(most, count.unauthenticated);
    if (most == 0) {
      return fmt::format("all {} connections are authenticated", connections_.size());
    }
    for (const auto& [serial, connection] : connections_) {  // in accept order
      if (connection->authenticated || per_source_[connection->source].unauthenticated < most) {
        continue;
      }
      std::shared_ptr<Connection> victim = connection;
      if (uint64_t n = refusal_log_.Record()) {
        auto age = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() -
                                                                         victim->accepted_at);
        spdlog::warn(
            "http: {} connections open: closed one from {} that had not authenticated in {} ms, "
            "to make room for one from {}{}",
            connections_.size(), victim->peer, age.count(), peer, MoreSince(n));
      }
      Forget(victim->serial);
      victim->evicted = true;
      victim->stream.close();
      return std::nullopt;
    }
    return std::nullopt;  // not reached: `most` counts a connection the loop finds
  }

  static asio::awaitable<void> Accept(std::shared_ptr<Impl> self) {
    for (;;) {
      auto [ec, socket] = co_await self->acceptor_.async_accept(kTuple);
      if (self->stopping_ || ec == asio::error::operation_aborted) co_return;
      if (ec) {
        // EMFILE and friends: wait a little instead of spinning; the connection stays queued.
        if (uint64_t n = self->accept_error_log_.Record()) {
          spdlog::warn("http: accept: {}{}", ec.message(), MoreSince(n));
        }
        asio::steady_timer timer(self->acceptor_.get_executor(), std::chrono::milliseconds(100));
        co_await timer.async_wait(kTuple);
        continue;
      }
      beast::error_code pec;
      tcp::endpoint remote = socket.remote_endpoint(pec);
      if (pec) continue;  // gone already; the socket closes here
      asio::ip::address address = Unmapped(remote.address());
      std::string peer = address.to_string();
      std::string source = SourceKey(address);
      if (std::optional<std::string> why = self->Admit(source, peer)) {
        if (uint64_t n = self->refusal_log_.Record()) {
          spdlog::warn("http: refused a connection from {}: {}{}", peer, *why, MoreSince(n));
        }
        socket.close(pec);
        continue;
      }
      auto connection = std::make_shared<Connection>(std::move(socket));
      connection->serial = self->next_serial_++;
      connection->source = std::move(source);
      connection->peer = std::move(peer);
      connection->accepted_at = Clock::now();
      self->connections_.emplace(connection->serial, connection);
      SourceCount& count = self->per_source_[connection->source];
      ++count.open;
      ++count.unauthenticated;
      // The session runs on the acceptor's strand too: one strand for the whole server keeps the
      // registry single-threaded while the io_context itself may have any number of threads.
      asio::co_spawn(self->acceptor_.get_executor(), Session(self, std::move(connection)),
                     asio::detached);
    }
  }

  // Until the first request head is complete: the shorter of the head and request deadlines.
  Clock::time_point HeadDeadline(const Connection& connection) const {
    return connection.accepted_at + std::min(options_.head_timeout, options_.request_timeout);
  }

  static asio::awaitable<void> Session(std::shared_ptr<Impl> self,
                                       std::shared_ptr<Connection> connection) {
    Registration registration(*self, connection->serial);
    beast::tcp_stream& plain = connection->stream;
    if (!self->use_tls_) {
      co_await self->Serve(plain, *connection);
      beast::error_code ec;
      plain.socket().shutdown(tcp::socket::shutdown_send, ec);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream&> stream(plain, self->tls_);
    plain.expires_at(self->HeadDeadline(*connection));
    auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, kTuple);
    if (ec) {
      spdlog::debug("http: TLS handshake with {}: {}", connection->peer, ec.message());
      co_return;
    }
    co_await self->Serve(stream, *connection);
    if (connection->evicted) co_return;
    plain.expires_after(std::chrono::seconds(2));
    co_await stream.async_shutdown(kTuple);
  }

  // Answers requests on one connection until it closes, fails, times out or is evicted.
  template <class Stream>
  asio::awaitable<void> Serve(Stream& stream, Connection& connection) {
    beast::tcp_stream& lowest = beast::get_lowest_layer(stream);
    beast::flat_buffer buffer;
    bool first = true;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<uint32_t>(options_.header_limit));
      // The body limit is applied after the header check, so that a client without a token gets
      // 401 whatever length it announces.
      parser.body_limit(boost::none);

      // The first head is due soon after the accept; a kept-alive connection then waits for its
      // next request up to the idle deadline, or the head deadline if it has not authenticated.
      // The request deadline then covers the rest of the request, so a client trickling bytes is
      // cut off.
      if (first) {
        lowest.expires_at(HeadDeadline(connection));
      } else {
        lowest.expires_after(connection.authenticated
                                 ? options_.idle_timeout
                                 : std::min(options_.idle_timeout, options_.head_timeout));
      }
      first = false;
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, kTuple);
      if (connection.evicted) co_return;
      if (!ec) {
        HeaderVerdict verdict;
        if (options_.header_check) {
          verdict = options_.header_check(parser.get(), connection.peer);
        } else {
          verdict.authenticated = true;
        }
        if (verdict.authenticated) Authenticated(connection);
        if (verdict.refusal) {
          HttpResponse& early = *verdict.refusal;
          early.keep_alive(false);
          early.prepare_payload();
          lowest.expires_after(options_.request_timeout);
          auto [wec, wn] = co_await http::async_write(stream, early, kTuple);
          if (!wec && !connection.evicted) co_await Linger(lowest);
          co_return;
        }
      }
      if (!ec) {
        if (parser.content_length().value_or(0) > options_.body_limit) {
          ec = http::error::body_limit;
        } else {
          parser.body_limit(options_.body_limit);  // chunked bodies are counted as they arrive
        }
      }
      if (!ec) {
        lowest.expires_after(options_.request_timeout);
        auto expect = parser.get().find(http::field::expect);
        if (expect != parser.get().end() && beast::iequals(expect->value(), "100-continue")) {
          http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
          std::tie(ec, n) = co_await http::async_write(stream, go_on, kTuple);
        }
        if (!ec && !parser.is_done()) {
          std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, kTuple);
        }
      }
      if (connection.evicted) co_return;
      if (ec) {
        if (IsDisconnect(ec) || stopping_) co_return;
        unsigned status = 400;
        std::string_view message = "Bad request.";
        if (ec == http::error::body_limit) {
          status = 413;
          message = "Request body larger than 1 MiB.";
        } else if (ec == http::error::header_limit) {
          status = 431;
          message = "Request headers too large.";
        }
        spdlog::debug("http: bad request from {}: {}", connection.peer, ec.message());
        HttpResponse res = JsonError(status, message);
        res.keep_alive(false);
        res.prepare_payload();
        lowest.expires_after(options_.request_timeout);
        auto [wec, wn] = co_await http::async_write(stream, res, kTuple);
        if (!wec && !connection.evicted) co_await Linger(lowest);
        co_return;
      }

      HttpRequest request = parser.release();
      // Reads answer from memory; POST parses up to 1 MiB and DELETE waits for a job: they have a
      // pool of their own, so /healthz and status calls never queue behind them.
      bool reads = request.method() == http::verb::get || request.method() == http::verb::head;
      asio::thread_pool& pool = reads ? read_pool_ : write_pool_;
      HttpResponse response = co_await asio::co_spawn(
          pool.get_executor(),
          [this, &request]() -> asio::awaitable<HttpResponse> { co_return handler_(request); },
          asio::use_awaitable);
      if (stopping_ || connection.evicted) co_return;

      lowest.expires_after(options_.request_timeout);
      auto [wec, wn] = co_await http::async_write(stream, response, kTuple);
      if (wec || !response.keep_alive()) co_return;
    }
  }

  asio::awaitable<void> Linger(beast::tcp_stream& lowest) {
    beast::error_code ec;
    lowest.socket().shutdown(tcp::socket::shutdown_send, ec);
    lowest.expires_after(kLingerTime);
    char discard[16384];
    for (size_t total = 0; total < kLingerBytes;) {
      auto [rec, n] = co_await lowest.async_read_some(asio::buffer(discard), kTuple);
      if (rec) break;
      total += n;
    }
  }

  const RequestHandler handler_;
  const HttpServerOptions options_;
  tcp::acceptor acceptor_;
  asio::thread_pool read_pool_, write_pool_;
  ssl::context tls_;
  bool use_tls_ = false;
  uint16_t port_ = 0;
  LogThrottle refusal_log_, accept_error_log_;
  // On the strand: the connections that count against the limits, by accept order, and how many
  // each source holds.
  bool stopping_ = false;
  uint64_t next_serial_ = 0;
  std::map<uint64_t, std::shared_ptr<Connection>> connections_;
  std::map<std::string, SourceCount> per_source_;
};

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  auto bad = [&] {
    return Status::Error(Code::kInvalid,
                         "listen: expected ADDR:PORT such as 0.0.0.0:9999 or [::]:9999, or off");
  };
  ListenAddress out;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad();
    }
    out.address = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
    in6_addr a6;
    if (inet_pton(AF_INET6, out.address.c_str(), &a6) != 1) return bad();
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad();
    out.address = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    in_addr a4;
    if (inet_pton(AF_INET, out.address.c_str(), &a4) != 1) return bad();
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value > 65535) {
    return bad();
  }
  out.port = static_cast<uint16_t>(value);
  return out;
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(asio::io_context& ioc, RequestHandler handler,
                                                      HttpServerOptions options) {
  auto impl = std::make_shared<Impl>(ioc, std::move(handler), std::move(options));
  BYOI_RETURN_IF_ERROR(impl->CheckOptions());
  BYOI_RETURN_IF_ERROR(impl->LoadTls());
  BYOI_RETURN_IF_ERROR(impl->Listen());
  impl->StartAccepting();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() = default;

uint16_t HttpServer::port() const { return impl_->port(); }

void HttpServer::Stop() { impl_->Stop(); }

}  // namespace byoi
