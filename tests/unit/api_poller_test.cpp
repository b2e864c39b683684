// The backend poller against a fake backend (our own HttpServer on 127.0.0.1): it takes one job,
// reports every step, retries refused reports, sends heartbeats, and holds a `done` job until the
// backend has the final status (docs/backend.md).
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <thread>

#include "agent/api/http_server.hpp"
#include "agent/api/poller.hpp"
#include "agent/base/messages.hpp"

namespace byoi {
namespace {

namespace http = boost::beast::http;
namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Put {
  std::string path;
  std::string status;  // doing/done/error
  std::string message;
  std::string steps;  // "download:doing,verify:todo,..."
  Clock::time_point at;
};

// Hands out `job_body` (when not empty) once, then 204; refuses the first `fail_polls` polls and
// the first `fail_puts` status reports with 503.
class FakeBackend {
 public:
  FakeBackend(std::string job_body, int fail_puts, int fail_polls = 0)
      : job_body_(std::move(job_body)), fail_puts_(fail_puts), fail_polls_(fail_polls) {
    HttpServerOptions options;
    options.listen = {"127.0.0.1", 0};
    auto started = HttpServer::Start(
        ioc_, [this](const HttpRequest& r) { return Handle(r); }, options);
    EXPECT_TRUE(started.ok());
    server_ = std::move(*started);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~FakeBackend() {
    server_->Stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  std::vector<Put> puts() {
    std::lock_guard lock(mu_);
    return puts_;
  }
  int refused() {
    std::lock_guard lock(mu_);
    return refused_;
  }
  int polls() {
    std::lock_guard lock(mu_);
    return polls_;
  }
  std::vector<Clock::time_point> poll_times() {
    std::lock_guard lock(mu_);
    return poll_times_;
  }

 private:
  HttpResponse Handle(const HttpRequest& req) {
    std::lock_guard lock(mu_);
    HttpResponse res{http::status::no_content, req.version()};
    if (req[http::field::authorization] != "Bearer backend-token") {
      res.result(http::status::unauthorized);
    } else if (req.method() == http::verb::get && req.target() == "/v1/agents/agent%3A1/job") {
      ++polls_;
      poll_times_.push_back(Clock::now());
      if (polls_ <= fail_polls_) {
        res.result(http::status::service_unavailable);
      } else if (!handed_out_ && !job_body_.empty()) {
        handed_out_ = true;
        res.result(http::status::ok);
        res.body() = job_body_;
      }
    } else if (req.method() == http::verb::put) {
      if (refused_ < fail_puts_) {
        ++refused_;
        res.result(http::status::service_unavailable);
      } else {
        json::object s = json::parse(req.body()).as_object();
        std::string steps;
        for (const auto& p : s.at("progress").as_array()) {
          steps += std::string(p.at("step").as_string()) + ":" +
                   std::string(p.at("status").as_string()) + ",";
        }
        puts_.push_back({std::string(req.target()), std::string(s.at("status").as_string()),
                         std::string(s.at("message").as_string()), steps, Clock::now()});
      }
    } else {
      res.result(http::status::not_found);
    }
    res.prepare_payload();
    return res;
  }

  boost::asio::io_context ioc_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::mutex mu_;
  std::string job_body_;
  int fail_puts_;
  int fail_polls_;
  bool handed_out_ = false;
  int refused_ = 0, polls_ = 0;
  std::vector<Put> puts_;
  std::vector<Clock::time_point> poll_times_;
};

PollerOptions Options(const FakeBackend& backend) {
  PollerOptions o;
  o.backend_url = backend.url();
  o.agent_id = "agent:1";  // escaped in the URL
  o.token = "backend-token";
  o.poll_interval = 50ms;
  o.heartbeat = 200ms;
  o.final_wait = 10s;
  o.max_report_backoff = 200ms;
  o.request_timeout = 5s;
  return o;
}

template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout = 10000ms) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

class PollerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

constexpr const char* kJob =
    R"({"jobId": "job/1", "manifest": {"URL": "http://127.0.0.1:1/x.raw", "type": "raw"}})";

TEST_F(PollerTest, TakesAJobReportsEveryStepRetriesAndDeliversTheFinalStatusBeforeReturning) {
  FakeBackend backend(kJob, /*fail_puts=*/3);
  Clock::time_point done_returned;
  std::string manifest_url;
  JobControl jobs(
      [&](const Manifest& m, const RunOptions&, StatusBoard& board, const CancelToken&) {
        manifest_url = m.url;
        board.BeginStep(Step::kDownload, "downloading image");
        for (int i = 1; i <= 5; ++i) {
          board.StepProgress(Step::kDownload, i * 100, 500);
          std::this_thread::sleep_for(100ms);
        }
        board.FinishStep(Step::kDownload);
        board.BeginStep(Step::kWrite, "writing image");
        board.FinishStep(Step::kWrite);
        board.BeginStep(Step::kReboot, "rebooting");
        board.FinishStep(Step::kReboot);
        board.Done();  // the poller holds this call until the backend has the final status
        done_returned = Clock::now();
        return Status::Ok();
      },
      {});
  Poller poller(jobs, Options(backend));
  jobs.Subscribe([&](const JobEvent& e) { poller.OnEvent(e); });
  poller.Start();

  ASSERT_TRUE(WaitFor([&] {
    auto p = backend.puts();
    return !p.empty() && p.back().status == "done";
  }));
  ASSERT_TRUE(WaitFor([&] { return !jobs.busy(); }));
  poller.Stop();

  EXPECT_EQ(manifest_url, "http://127.0.0.1:1/x.raw");
  EXPECT_EQ(backend.refused(), 3);
  std::vector<Put> puts = backend.puts();
  for (const Put& p : puts) EXPECT_EQ(p.path, "/v1/agents/agent%3A1/jobs/job%2F1/status");
  // Every step change arrived, in order, despite the refusals.
  std::vector<std::string> messages;
  for (const Put& p : puts) {
    if (messages.empty() || messages.back() != p.message) messages.push_back(p.message);
  }
  std::vector<std::string> expected{"starting", "downloading image", "writing image", "rebooting",
                                    "done"};
  EXPECT_EQ(messages, expected);
  EXPECT_EQ(puts.back().steps.find("download:done,verify:todo,write:done"), 0u)
      << puts.back().steps;
  // The runner could not reboot before the backend had the final status.
  EXPECT_LE(puts.back().at, done_returned);
  // Only one job was taken; no poll while it ran... but polling resumed after it.
  EXPECT_GE(backend.polls(), 1);
}

TEST_F(PollerTest, HeartbeatsWhileAStepMakesNoVisibleProgress) {
  FakeBackend backend(kJob, 0);
  std::atomic<bool> release{false};
  JobControl jobs(
      [&](const Manifest&, const RunOptions&, StatusBoard& board, const CancelToken& cancel) {
        board.BeginStep(Step::kWrite, "writing image");
        while (!release && cancel.Check().ok()) std::this_thread::sleep_for(10ms);
        board.Fail(Status::Error(Code::kIo, "EIO", "Can't write raw on disk."));
        return Status::Ok();
      },
      {});
  Poller poller(jobs, Options(backend));
  jobs.Subscribe([&](const JobEvent& e) { poller.OnEvent(e); });
  poller.Start();
  ASSERT_TRUE(WaitFor([&] { return backend.puts().size() >= 2; }));
  size_t before = backend.puts().size();
  std::this_thread::sleep_for(1100ms);
  size_t during = backend.puts().size() - before;
  EXPECT_GE(during, 4u);  // every 200 ms
  EXPECT_LE(during, 7u);
  release = true;
  ASSERT_TRUE(WaitFor([&] { return backend.puts().back().status == "error"; }));
  EXPECT_EQ(backend.puts().back().message, "Can't write raw on disk.");
  poller.Stop();
}

TEST_F(PollerTest, AnInvalidManifestIsAnsweredWithTheCatalogueMessage) {
  FakeBackend backend(R"({"jobId": "j2", "manifest": {"URL": "http://h/x", "type": "iso"}})", 1);
  bool ran = false;
  JobControl jobs(
      [&](auto&&...) {
        ran = true;
        return Status::Ok();
      },
      {});
  Poller poller(jobs, Options(backend));
  jobs.Subscribe([&](const JobEvent& e) { poller.OnEvent(e); });
  poller.Start();
  ASSERT_TRUE(WaitFor([&] { return !backend.puts().empty(); }));
  poller.Stop();
  Put p = backend.puts().front();
  EXPECT_EQ(p.path, "/v1/agents/agent%3A1/jobs/j2/status");
  EXPECT_EQ(p.status, "error");
  EXPECT_EQ(p.message, msg::kBadFormat);
  EXPECT_FALSE(ran);
}

TEST_F(PollerTest, AJobRunningFromTheApiIsNotPolledOverOrReported) {
  FakeBackend backend(kJob, 0);
  std::atomic<bool> release{false};
  JobControl jobs(
      [&](const Manifest&, const RunOptions&, StatusBoard&, const CancelToken& cancel) {
        while (!release && cancel.Check().ok()) std::this_thread::sleep_for(10ms);
        return Status::Ok();
      },
      {});
  Poller poller(jobs, Options(backend));
  jobs.Subscribe([&](const JobEvent& e) { poller.OnEvent(e); });
  Manifest m;
  m.url = "http://127.0.0.1:1/api.raw";
  ASSERT_TRUE(jobs.Submit(m).ok());  // no job id: an API job
  poller.Start();
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(backend.polls(), 0);
  EXPECT_TRUE(backend.puts().empty());
  release = true;
  // Free again: it polls, takes the backend's job and reports it to its end. The job's thread
  // calls into the poller until then (and holds `done` for the backend): Stop only after it.
  ASSERT_TRUE(WaitFor([&] {
    auto p = backend.puts();
    return !p.empty() && p.back().status == "done";
  }));
  ASSERT_TRUE(WaitFor([&] { return !jobs.busy(); }));
  EXPECT_GE(backend.polls(), 1);
  for (const Put& p : backend.puts()) EXPECT_EQ(p.path, "/v1/agents/agent%3A1/jobs/job%2F1/status");
  poller.Stop();
}

TEST_F(PollerTest, PollFailuresBackOffExponentiallyUpToTheCapAndSuccessResetsIt) {
  // Six refused polls, then "no job" answers. The delay after the n-th failure in a row is
  // poll_interval * 2^(n-1), capped, with jitter in [0.5, 1.0] of it; after a success it is
  // poll_interval again, jittered in [0.8, 1.2]. Lower bounds are exact (a busy machine only makes
  // gaps longer); upper bounds get room for scheduling.
  FakeBackend backend("", /*fail_puts=*/0, /*fail_polls=*/6);
  PollerOptions o = Options(backend);
  o.poll_interval = 40ms;
  o.max_poll_backoff = 320ms;
  JobControl jobs([](auto&&...) { return Status::Ok(); }, {});
  Poller poller(jobs, o);
  poller.Start();
  ASSERT_TRUE(WaitFor([&] { return backend.polls() >= 10; }));
  poller.Stop();
  std::vector<Clock::time_point> t = backend.poll_times();
  ASSERT_GE(t.size(), 10u);
  auto gap = [&](size_t i) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t[i + 1] - t[i]);
  };
  const std::chrono::milliseconds slack = 250ms;
  // After failures 1..6: 40, 80, 160, 320, 320 (cap), 320 ms before jitter.
  const std::chrono::milliseconds base[] = {40ms, 80ms, 160ms, 320ms, 320ms, 320ms};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_GE(gap(i), base[i] / 2) << "after failure " << i + 1;
    EXPECT_LE(gap(i), base[i] + slack) << "after failure " << i + 1;
  }
  // The 7th poll succeeded: back to the plain interval.
  for (size_t i = 6; i + 1 < t.size(); ++i) {
    EXPECT_GE(gap(i), 32ms) << "after success " << i - 5;
    EXPECT_LE(gap(i), 48ms + slack) << "after success " << i - 5;
  }
}

TEST_F(PollerTest, StopDoesNotWaitForABackOffToEnd) {
  FakeBackend backend("", 0, /*fail_polls=*/1000);
  PollerOptions o = Options(backend);
  o.poll_interval = 1000ms;  // the first back-off is at least 0.5 s
  JobControl jobs([](auto&&...) { return Status::Ok(); }, {});
  Poller poller(jobs, o);
  poller.Start();
  ASSERT_TRUE(WaitFor([&] { return backend.polls() >= 1; }));
  auto start = Clock::now();
  poller.Stop();
  EXPECT_LT(Clock::now() - start, 400ms);
  EXPECT_EQ(backend.polls(), 1);
}

TEST_F(PollerTest, FinalWaitIsBounded) {
  PollerOptions o;
  o.backend_url = "http://127.0.0.1:1";  // unreachable
  o.agent_id = "a";
  o.final_wait = 300ms;
  o.max_report_backoff = 50ms;
  JobControl jobs([](auto&&...) { return Status::Ok(); }, {});
  Poller poller(jobs, o);
  poller.Start();
  JobStatus done;
  done.state = JobState::kDone;
  std::string id = "j3";
  auto start = Clock::now();
  poller.OnEvent(JobEvent{&done, id, true});
  auto waited = Clock::now() - start;
  EXPECT_GE(waited, 300ms);
  EXPECT_LT(waited, 2s);
  poller.Stop(0ms);
}

}  // namespace
}  // namespace byoi
