#include "agent/job/job_control.hpp"

#include <spdlog/spdlog.h>

#include <exception>
#include <utility>

#include "agent/base/messages.hpp"

namespace byoi {

JobControl::JobControl(Runner runner, RunOptions options)
    : runner_(std::move(runner)), options_(std::move(options)) {}

JobControl::~JobControl() {
  if (Cancel() == CancelOutcome::kStopping) {
    spdlog::warn("the job did not stop within 2 s of cancellation; waiting for it");
  }
  JoinFinished();
}

void JobControl::Subscribe(Listener listener) { listeners_.push_back(std::move(listener)); }

void JobControl::Publish(const JobEvent& event) {
  for (const Listener& listener : listeners_) listener(event);
}

void JobControl::JoinFinished() {
  std::thread worker;
  {
    std::lock_guard lock(mu_);
    worker = std::move(worker_);
  }
  if (worker.joinable()) worker.join();
}

Result<JobStatus> JobControl::Submit(Manifest manifest, std::string job_id) {
  // Each job has a board of its own, so that events of a job can never carry another job's id.
  auto board = std::make_shared<StatusBoard>();
  auto cancel = std::make_shared<CancelToken>();
  board->Subscribe([this, job_id](const JobStatus& status, bool step_changed) {
    Publish(JobEvent{&status, job_id, step_changed});
  });

  std::lock_guard order(order_mu_);
  std::thread previous;
  {
    std::lock_guard lock(mu_);
    if (running_) {
      return Status::Error(Code::kBusy, "a deployment is already running",
                           "A deployment is already in progress.");
    }
    running_ = true;
    forget_when_stopped_ = false;
    board_ = board;
    cancel_ = cancel;
    job_id_ = job_id;
    previous = std::move(worker_);
  }
  // The previous runner has returned (running_ was false); only its thread's epilogue is left.
  if (previous.joinable()) previous.join();

  board->Start(manifest.config_drive.hostname);
  JobStatus first = board->Snapshot();
  std::lock_guard lock(mu_);
  worker_ = std::thread(&JobControl::Work, this, board, cancel, std::move(manifest));
  return first;
}

void JobControl::Work(std::shared_ptr<StatusBoard> board, std::shared_ptr<CancelToken> cancel,
                      Manifest manifest) {
  Status result;
  try {
    result = runner_(manifest, options_, *board, *cancel);
  } catch (const std::exception& e) {  // a bug in a stage must not take the daemon down
    // The job's message stays a catalogue sentence; the bug shows in the detail.
    result = Status::Error(Code::kInternal, std::string("uncaught exception: ") + e.what(),
                           msg::CantWrite(ImageTypeName(manifest.type)));
  }

  JobStatus after = board->Snapshot();
  if (cancel->cancelled() && !result.ok() && after.code != Code::kCancelled) {
    // Cancellation may surface as another error (an aborted transfer); the user asked for it, so
    // say so, keeping the technical cause.
    board->Fail(Status::Error(Code::kCancelled, result.detail(), std::string(msg::kCancelled)));
  } else if (after.state == JobState::kDoing) {
    if (result.ok()) {
      board->Done();
    } else {
      board->Fail(result.message().empty() ? std::move(result).DefaultMessage(
                                                 msg::CantWrite(ImageTypeName(manifest.type)))
                                           : result);
    }
  }

  // The one report of the job's end (stages return errors, they do not log them).
  JobStatus final = board->Snapshot();
  if (final.state == JobState::kDone) {
    spdlog::info("deployment done in {} s", final.elapsed_seconds);
  } else {
    spdlog::error(
        "deployment failed: {}{}", final.message,
        final.detail.empty() || final.detail == final.message ? "" : " (" + final.detail + ")");
  }

  // A job discarded while it ran is forgotten now, after its final status and before running_
  // drops: no new job can start (and publish) in between, and a DELETE waiting in Discard() answers
  // only once the state is cleared.
  bool forgot = false;
  {
    std::lock_guard lock(mu_);
    forgot = forget_when_stopped_ && ForgetLocked();
  }
  if (forgot) PublishCleared();
  {
    std::lock_guard lock(mu_);
    running_ = false;
    forget_when_stopped_ = false;
  }
  finished_cv_.notify_all();
}

void JobControl::Restore(JobRecord record) {
  auto board = std::make_shared<StatusBoard>();
  board->Subscribe([this, id = record.job_id](const JobStatus& status, bool step_changed) {
    Publish(JobEvent{&status, id, step_changed});
  });
  {
    std::lock_guard lock(mu_);
    if (running_) return;
    board_ = board;
    job_id_ = record.job_id;
  }
  board->Restore(std::move(record.status));
}

JobControl::CancelOutcome JobControl::Cancel(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  if (!running_) return CancelOutcome::kNotRunning;
  // A job whose status already ended is only finishing its thread (or holding the final status
  // for the backend): nothing to cancel, it is as good as not running once the thread is done.
  bool ended = board_->Snapshot().state != JobState::kDoing;
  if (!ended) cancel_->Cancel();
  bool stopped = finished_cv_.wait_for(lock, wait, [this] { return !running_; });
  if (!stopped) return CancelOutcome::kStopping;
  return ended ? CancelOutcome::kNotRunning : CancelOutcome::kStopped;
}

JobControl::CancelOutcome JobControl::Discard(std::chrono::milliseconds wait) {
  std::unique_lock order(order_mu_);
  std::unique_lock lock(mu_);
  if (!running_) {
    bool forgot = ForgetLocked();
    lock.unlock();
    if (forgot) PublishCleared();
    return CancelOutcome::kNotRunning;
  }
  // The worker publishes the clearing itself, before running_ drops: a Submit meanwhile is kBusy.
  order.unlock();
  bool ended = board_->Snapshot().state != JobState::kDoing;
  if (!ended) cancel_->Cancel();
  forget_when_stopped_ = true;
  bool stopped = finished_cv_.wait_for(lock, wait, [this] { return !running_; });
  if (!stopped) return CancelOutcome::kStopping;
  return ended ? CancelOutcome::kNotRunning : CancelOutcome::kStopped;
}

bool JobControl::ForgetLocked() {
  if (!board_) return false;
  board_.reset();
  job_id_.clear();
  return true;
}

void JobControl::PublishCleared() {
  std::string no_id;
  Publish(JobEvent{nullptr, no_id, true});
}

Status JobControl::Clear() {
  std::lock_guard order(order_mu_);
  {
    std::lock_guard lock(mu_);
    if (running_) return Status::Error(Code::kBusy, "a deployment is running");
    if (!ForgetLocked()) return Status::Ok();
  }
  PublishCleared();
  return Status::Ok();
}

std::optional<JobRecord> JobControl::Snapshot() const {
  std::shared_ptr<StatusBoard> board;
  std::string id;
  {
    std::lock_guard lock(mu_);
    if (!board_) return std::nullopt;
    board = board_;
    id = job_id_;
  }
  return JobRecord{board->Snapshot(), std::move(id)};
}

bool JobControl::busy() const {
  std::lock_guard lock(mu_);
  return running_;
}

}  // namespace byoi
