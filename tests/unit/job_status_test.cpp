// The status model of docs/status.md: names, JSON field names, the round trip through the state
// file form, and how the board moves a job through its steps.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/job/status.hpp"

namespace byoi {
namespace {

namespace json = boost::json;

TEST(StatusNames, AsInTheContract) {
  EXPECT_EQ(JobStateName(JobState::kDoing), "doing");
  EXPECT_EQ(JobStateName(JobState::kDone), "done");
  EXPECT_EQ(JobStateName(JobState::kError), "error");
  std::vector<std::string> steps;
  for (Step s : kAllSteps) steps.emplace_back(StepName(s));
  EXPECT_EQ(steps, (std::vector<std::string>{"download", "verify", "write", "partition",
                                             "configdrive", "bootloader", "reboot"}));
  EXPECT_EQ(StepStateName(StepState::kTodo), "todo");
  EXPECT_EQ(StepStateName(StepState::kDoing), "doing");
  EXPECT_EQ(StepStateName(StepState::kDone), "done");
  EXPECT_EQ(StepStateName(StepState::kError), "error");
  EXPECT_EQ(StepStateName(StepState::kSkipped), "skipped");
}

JobStatus Sample() {
  JobStatus s;
  s.state = JobState::kDoing;
  s.message = "writing image";
  s.detail = "";
  s.checksum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  s.servername = "web-1";
  s.elapsed_seconds = 42;
  s.started_at = 1700000000;
  StepStatus download;
  download.step = Step::kDownload;
  download.state = StepState::kDone;
  download.comment = "2.1 GiB in 19 s (113 MB/s)";
  download.bytes_done = 2254857830;
  download.bytes_total = 2254857830;
  download.seconds = 19.04;
  StepStatus write;
  write.step = Step::kWrite;
  write.state = StepState::kDoing;
  write.bytes_done = 1 << 20;
  s.progress = {download, write};
  s.warnings = {"image has no ESP"};
  return s;
}

TEST(StatusJson, FieldNames) {
  json::value expected = json::parse(R"j({"status": "doing", "message": "writing image",
    "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "servername": "web-1", "detail": "", "elapsedTime": 42, "startedAt": 1700000000,
    "progress": [
      {"step": "download", "status": "done", "comment": "2.1 GiB in 19 s (113 MB/s)",
       "bytesDone": 2254857830, "bytesTotal": 2254857830, "seconds": 19.0},
      {"step": "write", "status": "doing", "comment": "", "bytesDone": 1048576, "bytesTotal": 0,
       "seconds": 0.0}],
    "warnings": ["image has no ESP"]})j");
  json::object got = StatusToJson(Sample());
  EXPECT_EQ(json::value(got), expected) << json::serialize(got);
  // The v1 field names backends already read, in the contract's spelling.
  for (const char* key :
       {"status", "message", "checksum", "servername", "detail", "elapsedTime", "progress"}) {
    EXPECT_TRUE(got.contains(key)) << key;
  }
  for (const char* key : {"step", "status", "comment", "bytesDone", "bytesTotal"}) {
    EXPECT_TRUE(got.at("progress").at(0).as_object().contains(key)) << key;
  }
}

void ExpectSame(const JobStatus& a, const JobStatus& b) {
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.message, b.message);
  EXPECT_EQ(a.detail, b.detail);
  EXPECT_EQ(a.checksum, b.checksum);
  EXPECT_EQ(a.servername, b.servername);
  EXPECT_EQ(a.elapsed_seconds, b.elapsed_seconds);
  EXPECT_EQ(a.started_at, b.started_at);
  EXPECT_EQ(a.warnings, b.warnings);
  ASSERT_EQ(a.progress.size(), b.progress.size());
  for (size_t i = 0; i < a.progress.size(); ++i) {
    EXPECT_EQ(a.progress[i].step, b.progress[i].step);
    EXPECT_EQ(a.progress[i].state, b.progress[i].state);
    EXPECT_EQ(a.progress[i].comment, b.progress[i].comment);
    EXPECT_EQ(a.progress[i].bytes_done, b.progress[i].bytes_done);
    EXPECT_EQ(a.progress[i].bytes_total, b.progress[i].bytes_total);
    EXPECT_NEAR(a.progress[i].seconds, b.progress[i].seconds, 0.05);
  }
}

TEST(StatusJson, RoundTrip) {
  JobStatus s = Sample();
  auto back = StatusFromJson(json::serialize(StatusToJson(s)));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSame(*back, s);
  // Every state, every step state, extreme numbers and any text.
  JobStatus e;
  e.state = JobState::kError;
  e.message = std::string(msg::kChecksumPair);
  e.detail = "tab\there \"quoted\" \\back\\slash \xc3\xa9";
  e.elapsed_seconds = std::numeric_limits<int64_t>::max();
  e.started_at = -1;
  StepState states[] = {StepState::kTodo,    StepState::kDoing, StepState::kDone, StepState::kError,
                        StepState::kSkipped, StepState::kDone,  StepState::kTodo};
  size_t i = 0;
  for (Step step : kAllSteps) {
    StepStatus p;
    p.step = step;
    p.state = states[i++];
    p.bytes_done = std::numeric_limits<uint64_t>::max();
    p.bytes_total = i;
    p.comment = std::string(StepName(step)) + " comment";
    e.progress.push_back(p);
  }
  JobStatus done;
  done.state = JobState::kDone;
  done.message = "done";
  for (const JobStatus& status : {e, done, JobStatus()}) {
    auto r = StatusFromJson(json::serialize(StatusToJson(status)));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ExpectSame(*r, status);
  }
}

TEST(StatusJson, MinimalV1StatusIsRead) {
  // Only the fields a v1 status must have; the extensions are optional when reading back.
  auto r = StatusFromJson(R"({"status": "done", "message": "done", "progress": []})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->state, JobState::kDone);
  EXPECT_TRUE(r->progress.empty());
  r = StatusFromJson(R"({"status": "doing", "message": "m", "future": {"x": 1},
      "progress": [{"step": "verify", "status": "skipped", "extra": null}]})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->progress.size(), 1u);
  EXPECT_EQ(r->progress[0].step, Step::kVerify);
  EXPECT_EQ(r->progress[0].state, StepState::kSkipped);
}

TEST(StatusJson, RefusesWhatIsNotOurStatus) {
  const char* bad[] = {
      "",
      "{",
      "[]",
      "null",
      R"({})",
      R"({"status": "doing", "progress": []})",                    // no message
      R"({"status": "doing", "message": "m"})",                    // no progress
      R"({"status": "running", "message": "m", "progress": []})",  // unknown status
      R"({"status": "DOING", "message": "m", "progress": []})",
      R"({"status": 1, "message": "m", "progress": []})",
      R"({"status": "doing", "message": null, "progress": []})",
      R"({"status": "doing", "message": "m", "progress": {}})",
      R"({"status": "doing", "message": "m", "progress": [1]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "format", "status": "todo"}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "paused"}]})",
      R"({"status": "doing", "message": "m", "progress": [{"status": "todo"}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "todo",
          "bytesDone": -1}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "todo",
          "bytesDone": 1.5}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "todo",
          "comment": 7}]})",
      R"({"status": "doing", "message": "m", "elapsedTime": "42", "progress": []})",
      R"({"status": "doing", "message": "m", "detail": 1, "progress": []})",
      R"({"status": "doing", "message": "m", "checksum": null, "progress": []})",
      R"({"status": "doing", "message": "m", "warnings": "w", "progress": []})",
      R"({"status": "doing", "message": "m", "warnings": [1], "progress": []})",
      // Found by tests/fuzz/manifest_fuzz.cpp: infinite or absurd step times were accepted, and
      // written back as "Infinity", which is not JSON.
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "doing",
          "seconds": 1e999}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "doing",
          "seconds": 1e308}]})",
      R"({"status": "doing", "message": "m", "progress": [{"step": "write", "status": "doing",
          "seconds": -0.5}]})",
  };
  for (const char* text : bad) {
    auto r = StatusFromJson(text);
    EXPECT_FALSE(r.ok()) << text;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalid) << text;
    }
  }
}

// --- The board ----------------------------------------------------------------------------------

const std::vector<StepState> Steps(const JobStatus& s) {
  std::vector<StepState> out;
  for (const StepStatus& p : s.progress) out.push_back(p.state);
  return out;
}

constexpr StepState T = StepState::kTodo, D = StepState::kDoing, OK = StepState::kDone,
                    E = StepState::kError, S = StepState::kSkipped;

TEST(StatusBoard, StartsWithEveryStepTodo) {
  StatusBoard board;
  EXPECT_FALSE(board.has_job());
  board.Start("web-1");
  EXPECT_TRUE(board.has_job());
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.state, JobState::kDoing);
  EXPECT_EQ(s.message, "starting");
  EXPECT_EQ(s.servername, "web-1");
  EXPECT_GT(s.started_at, 1600000000);
  ASSERT_EQ(s.progress.size(), std::size(kAllSteps));
  for (size_t i = 0; i < s.progress.size(); ++i) {
    EXPECT_EQ(s.progress[i].step, kAllSteps[i]);
    EXPECT_EQ(s.progress[i].state, StepState::kTodo);
  }
}

TEST(StatusBoard, StepsMoveThroughTheirStates) {
  StatusBoard board;
  board.Start("web-1");
  board.BeginStep(Step::kDownload, "downloading image");
  EXPECT_EQ(board.Snapshot().message, "downloading image");
  EXPECT_EQ(Steps(board.Snapshot()), (std::vector{D, T, T, T, T, T, T}));
  board.StepProgress(Step::kDownload, 512 * 1024, 1024 * 1024);
  StepStatus p = board.Snapshot().progress[0];
  EXPECT_EQ(p.bytes_done, 512u * 1024);
  EXPECT_EQ(p.bytes_total, 1024u * 1024);
  // "<done> of <total>, <rate>, ETA <time>" (rate and ETA once time has passed).
  EXPECT_TRUE(std::regex_match(
      p.comment, std::regex(R"(512 KiB of 1\.0 MiB(, [0-9.]+ (B|kB|MB|GB)/s, ETA [0-9]+ s)?)")))
      << p.comment;
  board.StepProgress(Step::kDownload, 1024 * 1024, 1024 * 1024);
  board.FinishStep(Step::kDownload);
  p = board.Snapshot().progress[0];
  EXPECT_EQ(p.state, StepState::kDone);
  // "<bytes> in <time> (<rate>)", as in docs/status.md.
  EXPECT_TRUE(
      std::regex_match(p.comment, std::regex(R"(1\.0 MiB in [0-9]+ s \([0-9.]+ (B|kB|MB|GB)/s\))")))
      << p.comment;
  board.SetChecksum("abc123");
  board.BeginStep(Step::kVerify, "verifying image");
  board.FinishStep(Step::kVerify, "sha256 matches");
  EXPECT_EQ(board.Snapshot().progress[1].comment, "sha256 matches");
  board.SkipStep(Step::kWrite, "dry run");
  EXPECT_EQ(board.Snapshot().progress[2].comment, "dry run");
  board.BeginStep(Step::kPartition, "moving backup GPT");
  board.FinishStep(Step::kPartition);
  EXPECT_EQ(board.Snapshot().progress[3].comment, "");  // no bytes, no comment
  board.Warn("image has no ESP");
  board.Done();
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.state, JobState::kDone);
  EXPECT_EQ(s.message, "done");
  EXPECT_EQ(s.checksum, "abc123");
  EXPECT_EQ(s.warnings, std::vector<std::string>{"image has no ESP"});
  EXPECT_EQ(Steps(s), (std::vector{OK, OK, S, OK, T, T, T}));
}

TEST(StatusBoard, FailMarksTheDoingStepError) {
  StatusBoard board;
  board.Start("web-1");
  board.BeginStep(Step::kDownload, "downloading image");
  board.FinishStep(Step::kDownload);
  board.SkipStep(Step::kVerify, "no checksum");
  board.BeginStep(Step::kWrite, "writing image");
  board.Fail(Status::Error(Code::kIo, "writing at offset 4096: Input/output error",
                           msg::CantWrite("qcow2")));
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, "Can't write qcow2 on disk.");
  EXPECT_EQ(s.detail, "writing at offset 4096: Input/output error");
  EXPECT_EQ(Steps(s), (std::vector{OK, S, E, T, T, T, T}));
  // The JSON form carries the same.
  json::object j = StatusToJson(s);
  EXPECT_EQ(j.at("status"), "error");
  EXPECT_EQ(j.at("progress").at(2).at("status"), "error");
}

TEST(StatusBoard, FailBeforeAnyStepAndWithoutCatalogueMessage) {
  StatusBoard board;
  board.Start("");
  board.Fail(Status::Error(Code::kInvalid, "checksum and its type must come together",
                           std::string(msg::kChecksumPair)));
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.message, "Please provide checkSum AND checkSumType or none of them");
  EXPECT_EQ(Steps(s), (std::vector{T, T, T, T, T, T, T}));
  // The error's code is kept for programs; the step that was doing is the one in error.
  board.Start("");
  board.BeginStep(Step::kVerify, "verifying");
  board.Fail(
      Status::Error(Code::kUnsupported, "image has a backing file", msg::CantWrite("qcow2")));
  EXPECT_EQ(board.Snapshot().message, "Can't write qcow2 on disk.");
  EXPECT_EQ(board.Snapshot().detail, "image has a backing file");
  EXPECT_EQ(board.Snapshot().code, Code::kUnsupported);
  EXPECT_EQ(board.Snapshot().progress[1].state, StepState::kError);
  EXPECT_EQ(boost::json::value_to<std::string>(StatusToJson(board.Snapshot()).at("code")),
            "unsupported");
  Result<JobStatus> back = StatusFromJson(boost::json::serialize(StatusToJson(board.Snapshot())));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->code, Code::kUnsupported);
}

TEST(StatusBoard, StartResetsAndRestoreReplaces) {
  StatusBoard board;
  board.Start("a");
  board.BeginStep(Step::kDownload, "x");
  board.Fail(Status::Error(Code::kIo, "d", "m"));
  board.Start("b");
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.state, JobState::kDoing);
  EXPECT_EQ(s.message, "starting");
  EXPECT_EQ(s.detail, "");
  EXPECT_EQ(s.servername, "b");
  EXPECT_EQ(Steps(s), (std::vector{T, T, T, T, T, T, T}));

  JobStatus restored = Sample();
  restored.state = JobState::kError;
  restored.message = std::string(msg::kInterrupted);
  board.Restore(restored);
  s = board.Snapshot();
  EXPECT_EQ(s.message, "Deployment interrupted: the agent restarted.");
  EXPECT_EQ(s.elapsed_seconds, 42);  // a finished job's time does not run on
  EXPECT_EQ(s.progress.size(), 2u);
}

TEST(StatusBoard, ListenersSeeChangesAndRateLimitedProgress) {
  StatusBoard board;
  std::vector<std::pair<std::string, bool>> seen;
  board.Subscribe(
      [&](const JobStatus& s, bool step_changed) { seen.emplace_back(s.message, step_changed); });
  board.Start("web-1");
  board.BeginStep(Step::kDownload, "downloading image");
  size_t before = seen.size();
  for (int i = 1; i <= 100; ++i) board.StepProgress(Step::kDownload, i * 1000u, 100000);
  size_t progress_events = seen.size() - before;
  EXPECT_LE(progress_events, 1u);  // at most once a second
  for (size_t i = before; i < seen.size(); ++i) EXPECT_FALSE(seen[i].second);
  board.FinishStep(Step::kDownload);
  board.Fail(Status::Error(Code::kIo, "d", std::string(msg::kCancelled)));
  ASSERT_GE(seen.size(), 4u);
  EXPECT_EQ(seen[0], std::make_pair(std::string("starting"), true));
  EXPECT_EQ(seen[1], std::make_pair(std::string("downloading image"), true));
  EXPECT_EQ(seen.back(), std::make_pair(std::string("Deployment cancelled."), true));
}

// Text from outside, as the red team fed it: an origin's reason phrase with OSC and CSI sequences
// and bytes that are not UTF-8.
constexpr char kHostileReason[] = "HTTP 500 \x1b]0;pwned\x07\x1b[2J\xff\xfe";
constexpr char kCleanReason[] = "HTTP 500 \\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe";

// True when `text` is valid UTF-8 holding no C0/C1 control but TAB, no DEL: what every output of
// the status may carry.
bool Clean(std::string_view text) {
  return IsPrintableText(text) && text.find_first_of("\x1b\x07\xff") == std::string_view::npos;
}

TEST(StatusBoard, FailWithAHostileDetailGivesValidUtf8JsonThatReadsBack) {
  StatusBoard board;
  board.Start("web-1");
  board.BeginStep(Step::kDownload, "downloading image");
  board.Fail(Status::Error(Code::kIo, kHostileReason,
                           msg::DownloadFailed("http://127.0.0.1/\x1b[2J.raw")));
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.detail, kCleanReason);
  EXPECT_EQ(s.message, "Could not download image located: http://127.0.0.1/\\x1b[2J.raw.");
  std::string text = json::serialize(StatusToJson(s));
  EXPECT_TRUE(IsPrintableText(text)) << "the JSON is not printable UTF-8: " << text;
  // Boost.JSON's strict parser (invalid UTF-8 refused) accepts it...
  std::error_code ec;
  json::parse(text, ec);
  EXPECT_FALSE(ec) << ec.message();
  // ...and it reads back as it was written.
  auto back = StatusFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSame(*back, s);
}

TEST(StatusBoard, EverySetterCleansItsText) {
  StatusBoard board;
  board.Start(kHostileReason);
  board.BeginStep(Step::kDownload, kHostileReason);
  EXPECT_EQ(board.Snapshot().message, kCleanReason);
  board.FinishStep(Step::kDownload, kHostileReason);
  board.SkipStep(Step::kVerify, kHostileReason);
  board.SetChecksum(kHostileReason);
  board.Warn(kHostileReason);
  JobStatus s = board.Snapshot();
  EXPECT_EQ(s.servername, kCleanReason);
  EXPECT_EQ(s.progress[0].comment, kCleanReason);
  EXPECT_EQ(s.progress[1].comment, kCleanReason);
  EXPECT_EQ(s.checksum, kCleanReason);
  EXPECT_EQ(s.warnings, std::vector<std::string>{kCleanReason});
  board.Done(kHostileReason);
  EXPECT_EQ(board.Snapshot().message, kCleanReason);
  // The detail is cleaned as well.
  board.Start("");
  board.Fail(Status::Error(Code::kIo, kHostileReason, msg::DownloadFailed("http://h/x.raw")));
  EXPECT_EQ(board.Snapshot().message, "Could not download image located: http://h/x.raw.");
  EXPECT_EQ(board.Snapshot().detail, kCleanReason);

  JobStatus restored = Sample();
  restored.message = restored.detail = restored.checksum = restored.servername = kHostileReason;
  restored.progress[0].comment = kHostileReason;
  restored.warnings = {kHostileReason};
  board.Restore(restored);
  s = board.Snapshot();
  for (const std::string* text : {&s.message, &s.detail, &s.checksum, &s.servername,
                                  &s.progress[0].comment, &s.warnings[0]}) {
    EXPECT_EQ(*text, kCleanReason);
  }
  // What listeners get (API, backend, console, state file) is the same clean status.
  std::vector<std::string> seen;
  board.Subscribe([&](const JobStatus& status, bool) { seen.push_back(status.detail); });
  board.Start("");
  board.Fail(Status::Error(Code::kIo, std::string(100000, '\x1b'), msg::CantWrite("raw")));
  ASSERT_FALSE(seen.empty());
  EXPECT_TRUE(Clean(seen.back()));
  EXPECT_LE(seen.back().size(), kMaxPrintableBytes);
}

TEST(StatusJson, StringsWithBytesThatAreNotUtf8AreReadAndCleaned) {
  // What an older agent wrote for the red team's reason phrase: Boost.JSON escaped the controls
  // (\u001b) and copied the bytes 0xFF 0xFE as they were.
  std::string text =
      "{\"status\": \"error\", \"message\": \"m\", "
      "\"detail\": \"HTTP 500 \\u001b]0;pwned\\u0007\\u001b[2J\xff\xfe\", "
      "\"progress\": [{\"step\": \"download\", \"status\": \"error\", \"comment\": \"\xff\"}], "
      "\"warnings\": [\"\xc0\x80\"]}";
  std::error_code ec;
  json::parse(text, ec);
  ASSERT_TRUE(ec) << "the strict parser must refuse this text, or the test proves nothing";
  auto r = StatusFromJson(text);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->detail, kCleanReason);
  EXPECT_EQ(r->progress[0].comment, "\\xff");
  EXPECT_EQ(r->warnings, std::vector<std::string>{"\\xc0\\x80"});
  // Escaped controls in a file that is valid UTF-8.
  auto escaped =
      StatusFromJson(R"({"status": "done", "message": "\u001b[2J\u0000", "progress": []})");
  ASSERT_TRUE(escaped.ok()) << escaped.status().ToString();
  EXPECT_EQ(escaped->message, "\\x1b[2J\\x00");
}

// The status examples of proto/examples (which test_proto.py checks against the schema) are what
// this code writes and reads back.
TEST(StatusExamples, ValidOnesAreReadAndWrittenAsGiven) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(std::string(BYOI_SOURCE_DIR) +
                                                           "/proto/examples/status/valid")) {
    files.push_back(e.path());
  }
  ASSERT_GE(files.size(), 5u);
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    auto status = StatusFromJson(text);
    ASSERT_TRUE(status.ok()) << status.status().ToString();
    json::value given = json::parse(text);
    // Complete examples (every field this code writes) come back identical.
    if (given.as_object().contains("startedAt")) {
      EXPECT_EQ(json::value(StatusToJson(*status)), given);
    }
  }
}

TEST(StatusExamples, InvalidOnesAreRefused) {
  for (const auto& e : std::filesystem::directory_iterator(std::string(BYOI_SOURCE_DIR) +
                                                           "/proto/examples/status/invalid")) {
    // Reading a state file does not police the catalogue; only the schema does.
    if (e.path().stem() == "error-not-catalogue") continue;
    std::ifstream in(e.path());
    std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_FALSE(StatusFromJson(text).ok()) << e.path();
  }
}

}  // namespace
}  // namespace byoi
