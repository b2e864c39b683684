// FetchImage's failures that need no server (the rest runs against real servers in
// tests/integration/test_fetch.py).
#include <gtest/gtest.h>

#include <chrono>

#include "agent/base/messages.hpp"
#include "agent/fetch/fetch.hpp"
#include "agent/image/image_buffer.hpp"

namespace byoi {
namespace {

using std::chrono::milliseconds;

FetchOptions FastOptions() {
  FetchOptions opts;
  opts.memory_budget = 1 << 20;
  opts.retry_delay = milliseconds(1);
  opts.attempts = 3;
  return opts;
}

TEST(FetchImage, ZeroBudgetIsTooBig) {
  FetchRequest req{"http://127.0.0.1:1/x.qcow2", {}, ImageType::kQcow2, {HashAlgo::kSha256}};
  FetchOptions opts = FastOptions();
  opts.memory_budget = 0;
  auto r = FetchImage(req, opts, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kTooBig);
  EXPECT_EQ(r.status().message(),
            "Could not download, qcow2 image is too big to download in memory.");
}

TEST(FetchImage, OtherSchemesAreRefusedWithoutRetry) {
  for (const char* url : {"ftp://127.0.0.1:1/x", "file:///etc/passwd", "gopher://127.0.0.1/"}) {
    FetchRequest req{url, {}, ImageType::kRaw, {}};
    auto start = std::chrono::steady_clock::now();
    auto r = FetchImage(req, FastOptions(), {}, CancelToken());
    ASSERT_FALSE(r.ok()) << url;
    EXPECT_EQ(r.status().message(), msg::DownloadFailed(url));
    EXPECT_NE(r.status().detail().find("Protocol"), std::string::npos) << r.status().detail();
    EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(500));
  }
}

TEST(FetchImage, RefusedConnectionIsRetriedThenReported) {
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  FetchRequest req{"http://user:pw@127.0.0.1:1/image.raw", {}, ImageType::kRaw, {}};
  int retries = 0;
  FetchOptions opts = FastOptions();
  opts.on_retry = [&retries](std::string_view notice) {
    ++retries;
    EXPECT_EQ(notice.find("pw"), std::string_view::npos);
  };
  auto r = FetchImage(req, opts, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo);
  EXPECT_EQ(r.status().message(),
            "Could not download image located: http://127.0.0.1:1/image.raw.");
  EXPECT_NE(r.status().detail().find("Couldn't connect"), std::string::npos) << r.status().detail();
  EXPECT_NE(r.status().detail().find("3 attempts"), std::string::npos) << r.status().detail();
  EXPECT_EQ(retries, 2);
}

TEST(FetchImage, CancelledBeforeStart) {
  CancelToken cancel;
  cancel.Cancel();
  FetchRequest req{"http://127.0.0.1:1/image.raw", {}, ImageType::kRaw, {}};
  auto r = FetchImage(req, FastOptions(), {}, cancel);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCancelled);
  EXPECT_EQ(r.status().message(), "Deployment cancelled.");
}

TEST(FetchImage, CancelDuringBackOffStopsQuickly) {
  CancelToken cancel;
  FetchRequest req{"http://127.0.0.1:1/image.raw", {}, ImageType::kRaw, {}};
  FetchOptions opts = FastOptions();
  opts.retry_delay = milliseconds(60000);
  opts.on_retry = [&cancel](std::string_view) { cancel.Cancel(); };
  auto start = std::chrono::steady_clock::now();
  auto r = FetchImage(req, opts, {}, cancel);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
}

TEST(FetchImage, DeadlineEndsRetriesEarly) {
  // Retries would go on for 1000 attempts; the overall deadline ends them.
  FetchRequest req{"http://127.0.0.1:1/image.raw", {}, ImageType::kRaw, {}};
  FetchOptions opts = FastOptions();
  opts.attempts = 1000;
  opts.retry_delay = milliseconds(100);
  opts.deadline = milliseconds(300);
  auto start = std::chrono::steady_clock::now();
  auto r = FetchImage(req, opts, {}, CancelToken());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "Could not download image located: http://127.0.0.1:1/image.raw.");
  EXPECT_NE(r.status().detail().find("deadline"), std::string::npos) << r.status().detail();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(1500));
}

TEST(MemoryBudget, MemTotalLessThreeGiB) {
  EXPECT_EQ(*MemoryBudgetFromMeminfo("MemTotal:       24582856 kB\nMemFree:  1 kB\n"),
            24582856ull * 1024 - (3ull << 30));
  EXPECT_EQ(*MemoryBudgetFromMeminfo("MemFree: 1 kB\nMemTotal: 4194304 kB\n"), 1ull << 30);
  // A machine with 3 GiB or less has no room for an image.
  EXPECT_EQ(*MemoryBudgetFromMeminfo("MemTotal: 3145728 kB\n"), 0u);
  EXPECT_EQ(*MemoryBudgetFromMeminfo("MemTotal: 2097152 kB\n"), 0u);
  EXPECT_EQ(MemoryBudgetFromMeminfo("MemFree: 1 kB\n").status().code(), Code::kIo);
  EXPECT_EQ(MemoryBudgetFromMeminfo("").status().code(), Code::kIo);
  // This machine's own.
  Result<uint64_t> here = DefaultMemoryBudget();
  ASSERT_TRUE(here.ok()) << here.status().ToString();
}

}  // namespace
}  // namespace byoi
