// The HTTP API handler, request by request, without a socket (docs/api.md).
#include "agent/api/api_handler.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <thread>

#include "agent/base/messages.hpp"
#include "tests/unit/log_capture.hpp"

namespace byoi {
namespace {

namespace http = boost::beast::http;
namespace json = boost::json;
using namespace std::chrono_literals;

constexpr const char* kToken = "t0ken-with-enough-entropy";
constexpr const char* kManifest =
    R"({"URL": "http://127.0.0.1:1/image.raw", "type": "raw", "configdrive": {"enable": true, "hostname": "web-1"}})";

class ApiHandlerTest : public ::testing::Test {
 protected:
  ApiHandlerTest()
      : jobs_(
            [this](const Manifest&, const RunOptions&, StatusBoard& board,
                   const CancelToken& cancel) {
              board.BeginStep(Step::kDownload, "downloading image");
              while (!release_) {
                if (Status s = cancel.Check(); !s.ok()) return s;
                std::this_thread::sleep_for(5ms);
              }
              board.Done();
              return Status::Ok();
            },
            {}),
        handler_(
            jobs_, metrics_, [this] { return disks_(); }, kToken) {
    jobs_.Subscribe([this](const JobEvent& e) { metrics_.OnEvent(e); });
  }
  ~ApiHandlerTest() override { release_ = true; }

  HttpResponse Send(http::verb method, std::string target, std::string body = {},
                    std::string auth = std::string("Bearer ") + kToken) {
    HttpRequest req{method, target, 11};
    if (!auth.empty()) req.set(http::field::authorization, auth);
    req.body() = std::move(body);
    req.prepare_payload();
    return handler_.Handle(req);
  }
  static std::string Message(const HttpResponse& res) {
    EXPECT_EQ(res[http::field::content_type], "application/json");
    return std::string(json::parse(res.body()).as_object().at("message").as_string());
  }
  void WaitIdle() {
    for (int i = 0; i < 400 && jobs_.busy(); ++i) std::this_thread::sleep_for(5ms);
  }

  std::atomic<bool> release_{false};
  Metrics metrics_;
  JobControl jobs_;
  std::function<Result<json::value>()> disks_ = [] {
    return json::value(json::object{{"disks", json::array{}}});
  };
  ApiHandler handler_;
};

TEST_F(ApiHandlerTest, HealthzNeedsNoToken) {
  HttpResponse res = Send(http::verb::get, "/healthz", "", "");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(res.body(), "ok\n");
  res = Send(http::verb::post, "/healthz", "", "");
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(res[http::field::allow], "GET, HEAD");
}

// RFC 9110 §9.3.2: HEAD answers with GET's header, Content-Length included, and no content; no
// answer to HEAD has a body, whatever its status.
TEST_F(ApiHandlerTest, HeadHealthzIsGetWithoutTheBody) {
  HttpResponse res = Send(http::verb::head, "/healthz", "", "");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(res[http::field::content_type], "text/plain");
  EXPECT_EQ(res[http::field::content_length], "3");
  EXPECT_EQ(res.body(), "");
  res = Send(http::verb::head, "/v1/bringYourOwnImage");
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(res.body(), "");
  EXPECT_EQ(Send(http::verb::head, "/metrics", "", "").result_int(), 401);
}

TEST_F(ApiHandlerTest, EverythingElseNeedsTheTokenAnd401SaysNothing) {
  for (const char* target : {"/v1/bringYourOwnImage", "/v1/disks", "/metrics", "/nope"}) {
    for (std::string auth :
         {std::string(), std::string("Bearer wrong"), std::string("Basic ") + kToken,
          std::string("Bearer ") + kToken + "x", std::string("Bearer "), std::string("Bearer")}) {
      HttpResponse res = Send(http::verb::get, target, "", auth);
      EXPECT_EQ(res.result_int(), 401) << target << " " << auth;
      EXPECT_EQ(res.body(), "");
      EXPECT_EQ(res[http::field::www_authenticate], "Bearer");
    }
  }
  // An unauthenticated POST starts nothing.
  EXPECT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest, "").result_int(), 401);
  EXPECT_FALSE(jobs_.Snapshot().has_value());
}

// The header check the HTTP server runs before any body: the right token authenticates the
// connection; /healthz passes without one (and does not authenticate); the rest gets 401.
TEST_F(ApiHandlerTest, CheckHeaderTellsTheServerWhoAuthenticated) {
  auto check = [&](http::verb method, const char* target, std::string auth) {
    HttpRequest req{method, target, 11};
    if (!auth.empty()) req.set(http::field::authorization, auth);
    return handler_.CheckHeader(req, "192.0.2.7");
  };
  HeaderVerdict v =
      check(http::verb::post, "/v1/bringYourOwnImage", std::string("Bearer ") + kToken);
  EXPECT_TRUE(v.authenticated);
  EXPECT_FALSE(v.refusal);
  v = check(http::verb::get, "/healthz", std::string("Bearer ") + kToken);
  EXPECT_TRUE(v.authenticated);
  v = check(http::verb::get, "/healthz", "");
  EXPECT_FALSE(v.authenticated);
  EXPECT_FALSE(v.refusal);
  v = check(http::verb::get, "/healthz", "Bearer wrong");
  EXPECT_FALSE(v.authenticated);
  EXPECT_FALSE(v.refusal);
  v = check(http::verb::delete_, "/v1/bringYourOwnImage", "Bearer wrong");
  EXPECT_FALSE(v.authenticated);
  ASSERT_TRUE(v.refusal);
  EXPECT_EQ(v.refusal->result_int(), 401);
  EXPECT_EQ(v.refusal->body(), "");
}

// Failed logins are counted and logged with the client's address, never with the token it gave,
// one line per 10 s however many there are.
TEST_F(ApiHandlerTest, FailedLoginsAreCountedAndLoggedOncePerPeriodWithoutTheToken) {
  LogCapture log;
  for (int i = 0; i < 50; ++i) {
    HttpRequest req{http::verb::get, "/v1/disks?x=secret-query", 11};
    req.set(http::field::authorization, "Bearer guessed-token-" + std::to_string(i));
    EXPECT_TRUE(handler_.CheckHeader(req, "192.0.2.7").refusal);
  }
  HttpRequest bare{http::verb::post, "/v1/bringYourOwnImage", 11};
  EXPECT_TRUE(handler_.CheckHeader(bare, "192.0.2.8").refusal);
  EXPECT_EQ(Send(http::verb::get, "/metrics", "", "Bearer also-guessed").result_int(), 401);
  EXPECT_EQ(log.Matching("unauthorized"),
            (std::vector<std::string>{
                "warning api: unauthorized request from 192.0.2.7: GET /v1/disks (wrong token)"}));
  for (const std::string& line : log.Lines()) {
    EXPECT_EQ(line.find("guessed"), std::string::npos) << line;
    EXPECT_EQ(line.find("secret-query"), std::string::npos) << line;
  }
  std::string metrics = Send(http::verb::get, "/metrics").body();
  EXPECT_NE(metrics.find("# TYPE byoi_api_unauthorized_total counter\n"
                         "byoi_api_unauthorized_total 52\n"),
            std::string::npos)
      << metrics;
}

TEST_F(ApiHandlerTest, BearerSchemeIsCaseInsensitive) {
  EXPECT_TRUE(BearerTokenMatches(std::string("bearer ") + kToken, kToken));
  EXPECT_TRUE(BearerTokenMatches(std::string("BEARER ") + kToken, kToken));
  EXPECT_FALSE(BearerTokenMatches("Bearer ", ""));  // an empty token never matches
  EXPECT_FALSE(BearerTokenMatches(std::string("Bearer ") + kToken, ""));
}

TEST_F(ApiHandlerTest, UnknownPaths404AndWrongMethods405WithJsonBodies) {
  HttpResponse res = Send(http::verb::get, "/v2/bringYourOwnImage");
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_EQ(Message(res), "Not found.");
  res = Send(http::verb::put, "/v1/bringYourOwnImage", kManifest);
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(Message(res), "Method not allowed.");
  EXPECT_EQ(res[http::field::allow], "GET, POST, DELETE");
  res = Send(http::verb::delete_, "/v1/disks");
  EXPECT_EQ(res.result_int(), 405);
  EXPECT_EQ(res[http::field::allow], "GET");
  EXPECT_EQ(Send(http::verb::post, "/metrics").result_int(), 405);
}

TEST_F(ApiHandlerTest, QueryStringsAreIgnoredForRouting) {
  EXPECT_EQ(Send(http::verb::get, "/healthz?x=1", "", "").result_int(), 200);
  EXPECT_EQ(Send(http::verb::get, "/v1/bringYourOwnImage?verbose").result_int(), 404);  // no job
}

TEST_F(ApiHandlerTest, BadManifestsGet400WithTheExactCatalogueMessage) {
  struct Case {
    std::string body;
    std::string message;
  } cases[] = {
      {R"({"URL": "http://h/x", "type": "vmdk"})", std::string(msg::kBadFormat)},
      {R"({"URL": "http://h/x", "type": "raw", "checkSum": "ab", "checkSumType": "crc32"})",
       std::string(msg::kBadChecksumType)},
      {R"({"URL": "http://h/x", "type": "raw", "checkSum": "ab"})",
       std::string(msg::kChecksumPair)},
  };
  for (const Case& c : cases) {
    HttpResponse res = Send(http::verb::post, "/v1/bringYourOwnImage", c.body);
    EXPECT_EQ(res.result_int(), 400) << c.body;
    EXPECT_EQ(Message(res), c.message);
  }
  HttpResponse res = Send(http::verb::post, "/v1/bringYourOwnImage", "not json");
  EXPECT_EQ(res.result_int(), 400);
  EXPECT_EQ(Message(res).rfind("Invalid manifest: ", 0), 0u) << Message(res);
  EXPECT_FALSE(jobs_.Snapshot().has_value());
}

TEST_F(ApiHandlerTest, PostStartsAJobGetShowsItSecondPostIs409) {
  HttpResponse res = Send(http::verb::post, "/v1/bringYourOwnImage", kManifest);
  ASSERT_EQ(res.result_int(), 202) << res.body();
  json::object status = json::parse(res.body()).as_object();
  EXPECT_EQ(status.at("status"), "doing");
  EXPECT_EQ(status.at("message"), "starting");
  EXPECT_EQ(status.at("servername"), "web-1");
  EXPECT_EQ(status.at("progress").as_array().size(), 7u);

  res = Send(http::verb::post, "/v1/bringYourOwnImage", kManifest);
  EXPECT_EQ(res.result_int(), 409);
  EXPECT_EQ(Message(res), "A deployment is already in progress.");

  res = Send(http::verb::get, "/v1/bringYourOwnImage");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(json::parse(res.body()).at("status"), "doing");

  release_ = true;
  WaitIdle();
  res = Send(http::verb::get, "/v1/bringYourOwnImage");
  EXPECT_EQ(json::parse(res.body()).at("status"), "done");
  // A finished job is replaced by a new POST.
  release_ = false;
  EXPECT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest).result_int(), 202);
}

// docs/api.md: DELETE cancels the job and clears the state; the next GET is 404.
TEST_F(ApiHandlerTest, DeleteCancelsWithin2SecondsAndClears) {
  ASSERT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest).result_int(), 202);
  auto start = std::chrono::steady_clock::now();
  HttpResponse res = Send(http::verb::delete_, "/v1/bringYourOwnImage");
  EXPECT_EQ(res.result_int(), 204);
  EXPECT_EQ(res.body(), "");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_FALSE(jobs_.busy());

  res = Send(http::verb::get, "/v1/bringYourOwnImage");
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_EQ(Message(res), "No deployment.");
  EXPECT_EQ(Send(http::verb::delete_, "/v1/bringYourOwnImage").result_int(), 204);  // idempotent
  EXPECT_EQ(Send(http::verb::get, "/v1/bringYourOwnImage").result_int(), 404);
  // A new job may be posted at once.
  EXPECT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest).result_int(), 202);
}

TEST_F(ApiHandlerTest, DeleteOfAFinishedJobClearsIt) {
  ASSERT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest).result_int(), 202);
  release_ = true;
  WaitIdle();
  ASSERT_EQ(Send(http::verb::get, "/v1/bringYourOwnImage").result_int(), 200);
  EXPECT_EQ(Send(http::verb::delete_, "/v1/bringYourOwnImage").result_int(), 204);
  EXPECT_EQ(Send(http::verb::get, "/v1/bringYourOwnImage").result_int(), 404);
}

// A runner that does not stop within 2 s: DELETE answers 202 with the status (still doing), GET
// shows that status until the runner returns, and 404 from then on.
TEST(ApiHandlerStoppingTest, A202DeleteClearsTheJobOnceItStops) {
  std::atomic<bool> release{false};
  JobControl jobs(
      [&](const Manifest&, const RunOptions&, StatusBoard& board, const CancelToken&) {
        board.BeginStep(Step::kWrite, "writing image");
        while (!release) std::this_thread::sleep_for(5ms);  // ignores the token, like a stuck write
        return Status::Error(Code::kIo, "disk gone", "Can't write raw on disk.");
      },
      {});
  Metrics metrics;
  ApiHandler handler(
      jobs, metrics, [] { return Result<json::value>(json::value()); }, kToken);
  auto send = [&](http::verb method, std::string body = {}) {
    HttpRequest req{method, "/v1/bringYourOwnImage", 11};
    req.set(http::field::authorization, std::string("Bearer ") + kToken);
    req.body() = std::move(body);
    req.prepare_payload();
    return handler.Handle(req);
  };
  ASSERT_EQ(send(http::verb::post, kManifest).result_int(), 202);
  HttpResponse res = send(http::verb::delete_);
  ASSERT_EQ(res.result_int(), 202);
  json::object status = json::parse(res.body()).as_object();
  EXPECT_EQ(status.at("status"), "doing");
  EXPECT_EQ(status.at("message"), "writing image");
  res = send(http::verb::get);
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(json::parse(res.body()).at("status"), "doing");
  EXPECT_EQ(send(http::verb::post, kManifest).result_int(), 409);

  release = true;
  for (int i = 0; i < 400 && jobs.busy(); ++i) std::this_thread::sleep_for(5ms);
  ASSERT_FALSE(jobs.busy());
  res = send(http::verb::get);
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_EQ(json::parse(res.body()).at("message"), "No deployment.");
}

TEST_F(ApiHandlerTest, DisksComeFromTheSeam) {
  HttpResponse res = Send(http::verb::get, "/v1/disks");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(json::parse(res.body()), json::parse(R"({"disks": []})"));
  disks_ = [] { return Result<json::value>(Status::Error(Code::kIo, "sysfs unreadable")); };
  res = Send(http::verb::get, "/v1/disks");
  EXPECT_EQ(res.result_int(), 500);
  EXPECT_EQ(Message(res), "Could not list disks.");
}

TEST_F(ApiHandlerTest, MetricsArePrometheusText) {
  ASSERT_EQ(Send(http::verb::post, "/v1/bringYourOwnImage", kManifest).result_int(), 202);
  EXPECT_EQ(Send(http::verb::delete_, "/v1/bringYourOwnImage").result_int(), 204);
  Send(http::verb::get, "/nope", "", "");
  HttpResponse res = Send(http::verb::get, "/metrics");
  ASSERT_EQ(res.result_int(), 200);
  EXPECT_EQ(res[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = res.body();
  for (const char* line :
       {"# TYPE byoi_job_running gauge\nbyoi_job_running 0\n",
        "# TYPE byoi_downloaded_bytes_total counter\n",
        "byoi_step_duration_seconds{step=\"download\"} ",
        "byoi_jobs_total{outcome=\"cancelled\"} 1\n", "byoi_jobs_total{outcome=\"done\"} 0\n",
        "byoi_http_requests_total{code=\"202\"} 1\n", "byoi_http_requests_total{code=\"401\"} 1\n",
        "# TYPE byoi_api_unauthorized_total counter\nbyoi_api_unauthorized_total 1\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n---\n" << text;
  }
  // Every sample line is `name{labels} value` or `name value`, each family announced first.
  std::istringstream in(text);
  std::string l, family;
  while (std::getline(in, l)) {
    if (l.rfind("# TYPE ", 0) == 0) {
      family = l.substr(7, l.find(' ', 7) - 7);
      continue;
    }
    if (l.rfind("# HELP ", 0) == 0) continue;
    EXPECT_EQ(l.rfind(family, 0), 0u) << l;
    EXPECT_NE(l.find(' '), std::string::npos);
  }
}

TEST(MetricsSwarm, TheLastSwarmDownloadsFigures) {
  Metrics metrics;
  EXPECT_NE(metrics.Render().find("byoi_swarm_peers 0\n"), std::string::npos);
  JobStatus status;
  status.started_at = 1;
  status.swarm = SwarmStatus{4, 3000, 1000, 9000, 2, true};
  const std::string id = "job";
  metrics.OnEvent(JobEvent{&status, id, true});
  const std::string text = metrics.Render();
  for (const char* line : {"# TYPE byoi_swarm_peers gauge\nbyoi_swarm_peers 4\n",
                           "byoi_swarm_received_bytes{source=\"peers\"} 3000\n",
                           "byoi_swarm_received_bytes{source=\"web_seed\"} 1000\n",
                           "byoi_swarm_uploaded_bytes 9000\n", "byoi_swarm_hash_failures 2\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n---\n" << text;
  }
}

TEST_F(ApiHandlerTest, KeepAliveFollowsTheRequest) {
  HttpRequest req{http::verb::get, "/healthz", 11};
  req.keep_alive(false);
  EXPECT_FALSE(handler_.Handle(req).keep_alive());
  req.keep_alive(true);
  EXPECT_TRUE(handler_.Handle(req).keep_alive());
  HttpRequest old{http::verb::get, "/healthz", 10};
  EXPECT_EQ(handler_.Handle(old).version(), 10u);
}

}  // namespace
}  // namespace byoi
