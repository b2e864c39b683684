// The state file: atomic saves, the interrupted conversion on load, removal on clear.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/job/state_file.hpp"

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

TEST_F(StateFileTest, GarbageIsInvalidNotACrash) {
  std::string path = (dir_ / "state.json").string();
  for (std::string text :
       {"", "{", "[]", "{\"status\": \"maybe\", \"message\": \"\", \"progress\": []}",
        "{\"status\": \"doing\"}"}) {
    ASSERT_TRUE(WriteFileAtomic(path, text).ok());
    Result<std::optional<JobRecord>> loaded = StateFile(path).Load();
    ASSERT_FALSE(loaded.ok()) << text;
    EXPECT_EQ(loaded.status().code(), Code::kInvalid) << text;
  }
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
