// FetchStream (agent/fetch/fetch.hpp) against a real HTTP server on 127.0.0.1 (range_server.hpp):
// the sink gets the body strictly in order, each byte once, with N connections, across faults,
// from a server without Range; the window bounds how far ahead pieces are fetched; what cannot be
// resumed fails with the catalogue message; the sink's own errors come back as they are.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <set>

#include "agent/base/messages.hpp"
#include "agent/fetch/fetch.hpp"
#include "tests/integration/range_server.hpp"
#include "tests/integration/test_util.hpp"

namespace byoi {
namespace {

using testing::RandomBytes;
using testing::RangeServer;
using testing::RangeServerOptions;

constexpr uint64_t kMiB = 1 << 20;

// Records what it gets; checks the ByteSink contract as it goes.
class RecordingSink : public ByteSink {
 public:
  Status Start(std::optional<uint64_t> total) override {
    ++starts;
    EXPECT_EQ(starts, 1) << "Start called twice";
    EXPECT_TRUE(bytes.empty()) << "Start after Write";
    this->total = total;
    return start_error;
  }
  Status Write(std::span<const uint8_t> data) override {
    EXPECT_EQ(starts, 1) << "Write before Start";
    EXPECT_FALSE(data.empty());
    EXPECT_FALSE(failed) << "Write after an error";
    bytes.insert(bytes.end(), data.begin(), data.end());
    taken.store(bytes.size());
    ++writes;
    if (fail_after && bytes.size() >= fail_after) {
      failed = true;
      return Status::Error(Code::kIo, "the disk refused block 7", "Could not write.");
    }
    return Status::Ok();
  }

  std::vector<uint8_t> bytes;
  std::atomic<uint64_t> taken{0};
  int starts = 0;
  int writes = 0;
  std::optional<uint64_t> total;
  Status start_error = Status::Ok();
  uint64_t fail_after = 0;  // refuse the Write that passes this many bytes
  bool failed = false;
};

FetchOptions Options(int connections) {
  FetchOptions opts;
  opts.connections = connections;
  opts.retry_delay = std::chrono::milliseconds(10);
  opts.attempts = 3;
  return opts;
}

FetchRequest Request(const RangeServer& server) {
  return {server.url(), {}, ImageType::kRaw, {HashAlgo::kSha256}};
}

std::string Sha256(std::span<const uint8_t> bytes) {
  auto h = Hasher::Create(HashAlgo::kSha256);
  h->Update(bytes);
  return *h->FinalHex();
}

// The `bytes=A-B` headers as sorted [A, B] pairs (a test failure for any other form).
std::vector<std::pair<uint64_t, uint64_t>> Intervals(const std::vector<std::string>& ranges) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const std::string& r : ranges) {
    unsigned long long a = 0, b = 0;
    EXPECT_EQ(std::sscanf(r.c_str(), "bytes=%llu-%llu", &a, &b), 2) << r;
    out.emplace_back(a, b);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> Ranges(const RangeServer& server) {
  std::vector<std::string> out;
  for (const auto& r : server.requests()) out.push_back(r.range);
  return out;
}

TEST(FetchStream, ManyConnectionsDeliverInOrderWithinTheWindow) {
  const std::vector<uint8_t> body = RandomBytes(24 * kMiB + 12345, 1);
  // The first piece waits half a second at 2 MiB: the other connections could run far ahead.
  RangeServer server({.body = body, .pause_at = 2 * kMiB, .pause_ms = 500});
  RecordingSink sink;
  FetchOptions opts = Options(4);
  opts.window_bytes = 8 * kMiB;
  // No piece may end past what the sink has taken plus the window when it is asked for.
  std::atomic<int> past_window{0};
  server.set_on_request([&](const std::string& range) {
    unsigned long long a = 0, b = 0;
    if (std::sscanf(range.c_str(), "bytes=%llu-%llu", &a, &b) == 2 &&
        b + 1 > sink.taken.load() + opts.window_bytes) {
      ++past_window;
    }
  });
  Result<FetchStreamResult> r = FetchStream(Request(server), opts, sink, {}, CancelToken());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(sink.bytes == body);
  EXPECT_EQ(sink.total, body.size());
  EXPECT_EQ(r->bytes, body.size());
  EXPECT_EQ(r->DigestOf(HashAlgo::kSha256), Sha256(body));
  EXPECT_EQ(past_window.load(), 0);
  // The first 4 MiB, then pieces of 1 MiB (8 MiB window / (2 × 4)) that tile the rest exactly.
  std::vector<std::string> ranges = Ranges(server);
  ASSERT_FALSE(ranges.empty());
  EXPECT_EQ(ranges[0], "bytes=0-4194303");
  uint64_t pos = 0;
  for (auto [a, b] : Intervals(ranges)) {
    EXPECT_EQ(a, pos);
    EXPECT_LE(b - a + 1, 4 * kMiB);
    pos = b + 1;
  }
  EXPECT_EQ(pos, body.size());
  EXPECT_EQ(ranges.size(), 1 + 21u);  // 4 MiB, 20 pieces of 1 MiB, the last 12345 bytes
  std::set<int> connections;
  for (const auto& req : server.requests()) connections.insert(req.connection);
  EXPECT_EQ(connections.size(), 4u);
}

TEST(FetchStream, FaultsAreResumedPerPieceAndEveryByteComesOnce) {
  const std::vector<uint8_t> body = RandomBytes(20 * kMiB, 2);
  // In the first piece, in two later ones, and twice in the same piece.
  const std::vector<uint64_t> drops = {100000, 6 * kMiB + 7, 13 * kMiB + 1, 13 * kMiB + 99999};
  RangeServer server({.body = body, .drops = drops});
  RecordingSink sink;
  FetchOptions opts = Options(4);
  opts.window_bytes = 16 * kMiB;  // pieces of 2 MiB
  Result<FetchStreamResult> r = FetchStream(Request(server), opts, sink, {}, CancelToken());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(sink.bytes == body);
  EXPECT_EQ(r->DigestOf(HashAlgo::kSha256), Sha256(body));
  EXPECT_EQ(r->restarts, 0);
  // Each drop is resumed from where it stopped to the end of its own piece.
  std::vector<std::string> ranges = Ranges(server);
  auto has = [&](const std::string& range) {
    return std::find(ranges.begin(), ranges.end(), range) != ranges.end();
  };
  EXPECT_TRUE(has("bytes=100000-4194303"));
  EXPECT_TRUE(has("bytes=6291463-8388607"));    // piece [6, 8) MiB
  EXPECT_TRUE(has("bytes=13631489-14680063"));  // piece [12, 14) MiB, twice
  EXPECT_TRUE(has("bytes=13731487-14680063"));
  EXPECT_EQ(r->requests, static_cast<int>(ranges.size()));
  EXPECT_EQ(ranges.size(), 1 + 8 + drops.size());
}

TEST(FetchStream, ServerWithoutRangeGivesTheWholeBodyOnOneConnection) {
  const std::vector<uint8_t> body = RandomBytes(9 * kMiB + 1, 3);
  RangeServer server({.body = body, .ranges = false});
  RecordingSink sink;
  Result<FetchStreamResult> r = FetchStream(Request(server), Options(8), sink, {}, CancelToken());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(sink.bytes == body);
  EXPECT_EQ(sink.total, body.size());
  EXPECT_EQ(r->DigestOf(HashAlgo::kSha256), Sha256(body));
  EXPECT_EQ(Ranges(server), std::vector<std::string>{"bytes=0-4194303"});
}

TEST(FetchStream, OneConnectionAsksForTheWholeBodyAndResumes) {
  const std::vector<uint8_t> body = RandomBytes(7 * kMiB, 4);
  RangeServer server({.body = body, .drops = {3 * kMiB}});
  RecordingSink sink;
  Result<FetchStreamResult> r = FetchStream(Request(server), Options(1), sink, {}, CancelToken());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(sink.bytes == body);
  EXPECT_EQ(Ranges(server), (std::vector<std::string>{"", "bytes=3145728-"}));
}

TEST(FetchStream, ServerWithoutRangeCannotResumeOnceTheSinkHasBytes) {
  const std::vector<uint8_t> body = RandomBytes(9 * kMiB, 5);
  RangeServer server({.body = body, .ranges = false, .drops = {5 * kMiB}});
  RecordingSink sink;
  Result<FetchStreamResult> r = FetchStream(Request(server), Options(4), sink, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo);
  EXPECT_EQ(r.status().message(), msg::DownloadFailed(server.url()));
  EXPECT_NE(r.status().detail().find("with the whole image (HTTP 200): it ignores Range, or the "
                                     "image changed during the download"),
            std::string::npos)
      << r.status().detail();
  EXPECT_NE(r.status().detail().find("cannot start over from byte 0"), std::string::npos);
  // What the sink got is the body's beginning, and no byte of the second answer.
  ASSERT_GT(sink.bytes.size(), 0u);
  ASSERT_LE(sink.bytes.size(), 5 * kMiB);
  EXPECT_TRUE(std::equal(sink.bytes.begin(), sink.bytes.end(), body.begin()));
}

TEST(FetchStream, ImageChangedAfterTheSinkHasBytesFails) {
  const std::vector<uint8_t> body = RandomBytes(24 * kMiB, 6);
  RangeServer server({.body = body, .drops = {9 * kMiB + 5}, .changed = RandomBytes(20 * kMiB, 7)});
  RecordingSink sink;
  FetchOptions opts = Options(4);
  Result<FetchStreamResult> r = FetchStream(Request(server), opts, sink, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), msg::DownloadFailed(server.url()));
  // Which connection sees the change first is a race: the resumed piece learns the new length,
  // a piece beyond it is refused with 416. Both say what happened.
  const std::string& detail = r.status().detail();
  EXPECT_TRUE(detail.find("the image changed during the download: its length went from 25165824 "
                          "to 20971520 bytes") != std::string::npos ||
              detail.find("the image changed during the download: bytes 20971520-") !=
                  std::string::npos)
      << detail;
  EXPECT_NE(r.status().detail().find("a streamed download cannot start over from byte 0"),
            std::string::npos);
  ASSERT_GT(sink.bytes.size(), 0u);
  EXPECT_TRUE(std::equal(sink.bytes.begin(), sink.bytes.end(), body.begin()));
}

TEST(FetchStream, SinkErrorsAreReturnedAsTheyAre) {
  const std::vector<uint8_t> body = RandomBytes(16 * kMiB, 8);
  RangeServer server({.body = body});
  RecordingSink sink;
  sink.fail_after = 5 * kMiB;
  Result<FetchStreamResult> r = FetchStream(Request(server), Options(4), sink, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo);
  EXPECT_EQ(r.status().message(), "Could not write.");
  EXPECT_EQ(r.status().detail(), "the disk refused block 7");
  EXPECT_TRUE(std::equal(sink.bytes.begin(), sink.bytes.end(), body.begin()));
}

TEST(FetchStream, SinkRefusesTheLengthBeforeAnyByte) {
  const std::vector<uint8_t> body = RandomBytes(6 * kMiB, 9);
  for (bool ranges : {true, false}) {
    RangeServer server({.body = body, .ranges = ranges});
    RecordingSink sink;
    sink.start_error = Status::Error(Code::kTooBig, "6291456 bytes on a 4 MiB disk", "Too big.");
    Result<FetchStreamResult> r = FetchStream(Request(server), Options(4), sink, {}, CancelToken());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kTooBig);
    EXPECT_EQ(r.status().message(), "Too big.");
    EXPECT_EQ(r.status().detail(), "6291456 bytes on a 4 MiB disk");
    EXPECT_EQ(sink.total, body.size());
    EXPECT_EQ(sink.writes, 0);
  }
}

TEST(FetchStream, EmptyBody) {
  RangeServer server({.body = {}, .ranges = false});
  RecordingSink sink;
  Result<FetchStreamResult> r = FetchStream(Request(server), Options(4), sink, {}, CancelToken());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bytes, 0u);
  EXPECT_EQ(sink.starts, 1);
  EXPECT_EQ(sink.total, 0u);
  EXPECT_EQ(sink.writes, 0);
  EXPECT_EQ(r->DigestOf(HashAlgo::kSha256), Sha256({}));
}

}  // namespace
}  // namespace byoi
