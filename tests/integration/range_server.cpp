#include "tests/integration/range_server.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

namespace byoi::testing {

namespace {

bool SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// The request's headers, up to the blank line; nullopt when the connection closed or stop is set.
std::optional<std::string> ReadRequest(int fd, std::string& buffer, const std::atomic<bool>& stop) {
  for (;;) {
    if (size_t end = buffer.find("\r\n\r\n"); end != std::string::npos) {
      std::string head = buffer.substr(0, end + 4);
      buffer.erase(0, end + 4);
      return head;
    }
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, 100);
    if (stop.load()) return std::nullopt;
    if (r <= 0) continue;
    char chunk[4096];
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return std::nullopt;
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

std::string RangeHeader(const std::string& head) {
  size_t pos = 0;
  while ((pos = head.find("\r\n", pos)) != std::string::npos) {
    pos += 2;
    if (strncasecmp(head.c_str() + pos, "range:", 6) == 0) {
      size_t end = head.find("\r\n", pos);
      std::string v = head.substr(pos + 6, end - pos - 6);
      v.erase(0, v.find_first_not_of(' '));
      return v;
    }
  }
  return {};
}

}  // namespace

RangeServer::RangeServer(RangeServerOptions options)
    : options_(std::move(options)),
      body_(std::make_shared<const std::vector<uint8_t>>(std::move(options_.body))) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "cannot listen on 127.0.0.1";
    return;
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { Accept(); });
}

RangeServer::~RangeServer() {
  stop_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard lock(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  for (std::thread& t : threads_) t.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string RangeServer::url() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/image.raw";
}

std::vector<LoggedRequest> RangeServer::requests() const {
  std::lock_guard lock(mu_);
  return log_;
}

void RangeServer::Accept() {
  int connections = 0;
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard lock(mu_);
    fds_.push_back(fd);
    threads_.emplace_back([this, fd, n = connections++] { Serve(fd, n); });
  }
}

void RangeServer::Serve(int fd, int connection) {
  std::string buffer;
  while (std::optional<std::string> head = ReadRequest(fd, buffer, stop_)) {
    std::string range = RangeHeader(*head);
    {
      std::lock_guard lock(mu_);
      log_.push_back({range, connection});
    }
    if (on_request_) on_request_(range);
    if (!Answer(fd, range)) break;
  }
  std::lock_guard lock(mu_);
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
  fds_.erase(std::find(fds_.begin(), fds_.end(), fd));
}

bool RangeServer::Answer(int fd, const std::string& range) {
  std::shared_ptr<const std::vector<uint8_t>> served;
  {
    std::lock_guard lock(mu_);
    served = body_;  // the image as it is now: a change lands between requests
  }
  const std::vector<uint8_t>& body = *served;
  const uint64_t size = body.size();
  uint64_t first = 0, end = size;
  std::string head;
  unsigned long long a = 0, b = 0;
  int parsed = options_.ranges ? std::sscanf(range.c_str(), "bytes=%llu-%llu", &a, &b) : 0;
  if (parsed >= 1 && a < size) {
    first = a;
    end = parsed == 2 ? std::min<uint64_t>(b + 1, size) : size;
    head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes " + std::to_string(first) + "-" +
           std::to_string(end - 1) + "/" + std::to_string(size) + "\r\n";
  } else if (parsed >= 1) {
    head = "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */" + std::to_string(size) +
           "\r\nContent-Length: 0\r\n\r\n";
    return SendAll(fd, head.data(), head.size());
  } else {
    head = "HTTP/1.1 200 OK\r\n";
  }
  head += "Content-Length: " + std::to_string(end - first) + "\r\n\r\n";
  if (!SendAll(fd, head.data(), head.size())) return false;
  std::optional<uint64_t> cut;
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(options_.drops.begin(), options_.drops.end(),
                           [&](uint64_t d) { return first < d && d < end; });
    if (it != options_.drops.end()) {
      cut = *it;
      options_.drops.erase(it);
      if (!options_.changed.empty()) {
        body_ = std::make_shared<const std::vector<uint8_t>>(std::move(options_.changed));
        options_.changed.clear();
      }
    }
  }
  uint64_t pause_at = end;  // none
  int pause_ms = 0;
  {
    std::lock_guard lock(mu_);
    if (options_.pause_ms > 0 && first <= options_.pause_at && options_.pause_at < end) {
      pause_at = options_.pause_at;
      pause_ms = std::exchange(options_.pause_ms, 0);  // once
    }
  }
  const uint64_t stop_at = cut.value_or(end);
  for (uint64_t pos = first; pos < stop_at;) {
    const uint64_t limit = pos < pause_at ? std::min(pause_at, stop_at) : stop_at;
    size_t n = static_cast<size_t>(std::min<uint64_t>(64 << 10, limit - pos));
    if (!SendAll(fd, body.data() + pos, n)) return false;
    pos += n;
    if (pos == pause_at) {
      for (int waited = 0; waited < pause_ms && !stop_.load(); waited += 10) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }
  return !cut;
}

}  // namespace byoi::testing
