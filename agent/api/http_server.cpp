#include "agent/api/http_server.hpp"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>

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
#include <set>

namespace byoi {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

// After an error answer, read (and drop) what the client is still sending for at most this long and
// this much, so that it sees our answer rather than a connection reset.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerBytes = 4 << 20;

bool IsDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == beast::error::timeout || ec == asio::error::broken_pipe ||
         ec == ssl::error::stream_truncated;
}

}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
 public:
  Impl(asio::io_context& ioc, RequestHandler handler, HttpServerOptions options)
      : handler_(std::move(handler)),
        options_(std::move(options)),
        acceptor_(asio::make_strand(ioc)),
        pool_(options_.handler_threads),
        tls_(ssl::context::tls_server) {}

  ~Impl() { pool_.join(); }

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
      for (beast::tcp_stream* s : self->sessions_) s->close();
    });
  }

  uint16_t port() const { return port_; }

 private:
  // Keeps the count of live sessions and their sockets, so that Stop() can close them. Lives in the
  // session's coroutine frame; every session runs on the acceptor's strand.
  class Registration {
   public:
    Registration(Impl& server, beast::tcp_stream& stream) : server_(server), stream_(stream) {
      server_.sessions_.insert(&stream_);
    }
    ~Registration() { server_.sessions_.erase(&stream_); }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

   private:
    Impl& server_;
    beast::tcp_stream& stream_;
  };

  static asio::awaitable<void> Accept(std::shared_ptr<Impl> self) {
    for (;;) {
      auto [ec, socket] = co_await self->acceptor_.async_accept(kTuple);
      if (self->stopping_ || ec == asio::error::operation_aborted) co_return;
      if (ec) {
        // EMFILE and friends: wait a little instead of spinning.
        spdlog::warn("http: accept: {}", ec.message());
        asio::steady_timer timer(self->acceptor_.get_executor(), std::chrono::milliseconds(100));
        co_await timer.async_wait(kTuple);
        continue;
      }
      if (self->sessions_.size() >= self->options_.max_connections) {
        spdlog::warn("http: {} connections open; refusing one more", self->sessions_.size());
        socket.close(ec);
        continue;
      }
      // The session runs on the acceptor's strand too: one strand for the whole server keeps the
      // session registry single-threaded while the io_context itself may have any number of
      // threads.
      asio::co_spawn(self->acceptor_.get_executor(), Session(self, std::move(socket)),
                     asio::detached);
    }
  }

  static asio::awaitable<void> Session(std::shared_ptr<Impl> self, tcp::socket socket) {
    beast::tcp_stream plain(std::move(socket));
    Registration registration(*self, plain);
    if (!self->use_tls_) {
      co_await self->Serve(plain);
      beast::error_code ec;
      plain.socket().shutdown(tcp::socket::shutdown_send, ec);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream&> stream(plain, self->tls_);
    plain.expires_after(self->options_.request_timeout);
    auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, kTuple);
    if (ec) {
      spdlog::debug("http: TLS handshake: {}", ec.message());
      co_return;
    }
    co_await self->Serve(stream);
    plain.expires_after(std::chrono::seconds(2));
    co_await stream.async_shutdown(kTuple);
  }

  // Answers requests on one connection until it closes, fails or times out.
  template <class Stream>
  asio::awaitable<void> Serve(Stream& stream) {
    beast::tcp_stream& lowest = beast::get_lowest_layer(stream);
    beast::flat_buffer buffer;
    bool first = true;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<uint32_t>(options_.header_limit));
      // The body limit is applied after the header check, so that a client without a token gets
      // 401 whatever length it announces.
      parser.body_limit(boost::none);

      // The idle deadline covers waiting for a kept-alive connection's next request; the request
      // deadline then covers the whole request, so a client trickling bytes is cut off.
      lowest.expires_after(first ? options_.request_timeout : options_.idle_timeout);
      first = false;
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, kTuple);
      if (!ec && options_.header_check) {
        if (std::optional<HttpResponse> early = options_.header_check(parser.get())) {
          early->keep_alive(false);
          early->prepare_payload();
          lowest.expires_after(options_.request_timeout);
          auto [wec, wn] = co_await http::async_write(stream, *early, kTuple);
          if (!wec) co_await Linger(lowest);
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
        spdlog::debug("http: bad request: {}", ec.message());
        HttpResponse res = JsonError(status, message);
        res.keep_alive(false);
        res.prepare_payload();
        lowest.expires_after(options_.request_timeout);
        auto [wec, wn] = co_await http::async_write(stream, res, kTuple);
        if (!wec) co_await Linger(lowest);
        co_return;
      }

      HttpRequest request = parser.release();
      HttpResponse response = co_await asio::co_spawn(
          pool_.get_executor(),
          [this, &request]() -> asio::awaitable<HttpResponse> { co_return handler_(request); },
          asio::use_awaitable);
      if (stopping_) co_return;

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
  asio::thread_pool pool_;
  ssl::context tls_;
  bool use_tls_ = false;
  uint16_t port_ = 0;
  bool stopping_ = false;                  // on the strand
  std::set<beast::tcp_stream*> sessions_;  // on the strand
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
