// The state file: atomic saves, the interrupted conversion on load, removal on clear.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/job/state_file.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

class StateFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("byoi-state-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static JobStatus Downloading() {
    StatusBoard board;
    board.Start("web-1");
    board.BeginStep(Step::kDownload, "downloading image");
    board.StepProgress(Step::kDownload, 1000, 4000);
    return board.Snapshot();
  }

  fs::path dir_;
};

TEST_F(StateFileTest, MissingFileIsNoJob) {
  StateFile state((dir_ / "state.json").string());
  Result<std::optional<JobRecord>> loaded = state.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_FALSE(loaded->has_value());
}

TEST_F(StateFileTest, SaveCreatesTheDirectoryAndLoadReadsBackAFinishedJob) {
  std::string path = (dir_ / "run" / "byoi-agent" / "state.json").string();
  StateFile state(path);
  JobStatus status = Downloading();
  status.state = JobState::kDone;
  status.message = "done";
  status.progress[0].state = StepState::kDone;
  ASSERT_TRUE(state.Save({status, "job-42"}).ok());
  struct stat st;
  ASSERT_EQ(::stat((dir_ / "run" / "byoi-agent").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  Result<std::optional<JobRecord>> loaded = state.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  const JobRecord& record = **loaded;
  EXPECT_EQ(record.job_id, "job-42");
  EXPECT_EQ(record.status.state, JobState::kDone);
  EXPECT_EQ(record.status.message, "done");
  EXPECT_EQ(record.status.servername, "web-1");
  EXPECT_EQ(record.status.progress[0].bytes_done, 1000u);
  // No temp file is left next to it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ / "run" / "byoi-agent"), {}), 1);
}

TEST_F(StateFileTest, ADoingJobComesBackAsInterrupted) {
  StateFile state((dir_ / "state.json").string());
  ASSERT_TRUE(state.Save({Downloading(), ""}).ok());
  Result<std::optional<JobRecord>> loaded = state.Load();
  ASSERT_TRUE(loaded.ok());
  const JobStatus& s = (*loaded)->status;
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, msg::kInterrupted);
  EXPECT_EQ(s.message, "Deployment interrupted: the agent restarted.");
  EXPECT_EQ(s.detail, "the agent stopped during step download");
  EXPECT_EQ(s.progress[0].state, StepState::kError);
  EXPECT_EQ(s.progress[1].state, StepState::kTodo);
}

// A file that is no status at all still names a job: the last one's outcome is unknown, and
// that is what a backend or an operator is told, rather than "no job".
TEST_F(StateFileTest, GarbageBecomesAnErrorRecordNotACrash) {
  std::string path = (dir_ / "state.json").string();
  for (std::string text : {"", "{", "[]", "null", "\xff\xfe",
                           "{\"status\": \"maybe\", \"message\": \"\", \"progress\": []}",
                           "{\"status\": \"doing\"}", "{\"jobId\": \"job-9\", \"status\": 7}"}) {
    ASSERT_TRUE(WriteFileAtomic(path, text).ok());
    Result<std::optional<JobRecord>> loaded = StateFile(path).Load();
    ASSERT_TRUE(loaded.ok()) << text << ": " << loaded.status().ToString();
    ASSERT_TRUE(loaded->has_value()) << text;
    const JobStatus& s = (*loaded)->status;
    EXPECT_EQ(s.state, JobState::kError) << text;
    EXPECT_EQ(s.message, msg::kInterrupted) << text;
    EXPECT_EQ(s.progress.size(), std::size(kAllSteps)) << text;
    EXPECT_TRUE(IsPrintableText(s.detail)) << s.detail;
    if (text == "{\"status\": \"doing\"}") {
      // The state was readable: a `doing` job is an interrupted one, and the damage is a warning.
      EXPECT_EQ(s.detail, "the agent stopped during step starting");
      ASSERT_EQ(s.warnings.size(), 1u);
      EXPECT_EQ(s.warnings[0].find("the state file " + path + " is damaged ("), 0u)
          << s.warnings[0];
    } else {
      EXPECT_EQ(s.detail.find("the state file " + path + " is damaged ("), 0u) << s.detail;
      EXPECT_NE(s.detail.find("): the outcome of the last job is unknown"), std::string::npos)
          << s.detail;
    }
  }
  // The job id of a file whose state cannot be read is kept.
  EXPECT_EQ(StateFile(path).Load().value()->job_id, "job-9");
}

TEST_F(StateFileTest, AFileOverOneMiBIsAnErrorRecordToo) {
  std::string path = (dir_ / "state.json").string();
  ASSERT_TRUE(WriteFileAtomic(path, std::string((1 << 20) + 1, ' ')).ok());
  Result<std::optional<JobRecord>> loaded = StateFile(path).Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->status.message, msg::kInterrupted);
  EXPECT_NE((*loaded)->status.detail.find("larger than 1048576 bytes"), std::string::npos)
      << (*loaded)->status.detail;
}

// The red team's case: a failed job whose detail held a reason phrase with escape sequences and
// bytes 0xFF 0xFE, written raw by an older agent (Boost.JSON escapes the controls, copies the
// rest).
TEST_F(StateFileTest, AFileWithInvalidUtf8FromAnOlderAgentIsRecovered) {
  std::string path = (dir_ / "state.json").string();
  std::string old =
      "{\"status\":\"error\",\"message\":\"Could not download image located: "
      "http://127.0.0.1:8080/image.raw.\",\"checksum\":\"\",\"servername\":\"web-1\","
      "\"detail\":\"HTTP 500 \\u001b]0;pwned\\u0007\\u001b[2J\xff\xfe\",\"elapsedTime\":3,"
      "\"startedAt\":1700000000,\"progress\":[{\"step\":\"download\",\"status\":\"error\","
      "\"comment\":\"\",\"bytesDone\":0,\"bytesTotal\":0,\"seconds\":0.2}],\"warnings\":[],"
      "\"jobId\":\"job-7\"}\n";
  ASSERT_TRUE(WriteFileAtomic(path, old).ok());
  Result<std::optional<JobRecord>> loaded = StateFile(path).Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  const JobRecord& r = **loaded;
  EXPECT_EQ(r.job_id, "job-7");
  EXPECT_EQ(r.status.state, JobState::kError);
  EXPECT_EQ(r.status.message, "Could not download image located: http://127.0.0.1:8080/image.raw.");
  EXPECT_EQ(r.status.detail, "HTTP 500 \\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe");
  EXPECT_EQ(r.status.servername, "web-1");
  EXPECT_EQ(r.status.progress.at(0).state, StepState::kError);
  EXPECT_TRUE(r.status.warnings.empty()) << "nothing was lost: no warning";

  // Saved again, the file is valid UTF-8 JSON, and reads back the same.
  StateFile state(path);
  ASSERT_TRUE(state.Save(r).ok());
  std::string text = testing::ReadAll(path);
  EXPECT_TRUE(IsPrintableText(text.substr(0, text.size() - 1))) << text;
  std::error_code ec;
  boost::json::parse(text, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(state.Load().value()->status.detail, r.status.detail);
}

// Whatever the length a file was cut to, the job comes back: its id, its state and message as far
// as they were written, printable text, every step.
TEST_F(StateFileTest, AFileCutAnywhereStillGivesTheLastJob) {
  StatusBoard board;
  board.Start("web-1");
  board.BeginStep(Step::kDownload, "downloading image");
  board.FinishStep(Step::kDownload, "1 MiB in 1 s");
  board.BeginStep(Step::kVerify, "verifying image");
  board.Warn("no checksum given");
  board.Fail(Status::Error(Code::kInvalid, "sha256 of 1048576 bytes differs",
                           msg::ChecksumMismatch("sha256", "aa", "bb")));
  const JobStatus failed = board.Snapshot();
  const std::string whole = StateToJson({failed, "job-42"});
  ASSERT_EQ(whole.find("{\"jobId\":\"job-42\","), 0u) << "jobId must come first: " << whole;
  const size_t id_end = whole.find(',');
  const size_t message_end = whole.find("\",\"checksum\"");  // its closing quote
  ASSERT_NE(message_end, std::string::npos);

  std::string path = (dir_ / "state.json").string();
  // (The whole text but its final newline is complete JSON: nothing is damaged there.)
  for (size_t len = 0; len + 1 < whole.size(); ++len) {
    SCOPED_TRACE("cut at " + std::to_string(len) + ": " + whole.substr(0, len));
    testing::WriteAll(path, whole.substr(0, len));
    Result<std::optional<JobRecord>> loaded = StateFile(path).Load();
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    ASSERT_TRUE(loaded->has_value());
    const JobRecord& r = **loaded;
    const JobStatus& s = r.status;
    EXPECT_EQ(s.state, JobState::kError);
    EXPECT_FALSE(s.message.empty());
    ASSERT_EQ(s.progress.size(), std::size(kAllSteps));
    for (size_t i = 0; i < s.progress.size(); ++i) EXPECT_EQ(s.progress[i].step, kAllSteps[i]);
    EXPECT_TRUE(IsPrintableText(s.detail));
    if (len > id_end) {
      EXPECT_EQ(r.job_id, "job-42");
    }
    if (len > message_end) {
      EXPECT_EQ(s.message, failed.message);
    } else {
      EXPECT_EQ(s.message, msg::kInterrupted);
    }
    // Nothing is silent: either the detail or a warning says the file was damaged.
    bool said = s.detail.find(" is damaged (") != std::string::npos;
    for (const std::string& w : s.warnings) said |= w.find(" is damaged (") != std::string::npos;
    EXPECT_TRUE(said);
  }
  // Cut just before its last bytes, everything but the end is back.
  ASSERT_TRUE(WriteFileAtomic(path, whole.substr(0, whole.size() - 3)).ok());
  JobRecord r = **StateFile(path).Load();
  EXPECT_EQ(r.status.detail, failed.detail);
  EXPECT_EQ(r.status.progress[0].comment, "1 MiB in 1 s");
  EXPECT_EQ(r.status.progress[1].state, StepState::kError);
  EXPECT_EQ(r.status.warnings.at(0), "no checksum given");
}

TEST_F(StateFileTest, SavedTextIsCleanWhateverTheStatusHolds) {
  JobStatus s = Downloading();
  s.detail = "\x1b]0;pwned\x07\xff";  // not through the board
  std::string text = StateToJson({s, "job-1"});
  EXPECT_EQ(text.find("\x1b"), std::string::npos);
  EXPECT_EQ(text.find("\\u001b"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("detail":"\\x1b]0;pwned\\x07\\xff")"), std::string::npos) << text;
}

TEST_F(StateFileTest, EventsSaveOnStepChangesAndRemoveOnClear) {
  std::string path = (dir_ / "state.json").string();
  StateFile state(path);
  JobStatus s = Downloading();
  std::string id = "job-1";
  state.OnEvent(JobEvent{&s, id, true});
  ASSERT_TRUE(fs::exists(path));
  Result<std::string> text = ReadSmallFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find("\"jobId\":\"job-1\""), std::string::npos);
  EXPECT_NE(text->find("\"status\":\"doing\""), std::string::npos);

  // Byte progress right after a save is not written (at most every 5 s)...
  s.progress[0].bytes_done = 2000;
  state.OnEvent(JobEvent{&s, id, false});
  EXPECT_EQ(StateFile(path).Load().value()->status.progress[0].bytes_done, 1000u);
  // ...a step change always is.
  state.OnEvent(JobEvent{&s, id, true});
  EXPECT_EQ(StateFile(path).Load().value()->status.progress[0].bytes_done, 2000u);

  std::string none;
  state.OnEvent(JobEvent{nullptr, none, true});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(state.Remove().ok());  // already gone: fine
}

TEST_F(StateFileTest, MarkInterruptedLeavesFinishedJobsAlone) {
  JobStatus done;
  done.state = JobState::kDone;
  done.message = "done";
  EXPECT_EQ(MarkInterrupted(done).message, "done");
  JobStatus error;
  error.state = JobState::kError;
  error.message = std::string(msg::kCancelled);
  EXPECT_EQ(MarkInterrupted(error).message, msg::kCancelled);
}

}  // namespace
}  // namespace byoi
