// JobControl with fake runners: one job at a time, cancellation within 2 s, clear, restore, and the
// events its listeners see.
#include "agent/job/job_control.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/messages.hpp"

namespace byoi {
namespace {

using namespace std::chrono_literals;

Manifest TestManifest(std::string hostname = "web-1") {
  Manifest m;
  m.url = "http://127.0.0.1/image.raw";
  m.config_drive.hostname = std::move(hostname);
  return m;
}

// A runner that downloads slowly: progress every 10 ms, checking the token like a real stage, until
// cancelled or `release` is set.
struct SlowRunner {
  std::atomic<bool>* release;
  Status operator()(const Manifest&, const RunOptions&, StatusBoard& board,
                    const CancelToken& cancel) const {
    board.BeginStep(Step::kDownload, "downloading image");
    for (uint64_t done = 0; !release->load(); done += 4096) {
      if (Status s = cancel.Check(); !s.ok()) {
        board.Fail(s);
        return s;
      }
      board.StepProgress(Step::kDownload, done, 1 << 30);
      std::this_thread::sleep_for(10ms);
    }
    board.FinishStep(Step::kDownload);
    board.Done();
    return Status::Ok();
  }
};

// Waits until the job's first step is `doing` (the runner is at work); false after 5 s.
bool WaitUntilWorking(JobControl& jobs) {
  for (int i = 0; i < 500; ++i) {
    std::optional<JobRecord> job = jobs.Snapshot();
    if (job && job->status.progress[0].state == StepState::kDoing) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// What listeners saw, in order: each step change's message, "cleared" for a null status.
class EventLog {
 public:
  void Attach(JobControl& jobs) {
    jobs.Subscribe([this](const JobEvent& e) {
      std::lock_guard lock(mu_);
      if (!e.status) {
        seen_.push_back("cleared");
      } else if (e.step_changed) {
        seen_.push_back(e.status->message);
      }
    });
  }
  std::vector<std::string> seen() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> seen_;
};

// A runner stuck in a write that ignores the token (a bug) until `release` is set, then fails.
struct StuckRunner {
  std::atomic<bool>* release;
  Status operator()(const Manifest&, const RunOptions&, StatusBoard& board,
                    const CancelToken&) const {
    board.BeginStep(Step::kWrite, "writing image");
    while (!release->load()) std::this_thread::sleep_for(5ms);
    return Status::Error(Code::kIo, "disk gone", "Can't write raw on disk.");
  }
};

JobStatus WaitUntilEnded(JobControl& jobs) {
  for (int i = 0; i < 500 && jobs.busy(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(jobs.busy());
  return jobs.Snapshot()->status;
}

TEST(JobControlTest, NoJobAtFirst) {
  JobControl jobs([](auto&&...) { return Status::Ok(); }, {});
  EXPECT_FALSE(jobs.Snapshot().has_value());
  EXPECT_FALSE(jobs.busy());
  EXPECT_EQ(jobs.Cancel(), JobControl::CancelOutcome::kNotRunning);
}

TEST(JobControlTest, SubmitRunsTheJobOnItsOwnThreadAndReturnsStarting) {
  std::atomic<bool> release{false};
  std::thread::id runner_thread;
  JobControl jobs(
      [&](const Manifest& m, const RunOptions& o, StatusBoard& b, const CancelToken& c) {
        runner_thread = std::this_thread::get_id();
        return SlowRunner{&release}(m, o, b, c);
      },
      {});
  Result<JobStatus> first = jobs.Submit(TestManifest());
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->state, JobState::kDoing);
  EXPECT_EQ(first->message, "starting");
  EXPECT_EQ(first->servername, "web-1");
  EXPECT_TRUE(jobs.busy());
  release = true;
  JobStatus end = WaitUntilEnded(jobs);
  EXPECT_EQ(end.state, JobState::kDone);
  EXPECT_NE(runner_thread, std::this_thread::get_id());
}

TEST(JobControlTest, SecondSubmitWhileDoingIsBusyAndLeavesTheJobAlone) {
  std::atomic<bool> release{false};
  JobControl jobs(SlowRunner{&release}, {});
  ASSERT_TRUE(jobs.Submit(TestManifest("first"), "job-1").ok());
  Result<JobStatus> second = jobs.Submit(TestManifest("second"), "job-2");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kBusy);
  EXPECT_EQ(jobs.Snapshot()->status.servername, "first");
  EXPECT_EQ(jobs.Snapshot()->job_id, "job-1");
  release = true;
  WaitUntilEnded(jobs);
  // A finished job is replaced by the next one.
  ASSERT_TRUE(jobs.Submit(TestManifest("third"), "job-3").ok());
  EXPECT_EQ(jobs.Snapshot()->job_id, "job-3");
  WaitUntilEnded(jobs);
}

TEST(JobControlTest, CancelStopsTheJobWithin2SecondsWithTheCatalogueMessage) {
  std::atomic<bool> release{false};
  JobControl jobs(SlowRunner{&release}, {});
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  ASSERT_TRUE(WaitUntilWorking(jobs));
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(jobs.Cancel(), JobControl::CancelOutcome::kStopped);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_FALSE(jobs.busy());
  JobStatus s = jobs.Snapshot()->status;
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, msg::kCancelled);
  EXPECT_EQ(s.progress[0].state, StepState::kError);
}

TEST(JobControlTest, CancelOfARunnerThatDoesNotStopReportsStopping) {
  std::atomic<bool> release{false};
  JobControl jobs(StuckRunner{&release}, {});
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  EXPECT_EQ(jobs.Cancel(100ms), JobControl::CancelOutcome::kStopping);
  EXPECT_TRUE(jobs.busy());
  EXPECT_EQ(jobs.Submit(TestManifest()).status().code(), Code::kBusy);
  release = true;
  JobStatus s = WaitUntilEnded(jobs);
  // The user asked for the cancellation: that is what the status says, the cause is kept.
  EXPECT_EQ(s.message, msg::kCancelled);
  EXPECT_EQ(s.detail, "disk gone");
}

TEST(JobControlTest, RunnerThatLeavesTheBoardDoingIsFinishedForIt) {
  JobControl done([](auto&&...) { return Status::Ok(); }, {});
  ASSERT_TRUE(done.Submit(TestManifest()).ok());
  EXPECT_EQ(WaitUntilEnded(done).state, JobState::kDone);

  JobControl failed(
      [](auto&&...) { return Status::Error(Code::kIo, "HTTP 404", "Could not download."); }, {});
  ASSERT_TRUE(failed.Submit(TestManifest()).ok());
  JobStatus s = WaitUntilEnded(failed);
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, "Could not download.");
  EXPECT_EQ(s.detail, "HTTP 404");
  EXPECT_EQ(s.code, Code::kIo);

  // A failure without a catalogue sentence (a bug) still ends with one: message is never a detail.
  JobControl unnamed([](auto&&...) { return Status::Error(Code::kInternal, "unexpected state"); },
                     {});
  ASSERT_TRUE(unnamed.Submit(TestManifest()).ok());
  s = WaitUntilEnded(unnamed);
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, msg::CantWrite("raw"));
  EXPECT_EQ(s.detail, "unexpected state");
  EXPECT_EQ(s.code, Code::kInternal);
}

TEST(JobControlTest, RunnerExceptionBecomesAnErrorNotACrash) {
  JobControl jobs([](auto&&...) -> Status { throw std::runtime_error("boom"); }, {});
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  JobStatus s = WaitUntilEnded(jobs);
  EXPECT_EQ(s.state, JobState::kError);
  EXPECT_EQ(s.message, msg::CantWrite("raw"));
  EXPECT_EQ(s.detail, "uncaught exception: boom");
  EXPECT_EQ(s.code, Code::kInternal);
}

TEST(JobControlTest, ClearForgetsAFinishedJobButNotARunningOne) {
  std::atomic<bool> release{false};
  JobControl jobs(SlowRunner{&release}, {});
  std::vector<bool> cleared;
  jobs.Subscribe([&](const JobEvent& e) {
    if (!e.status) cleared.push_back(true);
  });
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  EXPECT_EQ(jobs.Clear().code(), Code::kBusy);
  EXPECT_TRUE(jobs.Snapshot().has_value());
  release = true;
  WaitUntilEnded(jobs);
  EXPECT_TRUE(jobs.Clear().ok());
  EXPECT_FALSE(jobs.Snapshot().has_value());
  EXPECT_EQ(cleared.size(), 1u);
  EXPECT_TRUE(jobs.Clear().ok());  // nothing to clear: no event
  EXPECT_EQ(cleared.size(), 1u);
}

// DELETE (docs/api.md): the job is cancelled, its final status published, then it is forgotten
// (listeners see a null status: the state file goes), all before Discard() returns.
TEST(JobControlTest, DiscardCancelsThenForgetsTheJobBeforeReturning) {
  std::atomic<bool> release{false};
  JobControl jobs(SlowRunner{&release}, {});
  EventLog events;
  events.Attach(jobs);
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  ASSERT_TRUE(WaitUntilWorking(jobs));
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(jobs.Discard(), JobControl::CancelOutcome::kStopped);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_FALSE(jobs.busy());
  EXPECT_FALSE(jobs.Snapshot().has_value());
  EXPECT_EQ(events.seen(), (std::vector<std::string>{"starting", "downloading image",
                                                     std::string(msg::kCancelled), "cleared"}));
  // Nothing is left to forget; a new job may start.
  EXPECT_EQ(jobs.Discard(), JobControl::CancelOutcome::kNotRunning);
  EXPECT_EQ(events.seen().size(), 4u);
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  release = true;
  EXPECT_EQ(WaitUntilEnded(jobs).state, JobState::kDone);
}

// A runner that does not stop within the wait: kStopping; the job stays visible (and blocks a new
// one) until the runner returns, and is forgotten then.
TEST(JobControlTest, DiscardOfARunnerThatDoesNotStopForgetsItWhenItDoes) {
  std::atomic<bool> release{false};
  JobControl jobs(StuckRunner{&release}, {});
  EventLog events;
  events.Attach(jobs);
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  EXPECT_EQ(jobs.Discard(100ms), JobControl::CancelOutcome::kStopping);
  ASSERT_TRUE(jobs.Snapshot().has_value());
  EXPECT_EQ(jobs.Snapshot()->status.state, JobState::kDoing);
  EXPECT_EQ(jobs.Submit(TestManifest()).status().code(), Code::kBusy);
  release = true;
  for (int i = 0; i < 500 && jobs.busy(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(jobs.busy());
  EXPECT_FALSE(jobs.Snapshot().has_value());
  EXPECT_EQ(events.seen(), (std::vector<std::string>{"starting", "writing image",
                                                     std::string(msg::kCancelled), "cleared"}));
}

TEST(JobControlTest, DiscardForgetsAFinishedJobAtOnce) {
  JobControl jobs([](auto&&...) { return Status::Error(Code::kIo, "HTTP 404", "Could not."); }, {});
  EventLog events;
  events.Attach(jobs);
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  WaitUntilEnded(jobs);
  EXPECT_EQ(jobs.Discard(), JobControl::CancelOutcome::kNotRunning);
  EXPECT_FALSE(jobs.Snapshot().has_value());
  EXPECT_EQ(events.seen(), (std::vector<std::string>{"starting", "Could not.", "cleared"}));
  // Cancel() alone (the daemon's shutdown) keeps the job and its state.
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  WaitUntilEnded(jobs);
  EXPECT_EQ(jobs.Cancel(), JobControl::CancelOutcome::kNotRunning);
  EXPECT_TRUE(jobs.Snapshot().has_value());
}

TEST(JobControlTest, ListenersSeeEveryStepChangeWithTheJobId) {
  JobControl jobs(
      [](const Manifest&, const RunOptions&, StatusBoard& board, const CancelToken&) {
        board.BeginStep(Step::kDownload, "downloading image");
        board.FinishStep(Step::kDownload, "1 KiB");
        board.SkipStep(Step::kBootloader, "legacy BIOS");
        board.Done();
        return Status::Ok();
      },
      {});
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> seen;  // job id, message
  jobs.Subscribe([&](const JobEvent& e) {
    std::lock_guard lock(mu);
    if (e.status && e.step_changed) seen.emplace_back(e.job_id, e.status->message);
  });
  ASSERT_TRUE(jobs.Submit(TestManifest(), "job-7").ok());
  WaitUntilEnded(jobs);
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen.front().second, "starting");
  EXPECT_EQ(seen[1].second, "downloading image");
  EXPECT_EQ(seen.back().second, "done");
  for (const auto& [id, message] : seen) EXPECT_EQ(id, "job-7");
}

TEST(JobControlTest, RestoreInstallsAFinishedJobWithoutRunningIt) {
  bool ran = false;
  JobControl jobs(
      [&](auto&&...) {
        ran = true;
        return Status::Ok();
      },
      {});
  int events = 0;
  jobs.Subscribe([&](const JobEvent& e) {
    EXPECT_EQ(e.job_id, "job-9");
    EXPECT_TRUE(e.step_changed);
    ++events;
  });
  JobStatus s;
  s.state = JobState::kError;
  s.message = std::string(msg::kInterrupted);
  jobs.Restore({s, "job-9"});
  EXPECT_FALSE(ran);
  EXPECT_FALSE(jobs.busy());
  EXPECT_EQ(events, 1);
  EXPECT_EQ(jobs.Snapshot()->status.message, msg::kInterrupted);
  EXPECT_EQ(jobs.Snapshot()->job_id, "job-9");
}

TEST(JobControlTest, RunOptionsReachTheRunner) {
  RunOptions options;
  options.job.disk = "/dev/loop7";
  options.job.reboot = RebootMode::kNone;
  std::string disk;
  JobControl jobs(
      [&](const Manifest&, const RunOptions& o, StatusBoard&, const CancelToken&) {
        disk = o.job.disk;
        return Status::Ok();
      },
      options);
  ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  WaitUntilEnded(jobs);
  EXPECT_EQ(disk, "/dev/loop7");
}

TEST(JobControlTest, DestructorCancelsARunningJob) {
  std::atomic<bool> release{false};
  auto start = std::chrono::steady_clock::now();
  {
    JobControl jobs(SlowRunner{&release}, {});
    ASSERT_TRUE(jobs.Submit(TestManifest()).ok());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

}  // namespace
}  // namespace byoi
