#include "agent/api/poller.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <ctime>

#include "agent/base/messages.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Reports kept while the backend is unreachable; the oldest progress reports go first.
constexpr size_t kMaxQueuedReports = 1000;
constexpr size_t kMaxJobIdLength = 256;

}  // namespace

Poller::Poller(JobControl& jobs, PollerOptions options)
    : jobs_(jobs),
      options_(std::move(options)),
      client_(&abort_, options_.ca_bundle),
      rng_(std::random_device{}()) {}

Poller::~Poller() { Stop(milliseconds(0)); }

void Poller::Start() { thread_ = std::thread(&Poller::Loop, this); }

void Poller::Stop(milliseconds flush) {
  if (!thread_.joinable()) return;
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    flush_deadline_ = Clock::now() + flush;
    wake_.notify_all();
    // Give the thread its flush time, then cut a transfer that still hangs.
    delivered_.wait_until(lock, flush_deadline_, [this] { return queue_.empty(); });
  }
  abort_ = true;
  wake_.notify_all();
  thread_.join();
}

std::string Poller::JobUrl() const {
  return options_.backend_url + "/v1/agents/" + EscapePathSegment(options_.agent_id) + "/job";
}

std::string Poller::StatusUrl(const std::string& job_id) const {
  return options_.backend_url + "/v1/agents/" + EscapePathSegment(options_.agent_id) + "/jobs/" +
         EscapePathSegment(job_id) + "/status";
}

milliseconds Poller::Jitter(milliseconds base, double low, double high) {
  std::uniform_real_distribution<double> factor(low, high);
  return milliseconds(static_cast<int64_t>(static_cast<double>(base.count()) * factor(rng_)));
}

void Poller::Enqueue(Report report) {
  // REQUIRES: mu_ held.
  if (!report.step_changed && !queue_.empty()) {
    Report& back = queue_.back();
    bool back_in_flight = in_flight_ && queue_.size() == 1;
    if (!back.step_changed && back.job_id == report.job_id && !back_in_flight) {
      back = std::move(report);
      return;
    }
  }
  queue_.push_back(std::move(report));
  if (queue_.size() > kMaxQueuedReports) {
    auto victim = std::find_if(queue_.begin() + (in_flight_ ? 1 : 0), queue_.end(),
                               [](const Report& r) { return r.status.state == JobState::kDoing; });
    if (victim != queue_.end()) queue_.erase(victim);
  }
}

void Poller::OnEvent(const JobEvent& event) {
  if (event.job_id.empty() || event.status == nullptr) return;  // not a backend job
  const JobStatus& status = *event.status;
  std::unique_lock lock(mu_);
  current_job_ = event.job_id;
  if (status.state != JobState::kDoing) finished_job_ = event.job_id;
  Enqueue(Report{event.job_id, status, event.step_changed});
  wake_.notify_all();

  if (status.state != JobState::kDone || options_.final_wait.count() == 0) return;
  // The runner reboots when this returns: hold it until the backend has the final status.
  const std::string id = event.job_id;
  bool delivered = delivered_.wait_for(lock, options_.final_wait, [&] {
    return std::none_of(queue_.begin(), queue_.end(), [&](const Report& r) {
      return r.job_id == id && r.status.state != JobState::kDoing;
    });
  });
  if (delivered) {
    spdlog::info("poller: final status of job {} delivered to the backend", id);
  } else {
    spdlog::error(
        "poller: could not deliver the final status of job {} within {} s; going on "
        "(rebooting) without telling the backend",
        id, options_.final_wait.count() / 1000);
  }
}

bool Poller::PollOnce() {
  Result<HttpResult> answer = client_.Send("GET", JobUrl(), "", options_.token,
                                           options_.request_timeout, kMaxManifestBytes + 4096);
  if (!answer.ok()) {
    spdlog::warn("poller: {}", answer.status().ToString());
    return false;
  }
  if (answer->status == 204) return true;
  if (answer->status != 200) {
    spdlog::warn("poller: backend answered HTTP {} to the job request", answer->status);
    return false;
  }

  std::error_code ec;
  json::value root = json::parse(answer->body, ec);
  const json::object* o = !ec ? root.if_object() : nullptr;
  const json::value* id_value = o ? o->if_contains("jobId") : nullptr;
  const json::value* manifest_value = o ? o->if_contains("manifest") : nullptr;
  if (!id_value || !id_value->is_string() || id_value->get_string().empty() ||
      id_value->get_string().size() > kMaxJobIdLength || !manifest_value) {
    spdlog::warn("poller: the backend's job is not {{\"jobId\": string, \"manifest\": object}}");
    return false;
  }
  std::string job_id(id_value->get_string());
  {
    std::lock_guard lock(mu_);
    if (job_id == finished_job_) {
      spdlog::debug("poller: backend handed out job {} again; it already ended", job_id);
      return true;
    }
  }

  Result<Manifest> manifest = ParseManifest(json::serialize(*manifest_value));
  if (!manifest.ok()) {
    const Status& s = manifest.status();
    spdlog::info("poller: job {} refused: {}", job_id, s.ToString());
    JobStatus refused;
    refused.state = JobState::kError;
    refused.message = s.message().empty() ? s.detail() : s.message();
    refused.detail = s.detail();
    refused.started_at = static_cast<int64_t>(std::time(nullptr));
    for (Step step : kAllSteps) {
      StepStatus todo;
      todo.step = step;
      refused.progress.push_back(todo);
    }
    std::lock_guard lock(mu_);
    finished_job_ = job_id;
    // Built here, not on a StatusBoard: made printable as the board would (a detail quoting the
    // manifest may end inside a UTF-8 sequence).
    Enqueue(Report{job_id, PrintableStatus(std::move(refused)), true});
    return true;
  }

  std::string summary = json::serialize(ManifestToJson(*manifest));  // secrets redacted
  Result<JobStatus> started = jobs_.Submit(std::move(*manifest), job_id);
  if (!started.ok()) {
    spdlog::info("poller: job {} must wait: {}", job_id, started.status().ToString());
    return true;
  }
  spdlog::info("poller: deployment accepted from the backend: job {}: {}", job_id, summary);
  return true;
}

bool Poller::SendFront() {
  Report report;
  {
    std::lock_guard lock(mu_);
    report = queue_.front();
    in_flight_ = true;
  }
  Result<HttpResult> answer =
      client_.Send("PUT", StatusUrl(report.job_id), json::serialize(StatusToJson(report.status)),
                   options_.token, options_.request_timeout, 64 * 1024);
  std::lock_guard lock(mu_);
  in_flight_ = false;
  if (answer.ok() && answer->status >= 200 && answer->status < 300) {
    queue_.pop_front();
    last_report_ = Clock::now();
    delivered_.notify_all();
    return true;
  }
  if (!answer.ok()) {
    spdlog::warn("poller: status of job {}: {}", report.job_id, answer.status().ToString());
  } else {
    spdlog::warn("poller: backend answered HTTP {} to the status of job {}; retrying",
                 answer->status, report.job_id);
  }
  return false;
}

void Poller::Loop() {
  spdlog::info("poller: polling {} as agent {}", msg::ShownUrl(JobUrl()), options_.agent_id);
  Clock::time_point next_poll = Clock::now();
  Clock::time_point retry_at = Clock::now();
  int poll_failures = 0, report_failures = 0;

  std::unique_lock lock(mu_);
  for (;;) {
    Clock::time_point now = Clock::now();
    if (stopping_ && (queue_.empty() || now >= flush_deadline_ || abort_)) break;

    if (!queue_.empty() && now >= retry_at) {
      lock.unlock();
      bool ok = SendFront();
      lock.lock();
      if (ok) {
        report_failures = 0;
      } else {
        milliseconds backoff = std::min(milliseconds(500) * (1 << std::min(report_failures, 16)),
                                        options_.max_report_backoff);
        ++report_failures;
        retry_at = Clock::now() + Jitter(backoff, 0.5, 1.0);
      }
      continue;
    }

    // While a backend job runs, report at least every `heartbeat` even when nothing changed.
    std::optional<Clock::time_point> heartbeat_at;
    if (queue_.empty() && !current_job_.empty() && current_job_ != finished_job_) {
      heartbeat_at = last_report_ + options_.heartbeat;
      if (now >= *heartbeat_at) {
        std::optional<JobRecord> job = jobs_.Snapshot();
        if (job && job->job_id == current_job_ && job->status.state == JobState::kDoing) {
          Enqueue(Report{job->job_id, std::move(job->status), false});
          continue;
        }
        heartbeat_at.reset();
      }
    }

    if (!stopping_ && queue_.empty() && now >= next_poll) {
      if (jobs_.busy()) {
        next_poll = now + options_.poll_interval;  // nothing to take while a job runs
        continue;
      }
      lock.unlock();
      bool ok = PollOnce();
      lock.lock();
      if (ok) {
        poll_failures = 0;
        next_poll = Clock::now() + Jitter(options_.poll_interval, 0.8, 1.2);
      } else {
        milliseconds backoff = std::min(options_.poll_interval * (1 << std::min(poll_failures, 16)),
                                        options_.max_poll_backoff);
        ++poll_failures;
        next_poll = Clock::now() + Jitter(backoff, 0.5, 1.0);
      }
      continue;
    }

    Clock::time_point until = now + std::chrono::seconds(60);
    if (!queue_.empty()) until = std::min(until, retry_at);
    if (!stopping_ && queue_.empty()) until = std::min(until, next_poll);
    if (heartbeat_at) until = std::min(until, *heartbeat_at);
    if (stopping_) until = std::min(until, flush_deadline_);
    wake_.wait_until(lock, until);
  }
  if (!queue_.empty()) {
    spdlog::warn("poller: stopping with {} status report(s) the backend did not get",
                 queue_.size());
  }
}

}  // namespace byoi
