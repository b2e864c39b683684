// JobControl: the one deployment a daemon runs at a time (docs/api.md, docs/backend.md).
//
// The HTTP handlers and the backend poller reach the job only through this thread-safe object. A
// job runs on its own thread (never on the API's io_context), reporting into a StatusBoard of its
// own; JobControl forwards every status change, tagged with the job's backend id, to its listeners
// (state file, metrics, console, poller).
//
// The runner is injected with RunJob's signature, so tests drive JobControl with a fake runner.
// What JobControl expects of the runner:
//   - it reports into the board it is given, which JobControl has already Start()ed;
//   - it polls the CancelToken at safe points (at least every 100 ms of work) and, once cancelled,
//     returns a kCancelled Status (CancelToken::Check() makes one) after its failure cleanup;
//   - it publishes the final status (board.Done()) BEFORE any reboot: listeners run
//     synchronously in that call, and the poller blocks there (bounded) until the backend has the
//     final status.
// If the runner returns with the board still `doing` JobControl finishes the status itself (done,
// or the returned error), so a job never stays `doing` after its thread ended.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/runner.hpp"
#include "agent/job/status.hpp"

namespace byoi {

// A job as the outside sees it: its status and the id the backend gave it ("" for jobs posted to
// the HTTP API or typed by an operator).
struct JobRecord {
  JobStatus status;
  std::string job_id;
};

// One change of the current job. `status` is null when the job was cleared (DELETE on a finished
// job): there is no job any more.
struct JobEvent {
  const JobStatus* status = nullptr;
  const std::string& job_id;
  bool step_changed = false;  // a state or step change, as opposed to byte progress
};

class JobControl {
 public:
  using Runner = std::function<Status(const Manifest& manifest, const RunOptions& options,
                                      StatusBoard& board, const CancelToken& cancel)>;
  using Listener = std::function<void(const JobEvent& event)>;

  // `runner` is RunJob in the daemon; `options` are passed to it for every job.
  JobControl(Runner runner, RunOptions options);
  // Cancels a running job and waits for its thread (the runner promises to stop within 2 s).
  ~JobControl();
  JobControl(const JobControl&) = delete;
  JobControl& operator=(const JobControl&) = delete;

  // REQUIRES: called before any Submit or Restore (listeners are not locked against changes).
  // Listeners run on the job's thread (or the caller's, for Submit's first event and Restore),
  // outside every lock of JobControl, in subscription order.
  void Subscribe(Listener listener);

  // Starts `manifest` on a new thread and returns the first status (doing/"starting"). kBusy when a
  // job is doing; the current job is then untouched. A finished job (done or error) is replaced.
  Result<JobStatus> Submit(Manifest manifest, std::string job_id = {});

  // Installs a job read back from the state file, as is (the caller already turned `doing` into
  // interrupted); listeners see it as a step change. No thread runs. Ignored while a job is doing.
  void Restore(JobRecord record);

  enum class CancelOutcome {
    kNotRunning,  // no job was doing: nothing to cancel
    kStopped,     // stopped within `wait`; its status says why (normally "Deployment cancelled.")
    kStopping,    // the token is set, the runner has not returned yet (it will at a safe point)
  };
  // Sets the job's CancelToken and waits up to `wait` for the runner to return. A job whose status
  // already ended (its thread is finishing) is not cancelled: kNotRunning once its thread is done.
  CancelOutcome Cancel(std::chrono::milliseconds wait = std::chrono::seconds(2));

  // DELETE (docs/api.md: cancel, then clear the state): Cancel(), and the job is forgotten once
  // its runner has returned, right after its final status was published, so listeners see the
  // final status and then a null one (the state file is removed). A job that is not doing is
  // forgotten at once.
  //   kNotRunning: no job was doing; a finished one is forgotten.
  //   kStopped:    the job stopped within `wait` and is forgotten.
  //   kStopping:   the runner has not returned yet; the job is forgotten when it does. Until then
  //                Snapshot() still shows it and Submit() is kBusy.
  CancelOutcome Discard(std::chrono::milliseconds wait = std::chrono::seconds(2));

  // Forgets a finished job (listeners get a null status). kBusy while a job is doing.
  Status Clear();

  // The current job, or nullopt when there is none.
  std::optional<JobRecord> Snapshot() const;
  // True while a job is doing.
  bool busy() const;

 private:
  void Publish(const JobEvent& event);
  // REQUIRES: mu_ held, and !running_ or the runner has returned. Forgets the job; true when
  // there was one to forget.
  bool ForgetLocked();
  void PublishCleared();
  void Work(std::shared_ptr<StatusBoard> board, std::shared_ptr<CancelToken> cancel,
            Manifest manifest);
  void JoinFinished();

  const Runner runner_;
  const RunOptions options_;
  std::vector<Listener> listeners_;

  // Held by Clear() and Discard() across forgetting a finished job and publishing that, and by
  // Submit() across starting a job and publishing its first event, so that listeners never see a
  // new job's first event before the previous job's clearing. Taken before mu_.
  std::mutex order_mu_;
  mutable std::mutex mu_;
  std::condition_variable finished_cv_;
  std::shared_ptr<StatusBoard> board_;   // null when there is no job
  std::shared_ptr<CancelToken> cancel_;  // the running job's token
  std::string job_id_;
  bool running_ = false;              // the worker thread has not finished the runner yet
  bool forget_when_stopped_ = false;  // Discard() was called while running_
  std::thread worker_;
};

}  // namespace byoi
