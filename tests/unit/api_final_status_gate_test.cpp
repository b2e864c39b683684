#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "agent/api/final_status_gate.hpp"

namespace byoi {
namespace {

using namespace std::chrono_literals;

JobStatus WithState(JobState state) {
  JobStatus s;
  s.state = state;
  return s;
}

// Sends `status` to the gate on another thread; the future is ready once OnEvent returned.
std::future<void> Send(FinalStatusGate& gate, JobState state) {
  return std::async(std::launch::async, [&gate, state] {
    JobStatus status = WithState(state);
    std::string id;
    gate.OnEvent(JobEvent{&status, id, true});
  });
}

TEST(FinalStatusGate, DoneWaitsUntilAClientReadTheFinalStatus) {
  FinalStatusGate gate(10s);
  Send(gate, JobState::kDoing).get();
  std::future<void> done = Send(gate, JobState::kDone);
  EXPECT_EQ(done.wait_for(300ms), std::future_status::timeout);
  gate.Served();
  EXPECT_EQ(done.wait_for(2s), std::future_status::ready);
}

TEST(FinalStatusGate, AReadBeforeDoneIsPublishedCounts) {
  FinalStatusGate gate(10s);
  Send(gate, JobState::kDoing).get();
  gate.Served();  // a GET raced ahead of the listener
  EXPECT_EQ(Send(gate, JobState::kDone).wait_for(2s), std::future_status::ready);
}

TEST(FinalStatusGate, AReadOfAnEarlierJobDoesNotCount) {
  FinalStatusGate gate(10s);
  gate.Served();
  Send(gate, JobState::kDoing).get();
  std::future<void> done = Send(gate, JobState::kDone);
  EXPECT_EQ(done.wait_for(300ms), std::future_status::timeout);
  gate.Served();
  done.get();
}

TEST(FinalStatusGate, GivesUpAfterItsWait) {
  FinalStatusGate gate(200ms);
  Send(gate, JobState::kDoing).get();
  auto start = std::chrono::steady_clock::now();
  Send(gate, JobState::kDone).get();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 200ms);
}

TEST(FinalStatusGate, ErrorsAndRestoredJobsPassAtOnce) {
  FinalStatusGate gate(10s);
  Send(gate, JobState::kDoing).get();
  EXPECT_EQ(Send(gate, JobState::kError).wait_for(2s), std::future_status::ready);
  // A done job restored from the state file at start-up was never doing in this process.
  FinalStatusGate fresh(10s);
  EXPECT_EQ(Send(fresh, JobState::kDone).wait_for(2s), std::future_status::ready);
}

}  // namespace
}  // namespace byoi
