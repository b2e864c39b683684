// The HTTP listener and sessions on a real socket (127.0.0.1, ephemeral port): limits, time-outs,
// keep-alive, 100-continue, the connection limits and who is closed to make room, handlers off the
// io_context (reads apart from writes), rate-limited refusal logs, and shutdown.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/api/api_handler.hpp"
#include "agent/api/http_server.hpp"
#include "agent/base/fd.hpp"
#include "tests/unit/log_capture.hpp"

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

// Counts events across threads; WaitFor() returns once `n` happened (false after `timeout`).
class Signal {
 public:
  void Notify() {
    {
      std::lock_guard lock(mu_);
      ++count_;
    }
    cv_.notify_all();
  }
  bool WaitFor(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return count_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

HttpResponse Echo(const HttpRequest& req) {
  HttpResponse res{http::status::ok, req.version()};
  res.body() = std::string(req.target()) + " " + std::to_string(req.body().size());
  res.keep_alive(req.keep_alive());
  res.prepare_payload();
  return res;
}

// A connection to the server from `source` (any address of 127.0.0.0/8 is this machine's).
UniqueFd Connect(uint16_t port, const char* source = "127.0.0.1") {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in from{};
  from.sin_family = AF_INET;
  EXPECT_EQ(::inet_pton(AF_INET, source, &from.sin_addr), 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
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

// A header check standing in for the API's token check: `X-Ok` is the right token; /open needs
// none (like /healthz); everything else without it is refused.
HeaderVerdict NeedsXOk(const HttpRequest& header, std::string_view) {
  if (header.find("X-Ok") != header.end()) return {std::nullopt, true};
  if (header.target() == "/open") return {std::nullopt, false};
  return {HttpResponse{http::status::unauthorized, header.version()}, false};
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
  Signal started, released;
  TestServer server([&](const HttpRequest& req) {
    if (req.target() == "/slow") {  // like DELETE waiting for a job to stop
      started.Notify();
      released.WaitFor(1, 10s);
    }
    return Echo(req);
  });
  UniqueFd slow = Connect(server.port());
  SendAll(slow.get(), Get("/slow"));
  ASSERT_TRUE(started.WaitFor(1, 5s));
  auto start = Clock::now();
  UniqueFd fd = Connect(server.port());
  SendAll(fd.get(), Get("/fast"));
  EXPECT_NE(ReadResponse(fd.get()).find("/fast 0"), std::string::npos);
  EXPECT_LT(Clock::now() - start, 500ms);
  released.Notify();
  EXPECT_NE(ReadResponse(slow.get()).find("/slow 0"), std::string::npos);
}

// POSTs parse manifests and DELETEs wait for jobs: however many are in progress, GET and HEAD
// (status calls, /healthz) are answered at once.
TEST(HttpServerTest, BusyWritesNeverDelayReads) {
  Signal started, released;
  TestServer server([&](const HttpRequest& req) {
    if (req.method() == http::verb::post || req.method() == http::verb::delete_) {
      started.Notify();
      released.WaitFor(1, 20s);
    }
    return Echo(req);
  });
  std::vector<UniqueFd> writes;
  for (int i = 0; i < 8; ++i) {
    writes.push_back(Connect(server.port()));
    SendAll(writes.back().get(),
            i % 2 ? "DELETE /w HTTP/1.1\r\nHost: x\r\n\r\n"
                  : "POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
  }
  ASSERT_TRUE(started.WaitFor(2, 5s));  // every write handler thread is taken, the rest queue
  for (const char* target : {"/healthz", "/v1/bringYourOwnImage"}) {
    for (const char* method : {"GET", "HEAD"}) {
      auto start = Clock::now();
      UniqueFd fd = Connect(server.port());
      SendAll(fd.get(), std::string(method) + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
      std::string res = ReadResponse(fd.get(), 2000ms);
      EXPECT_EQ(res.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << method << " " << target << ": " << res;
      EXPECT_LT(Clock::now() - start, 500ms) << method << " " << target;
    }
  }
  released.Notify();
  for (size_t i = 0; i < writes.size(); ++i) {
    EXPECT_NE(ReadResponse(writes[i].get()).find(i % 2 ? "/w 0" : "/w 2"), std::string::npos) << i;
  }
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
  // Both sent a whole request (without a header check, that is authenticated): neither is closed
  // to make room, the newcomer is.
  UniqueFd c = Connect(server.port());
  EXPECT_TRUE(ClosedWithin(c.get(), 2000ms));
  a.Reset();
  // Once the server has seen `a` go, there is room again.
  std::string answer;
  for (auto deadline = Clock::now() + 3s; answer.empty() && Clock::now() < deadline;) {
    UniqueFd d = Connect(server.port());
    SendAll(d.get(), Get("/d"));
    answer = ReadResponse(d.get(), 1000ms);
  }
  EXPECT_NE(answer.find("/d 0"), std::string::npos);
}

TEST(HttpServerTest, AConnectionWithoutACompleteHeadIsClosedAtTheHeadDeadline) {
  HttpServerOptions options;
  options.head_timeout = 300ms;
  TestServer server(Echo, options);
  UniqueFd idle = Connect(server.port());
  UniqueFd partial = Connect(server.port());
  auto start = Clock::now();
  SendAll(partial.get(), "GET /p HTTP/1.1\r\nHost: x\r\n");  // the head never ends
  EXPECT_TRUE(ClosedWithin(idle.get(), 2000ms));
  EXPECT_TRUE(ClosedWithin(partial.get(), 2000ms));
  EXPECT_GT(Clock::now() - start, 250ms);
  // The body is not held to the head deadline: the request deadline covers it.
  UniqueFd slow_body = Connect(server.port());
  SendAll(slow_body.get(), "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n");
  std::this_thread::sleep_for(600ms);  // a pause longer than the head deadline, not a wait
  SendAll(slow_body.get(), "{}");
  EXPECT_NE(ReadResponse(slow_body.get()).find("/b 2"), std::string::npos);
}

TEST(HttpServerTest, AnUnauthenticatedKeptAliveConnectionGetsTheHeadDeadlineNotTheIdleOne) {
  HttpServerOptions options;
  options.head_timeout = 300ms;
  options.header_check = NeedsXOk;
  TestServer server(Echo, options);
  UniqueFd open = Connect(server.port());
  SendAll(open.get(), Get("/open"));
  EXPECT_NE(ReadResponse(open.get()).find("/open 0"), std::string::npos);
  UniqueFd authenticated = Connect(server.port());
  SendAll(authenticated.get(), Get("/a", "X-Ok: 1\r\n"));
  EXPECT_NE(ReadResponse(authenticated.get()).find("/a 0"), std::string::npos);
  EXPECT_TRUE(ClosedWithin(open.get(), 2000ms));
  EXPECT_FALSE(ClosedWithin(authenticated.get(), 500ms));  // the idle deadline is 30 s
}

TEST(HttpServerTest, EachAddressHoldsAtMostItsShareAndRefusalsAreLoggedOnce) {
  LogCapture log;
  HttpServerOptions options;
  options.max_connections_per_address = 3;
  options.header_check = NeedsXOk;
  TestServer server(Echo, options);
  std::vector<UniqueFd> held;
  for (int i = 0; i < 3; ++i) held.push_back(Connect(server.port(), "127.0.0.2"));
  for (int i = 0; i < 40; ++i) {
    UniqueFd more = Connect(server.port(), "127.0.0.2");
    EXPECT_TRUE(ClosedWithin(more.get(), 2000ms)) << i;
  }
  // Another address is served at once, and the first three of 127.0.0.2 are still open.
  UniqueFd fd = Connect(server.port(), "127.0.0.1");
  SendAll(fd.get(), Get("/x", "X-Ok: 1\r\n"));
  EXPECT_NE(ReadResponse(fd.get()).find("/x 0"), std::string::npos);
  for (const UniqueFd& h : held) EXPECT_FALSE(ClosedWithin(h.get(), 50ms));
  // One line for 40 refusals: the next one, 10 s on, would count them.
  EXPECT_EQ(log.Matching("http: "),
            (std::vector<std::string>{"warning http: refused a connection from 127.0.0.2: 3 "
                                      "connections open from that address"}));
}

TEST(HttpServerTest, WhenFullTheOldestUnauthenticatedConnectionMakesRoom) {
  LogCapture log;
  Signal checked;  // header checks that saw the right token
  HttpServerOptions options;
  options.max_connections = 4;
  options.header_check = [&](const HttpRequest& header, std::string_view peer) {
    HeaderVerdict verdict = NeedsXOk(header, peer);
    if (verdict.authenticated) checked.Notify();
    return verdict;
  };
  TestServer server(Echo, options);
  // a: mid-request with the right token (its body is still to come); b: kept alive after one.
  UniqueFd a = Connect(server.port());
  SendAll(a.get(), "POST /a HTTP/1.1\r\nHost: x\r\nX-Ok: 1\r\nContent-Length: 2\r\n\r\n");
  ASSERT_TRUE(checked.WaitFor(1, 5s));
  UniqueFd b = Connect(server.port());
  SendAll(b.get(), Get("/b", "X-Ok: 1\r\n"));
  EXPECT_NE(ReadResponse(b.get()).find("/b 0"), std::string::npos);
  // c and d have sent nothing; the server is full.
  UniqueFd c = Connect(server.port(), "127.0.0.3");
  UniqueFd d = Connect(server.port(), "127.0.0.4");
  // e takes the place of c, the oldest without the token; d stays.
  UniqueFd e = Connect(server.port(), "127.0.0.5");
  EXPECT_TRUE(ClosedWithin(c.get(), 2000ms));
  EXPECT_FALSE(ClosedWithin(d.get(), 100ms));
  SendAll(e.get(), Get("/e", "X-Ok: 1\r\n"));
  EXPECT_NE(ReadResponse(e.get()).find("/e 0"), std::string::npos);
  // f takes d's place; then a, b and e have the token and f does not: g takes f's.
  UniqueFd f = Connect(server.port(), "127.0.0.6");
  EXPECT_TRUE(ClosedWithin(d.get(), 2000ms));
  UniqueFd g = Connect(server.port(), "127.0.0.7");
  EXPECT_TRUE(ClosedWithin(f.get(), 2000ms));
  SendAll(g.get(), Get("/g", "X-Ok: 1\r\n"));
  EXPECT_NE(ReadResponse(g.get()).find("/g 0"), std::string::npos);
  // Now all four have the token: a newcomer is refused, and none of them is closed.
  UniqueFd h = Connect(server.port(), "127.0.0.8");
  EXPECT_TRUE(ClosedWithin(h.get(), 2000ms));
  SendAll(a.get(), "{}");
  EXPECT_NE(ReadResponse(a.get()).find("/a 2"), std::string::npos);
  for (const UniqueFd* fd : {&b, &e, &g}) {
    SendAll(fd->get(), Get("/again", "X-Ok: 1\r\n"));
    EXPECT_NE(ReadResponse(fd->get()).find("/again 0"), std::string::npos);
  }
  // Three closings and a refusal, one line (the period is 10 s).
  std::vector<std::string> lines = log.Matching("http: ");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].rfind("warning http: 4 connections open: closed one from 127.0.0.3 that had "
                           "not authenticated in ",
                           0),
            0u)
      << lines[0];
  EXPECT_NE(lines[0].find(" ms, to make room for one from 127.0.0.5"), std::string::npos)
      << lines[0];
}

// An attacker with several addresses closes its own connections first: the one to close is the
// oldest of the address holding the most unauthenticated connections, not a client's lone one.
TEST(HttpServerTest, TheAddressHoldingTheMostUnauthenticatedConnectionsMakesRoomFirst) {
  HttpServerOptions options;
  options.max_connections = 4;
  options.header_check = NeedsXOk;
  TestServer server(Echo, options);
  UniqueFd lone = Connect(server.port(), "127.0.0.9");  // the oldest, alone on its address
  UniqueFd a1 = Connect(server.port(), "127.0.0.2");
  UniqueFd a2 = Connect(server.port(), "127.0.0.2");
  UniqueFd a3 = Connect(server.port(), "127.0.0.2");
  UniqueFd n1 = Connect(server.port(), "127.0.0.10");
  EXPECT_TRUE(ClosedWithin(a1.get(), 2000ms));
  UniqueFd n2 = Connect(server.port(), "127.0.0.11");
  EXPECT_TRUE(ClosedWithin(a2.get(), 2000ms));
  EXPECT_FALSE(ClosedWithin(lone.get(), 100ms));
  // Now every address holds one: the oldest goes.
  UniqueFd n3 = Connect(server.port(), "127.0.0.12");
  EXPECT_TRUE(ClosedWithin(lone.get(), 2000ms));
  for (const UniqueFd* fd : {&a3, &n1, &n2, &n3}) EXPECT_FALSE(ClosedWithin(fd->get(), 50ms));
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
  // DELETE cleared the job (docs/api.md).
  std::string get = exchange(Get("/v1/bringYourOwnImage", "Authorization: Bearer tok\r\n"));
  EXPECT_EQ(get.rfind("HTTP/1.1 404 ", 0), 0u) << get;
  EXPECT_NE(get.find(R"({"message":"No deployment."})"), std::string::npos) << get;
}

// HEAD /healthz: the GET's header, Content-Length included, and no body, so the next response on
// the connection starts where it should.
TEST(ApiOverHttpTest, HeadHealthzHasTheHeaderOfGetAndNoBody) {
  JobControl jobs([](auto&&...) { return Status::Ok(); }, {});
  Metrics metrics;
  ApiHandler api(
      jobs, metrics, [] { return Result<boost::json::value>(boost::json::value()); },
      "t0ken-with-enough-entropy");
  TestServer server([&api](const HttpRequest& r) { return api.Handle(r); });
  UniqueFd fd = Connect(server.port());
  SendAll(fd.get(), "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + Get("/healthz"));
  std::string in;
  for (auto deadline = Clock::now() + 5s;
       in.find("ok\n") == std::string::npos && Clock::now() < deadline;) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  std::string head_answer =
      "HTTP/1.1 200 OK\r\nServer: byoi-agent\r\nContent-Type: text/plain\r\n"
      "Content-Length: 3\r\n\r\n";
  EXPECT_EQ(in, head_answer + head_answer + "ok\n");
}

}  // namespace
}  // namespace byoi
