// An HTTP/1.1 server on 127.0.0.1 for the C++ download tests (fetch_stream_test.cpp): one body at
// every path, Range requests (`bytes=A-B`, `bytes=A-`) answered with 206 unless told to ignore
// them, and faults on demand. A thread per connection, keep-alive; every request is logged.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace byoi::testing {

struct RangeServerOptions {
  std::vector<uint8_t> body = {};
  bool ranges = true;                // false: every answer is a 200 with the whole body
  std::vector<uint64_t> drops = {};  // offsets at which an answer's connection is closed, each once
  std::vector<uint8_t> changed = {};  // if not empty: served instead of `body` after the first drop
  // An answer that reaches this offset waits there `pause_ms` before sending on (once).
  uint64_t pause_at = 0;
  int pause_ms = 0;
};

struct LoggedRequest {
  std::string range;  // the Range header, empty when none
  int connection;     // 0, 1, ... in the order connections were accepted
};

class RangeServer {
 public:
  // Listens on 127.0.0.1 on a port of its own (a failure is a test failure).
  explicit RangeServer(RangeServerOptions options);
  ~RangeServer();  // closes every connection and joins every thread
  RangeServer(const RangeServer&) = delete;
  RangeServer& operator=(const RangeServer&) = delete;

  std::string url() const;
  std::vector<LoggedRequest> requests() const;
  // Called on a server thread at each request, with its Range header (empty when none), before
  // the answer.
  void set_on_request(std::function<void(const std::string&)> f) { on_request_ = std::move(f); }

 private:
  void Accept();
  void Serve(int fd, int connection);
  // Sends the answer to one request; false when the connection is to be closed.
  bool Answer(int fd, const std::string& range);

  RangeServerOptions options_;                        // guarded by mu_ once serving
  std::shared_ptr<const std::vector<uint8_t>> body_;  // guarded by mu_: what is served now
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::function<void(const std::string&)> on_request_;
  mutable std::mutex mu_;
  std::vector<LoggedRequest> log_;  // guarded by mu_
  std::vector<int> fds_;            // guarded by mu_: open connections
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace byoi::testing
