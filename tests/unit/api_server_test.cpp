// The HTTP listener and sessions on a real socket (127.0.0.1, ephemeral port): limits, time-outs,
// keep-alive, 100-continue, the connection cap, handlers off the io_context, and shutdown.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <thread>

#include "agent/api/api_handler.hpp"
#include "agent/api/http_server.hpp"
#include "agent/base/fd.hpp"

namespace byoi {
namespace {

namespace http = boost::beast::http;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A server on its own io_context thread, answering with `handler`.
class TestServer {
 public:
  TestServer(RequestHandler handler, HttpServerOptions options = {}) {
    options.listen = {"127.0.0.1", 0};
    Result<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(ioc_, std::move(handler), options);
    EXPECT_TRUE(started.ok()) << started.status().ToString();
    server_ = std::move(*started);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~TestServer() { Stop(); }
  void Stop() {
    if (!thread_.joinable()) return;
    server_->Stop();
    thread_.join();
  }
  uint16_t port() const { return server_->port(); }

 private:
  boost::asio::io_context ioc_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

HttpResponse Echo(const HttpRequest& req) {
  HttpResponse res{http::status::ok, req.version()};
  if (req.target() == "/slow") std::this_thread::sleep_for(1500ms);
  res.body() = std::string(req.target()) + " " + std::to_string(req.body().size());
  res.keep_alive(req.keep_alive());
  res.prepare_payload();
  return res;
}

UniqueFd Connect(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads one response (headers + Content-Length body); "" on EOF or after `timeout`.
std::string ReadResponse(int fd, std::chrono::milliseconds timeout = 5000ms) {
  std::string in;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    size_t end = in.find("\r\n\r\n");
    if (end != std::string::npos) {
      size_t length = 0;
      if (size_t cl = in.find("Content-Length: "); cl != std::string::npos && cl < end) {
        length = std::stoul(in.substr(cl + 16));
      }
      if (in.size() >= end + 4 + length) return in.substr(0, end + 4 + length);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
    char buf[65536];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return "";
    in.append(buf, static_cast<size_t>(n));
  }
}

// True when the server closed the connection (EOF or reset) within `timeout`.
bool ClosedWithin(int fd, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    if (::recv(fd, buf, sizeof buf, 0) <= 0) return true;
  }
}

std::string Get(const std::string& target, const char* extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n";
}

TEST(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  TestServer server(Echo);
  UniqueFd fd = Connect(server.port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(SendAll(fd.get(), Get("/a" + std::to_string(i))));
    std::string res = ReadResponse(fd.get());
    EXPECT_EQ(res.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << res;
    EXPECT_NE(res.find("\r\n\r\n/a" + std::to_string(i) + " 0"), std::string::npos) << res;
  }
  ASSERT_TRUE(SendAll(fd.get(), Get("/last", "Connection: close\r\n")));
  EXPECT_NE(ReadResponse(fd.get()).find("/last 0"), std::string::npos);
  EXPECT_TRUE(ClosedWithin(fd.get(), 2000ms));
}

TEST(HttpServerTest, BodyOver1MiBIs413EvenWhileTheClientKeepsSending) {
  TestServer server(Echo);
  UniqueFd fd = Connect(server.port());
  std::string body((1 << 20) + 1, 'x');
  std::string head = "POST /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n";
  std::thread sender([&] { SendAll(fd.get(), head + body); });
  std::string res = ReadResponse(fd.get());
  sender.join();
  EXPECT_EQ(res.rfind("HTTP/1.1 413 ", 0), 0u) << res;
  EXPECT_NE(res.find("{\"message\":\"Request body larger than 1 MiB.\"}"), std::string::npos);
  EXPECT_TRUE(ClosedWithin(fd.get(), 3000ms));
}

// A header check standing in for the API's token check: requests without `X-Ok` are refused.
std::optional<HttpResponse> NeedsXOk(const HttpRequest& header) {
  if (header.find("X-Ok") != header.end()) return std::nullopt;
  HttpResponse res{http::status::unauthorized, header.version()};
  return res;
}

TEST(HttpServerTest, HeaderCheckAnswersBeforeAnyBodyIsReadOrLimited) {
  std::atomic<int> handled{0};
  HttpServerOptions options;
  options.header_check = NeedsXOk;
  TestServer server(
      [&](const HttpRequest& req) {
        ++handled;
        return Echo(req);
      },
      options);
  // A client without the header announces 10 GiB: 401 at once, never 413, nothing buffered, and
  // the connection is closed.
  UniqueFd fd = Connect(server.port());
  ASSERT_TRUE(SendAll(fd.get(),
                      "POST /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: 10737418240\r\n\r\n{"));
  std::string res = ReadResponse(fd.get());
  EXPECT_EQ(res.rfind("HTTP/1.1 401 ", 0), 0u) << res;
  EXPECT_TRUE(ClosedWithin(fd.get(), 3000ms));
  EXPECT_EQ(handled, 0);
  // With the header, the body limit applies as before...
  fd = Connect(server.port());
  ASSERT_TRUE(SendAll(fd.get(),
                      "POST /x HTTP/1.1\r\nHost: x\r\nX-Ok: 1\r\n"
                      "Content-Length: 10737418240\r\n\r\n{"));
  res = ReadResponse(fd.get());
  EXPECT_EQ(res.rfind("HTTP/1.1 413 ", 0), 0u) << res;
  // ...and a request within it reaches the handler.
  fd = Connect(server.port());
  ASSERT_TRUE(SendAll(fd.get(),
                      "POST /x HTTP/1.1\r\nHost: x\r\nX-Ok: 1\r\n"
                      "Content-Length: 2\r\n\r\n{}"));
  EXPECT_NE(ReadResponse(fd.get()).find("/x 2"), std::string::npos);
  EXPECT_EQ(handled, 1);
}

TEST(HttpServerTest, ExactlyOneMiBIsAccepted) {
  TestServer server(Echo);
  UniqueFd fd = Connect(server.port());
  std::string body(1 << 20, 'x');
  std::thread sender([&] {
    SendAll(fd.get(), "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body);
  });
  std::string res = ReadResponse(fd.get());
  sender.join();
  EXPECT_NE(res.find("/x 1048576"), std::string::npos) << res.substr(0, 200);
}

TEST(HttpServerTest, ChunkedBodyOver1MiBIs413) {
  TestServer server(Echo);
  UniqueFd fd = Connect(server.port());
  std::thread sender([&] {
    if (!SendAll(fd.get(), "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"))
      return;
    std::string chunk = "10000\r\n" + std::string(0x10000, 'y') + "\r\n";
    for (int i = 0; i < 20; ++i) {
      if (!SendAll(fd.get(), chunk)) return;
    }
    SendAll(fd.get(), "0\r\n\r\n");
  });
  std::string res = ReadResponse(fd.get());
  sender.join();
  EXPECT_EQ(res.rfind("HTTP/1.1 413 ", 0), 0u) << res;
}

TEST(HttpServerTest, HugeHeadersAre431AndGarbageIs400) {
  TestServer server(Echo);
  {
    UniqueFd fd = Connect(server.port());
    std::string big = "X-Big: " + std::string(20000, 'h') + "\r\n";
    SendAll(fd.get(), Get("/", big.c_str()));
    std::string res = ReadResponse(fd.get());
    EXPECT_EQ(res.rfind("HTTP/1.1 431 ", 0), 0u) << res.substr(0, 100);
  }
  {
    UniqueFd fd = Connect(server.port());
    SendAll(fd.get(), "NOT HTTP AT ALL\r\n\r\n");
    std::string res = ReadResponse(fd.get());
    EXPECT_EQ(res.rfind("HTTP/1.1 400 ", 0), 0u) << res;
    EXPECT_NE(res.find("{\"message\":\"Bad request.\"}"), std::string::npos);
  }
}

TEST(HttpServerTest, ExpectContinueGetsA100BeforeTheBody) {
  TestServer server(Echo);
  UniqueFd fd = Connect(server.port());
  SendAll(fd.get(),
          "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  std::string cont = ReadResponse(fd.get(), 2000ms);
  EXPECT_EQ(cont, "HTTP/1.1 100 Continue\r\n\r\n");
  SendAll(fd.get(), "abc");
  EXPECT_NE(ReadResponse(fd.get()).find("/e 3"), std::string::npos);
}

TEST(HttpServerTest, ASlowClientDoesNotBlockOthersAndIsCutOffAtTheDeadline) {
  HttpServerOptions options;
  options.request_timeout = 1500ms;
  TestServer server(Echo, options);
  UniqueFd slow = Connect(server.port());
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    std::string req = Get("/slow-client");
    for (char c : req) {
      if (stop || !SendAll(slow.get(), std::string_view(&c, 1))) return;
      std::this_thread::sleep_for(100ms);
    }
  });
  for (int i = 0; i < 5; ++i) {
    auto start = Clock::now();
    UniqueFd fd = Connect(server.port());
    SendAll(fd.get(), Get("/fast"));
    EXPECT_NE(ReadResponse(fd.get()).find("/fast 0"), std::string::npos);
    EXPECT_LT(Clock::now() - start, 500ms);
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(ClosedWithin(slow.get(), 3000ms));
  stop = true;
  trickle.join();
}

TEST(HttpServerTest, AnIdleKeptAliveConnectionIsClosed) {
  HttpServerOptions options;
  options.idle_timeout = 500ms;
  TestServer server(Echo, options);
  UniqueFd fd = Connect(server.port());
  SendAll(fd.get(), Get("/a"));
  EXPECT_NE(ReadResponse(fd.get()).find("/a 0"), std::string::npos);
  auto start = Clock::now();
  EXPECT_TRUE(ClosedWithin(fd.get(), 3000ms));
  EXPECT_GT(Clock::now() - start, 300ms);
}

TEST(HttpServerTest, ASlowHandlerDoesNotStallTheIoContext) {
  TestServer server(Echo);
  UniqueFd slow = Connect(server.port());
  SendAll(slow.get(), Get("/slow"));  // its handler sleeps 1.5 s, like DELETE waiting for a job
  std::this_thread::sleep_for(100ms);
  auto start = Clock::now();
  UniqueFd fd = Connect(server.port());
  SendAll(fd.get(), Get("/fast"));
  EXPECT_NE(ReadResponse(fd.get()).find("/fast 0"), std::string::npos);
  EXPECT_LT(Clock::now() - start, 500ms);
  EXPECT_NE(ReadResponse(slow.get()).find("/slow 0"), std::string::npos);
}

TEST(HttpServerTest, ConnectionsBeyondTheCapAreClosedAtOnce) {
  HttpServerOptions options;
  options.max_connections = 2;
  TestServer server(Echo, options);
  UniqueFd a = Connect(server.port());
  UniqueFd b = Connect(server.port());
  SendAll(a.get(), Get("/a"));  // make sure both are accepted before the third
  EXPECT_NE(ReadResponse(a.get()).find("/a 0"), std::string::npos);
  SendAll(b.get(), Get("/b"));
  EXPECT_NE(ReadResponse(b.get()).find("/b 0"), std::string::npos);
  UniqueFd c = Connect(server.port());
  EXPECT_TRUE(ClosedWithin(c.get(), 2000ms));
  a.Reset();
  std::this_thread::sleep_for(200ms);
  UniqueFd d = Connect(server.port());
  SendAll(d.get(), Get("/d"));
  EXPECT_NE(ReadResponse(d.get()).find("/d 0"), std::string::npos);
}

TEST(HttpServerTest, StopClosesIdleConnectionsAndReturns) {
  auto server = std::make_unique<TestServer>(Echo);
  UniqueFd fd = Connect(server->port());
  SendAll(fd.get(), Get("/a"));
  EXPECT_NE(ReadResponse(fd.get()).find("/a 0"), std::string::npos);
  auto start = Clock::now();
  server->Stop();
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_TRUE(ClosedWithin(fd.get(), 1000ms));
}

TEST(HttpServerTest, BindFailureIsAnIoError) {
  TestServer first(Echo);
  boost::asio::io_context ioc;
  HttpServerOptions options;
  options.listen = {"127.0.0.1", first.port()};
  Result<std::unique_ptr<HttpServer>> second = HttpServer::Start(ioc, Echo, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kIo);
}

TEST(HttpServerTest, MissingTlsFilesAreInvalid) {
  boost::asio::io_context ioc;
  HttpServerOptions options;
  options.listen = {"127.0.0.1", 0};
  options.tls_cert = "/nonexistent/cert.pem";
  options.tls_key = "/nonexistent/key.pem";
  Result<std::unique_ptr<HttpServer>> server = HttpServer::Start(ioc, Echo, options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), Code::kInvalid);
}

}  // namespace
}  // namespace byoi

namespace byoi {
namespace {

// The API's one-job rule and cancellation over a real connection, with a runner that downloads
// until cancelled (the real pipeline's download loop behaves the same way).
TEST(ApiOverHttpTest, SecondPostIs409AndDeleteCancelsWithin2Seconds) {
  JobControl jobs(
      [](const Manifest&, const RunOptions&, StatusBoard& board, const CancelToken& cancel) {
        board.BeginStep(Step::kDownload, "downloading image");
        for (uint64_t done = 0;; done += 1024) {
          if (Status s = cancel.Check(); !s.ok()) return s;
          board.StepProgress(Step::kDownload, done, 1 << 30);
          std::this_thread::sleep_for(20ms);
        }
      },
      {});
  Metrics metrics;
  ApiHandler api(
      jobs, metrics, [] { return Result<boost::json::value>(boost::json::value()); }, "tok");
  TestServer server([&api](const HttpRequest& r) { return api.Handle(r); });

  auto exchange = [&](const std::string& request) {
    UniqueFd fd = Connect(server.port());
    SendAll(fd.get(), request);
    return ReadResponse(fd.get());
  };
  std::string body = R"({"URL": "http://127.0.0.1:1/x.raw", "type": "raw"})";
  std::string post =
      "POST /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  EXPECT_EQ(exchange(post).rfind("HTTP/1.1 202 ", 0), 0u);
  std::string second = exchange(post);
  EXPECT_EQ(second.rfind("HTTP/1.1 409 ", 0), 0u) << second;
  EXPECT_NE(second.find("A deployment is already in progress."), std::string::npos);

  auto start = Clock::now();
  std::string del = exchange(
      "DELETE /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n");
  EXPECT_EQ(del.rfind("HTTP/1.1 204 ", 0), 0u) << del;
  EXPECT_LT(Clock::now() - start, 2s);
  std::string get = exchange(Get("/v1/bringYourOwnImage", "Authorization: Bearer tok\r\n"));
  EXPECT_NE(get.find(R"("status":"error","message":"Deployment cancelled.")"), std::string::npos)
      << get;
}

}  // namespace
}  // namespace byoi
