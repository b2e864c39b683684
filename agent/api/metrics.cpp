#include "agent/api/metrics.hpp"

#include <fmt/format.h>

#include "agent/base/messages.hpp"

namespace byoi {

void Metrics::OnEvent(const JobEvent& event) {
  std::lock_guard lock(mu_);
  if (event.status == nullptr) {
    running_ = false;
    return;
  }
  const JobStatus& s = *event.status;
  // A new job (or one restored from the state file): a job never goes back to doing once ended.
  bool new_job = s.started_at != current_started_at_ || (s.state == JobState::kDoing && !running_);
  if (new_job) {
    downloaded_before_ += downloaded_now_;
    written_before_ += written_now_;
    downloaded_now_ = written_now_ = 0;
    current_started_at_ = s.started_at;
    current_doing_ = false;
    step_seconds_ = {};
  }
  for (const StepStatus& p : s.progress) {
    step_seconds_[static_cast<size_t>(p.step)] = p.seconds;
    if (p.step == Step::kDownload) downloaded_now_ = p.bytes_done;
    if (p.step == Step::kWrite) written_now_ = p.bytes_done;
  }
  if (s.swarm) swarm_ = *s.swarm;
  running_ = s.state == JobState::kDoing;
  if (s.state == JobState::kDoing) {
    current_doing_ = true;
  } else if (current_doing_) {  // count an outcome once, when a job we saw running ends
    current_doing_ = false;
    if (s.state == JobState::kDone) {
      ++outcomes_["done"];
    } else if (s.code == Code::kCancelled) {
      ++outcomes_["cancelled"];
    } else {
      ++outcomes_["error"];
    }
  }
}

void Metrics::CountRequest(unsigned status_code) {
  std::lock_guard lock(mu_);
  ++requests_[status_code];
}

void Metrics::CountUnauthorized() {
  std::lock_guard lock(mu_);
  ++unauthorized_;
}

std::string Metrics::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  auto header = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  header("byoi_job_running", "gauge", "1 while a deployment is running.");
  out += fmt::format("byoi_job_running {}\n", running_ ? 1 : 0);
  header("byoi_downloaded_bytes_total", "counter",
         "Image bytes downloaded since the agent started.");
  out += fmt::format("byoi_downloaded_bytes_total {}\n", downloaded_before_ + downloaded_now_);
  header("byoi_written_bytes_total", "counter", "Bytes written to disk since the agent started.");
  out += fmt::format("byoi_written_bytes_total {}\n", written_before_ + written_now_);
  header("byoi_swarm_peers", "gauge",
         "BitTorrent peers of the last swarm download, connected now.");
  out += fmt::format("byoi_swarm_peers {}\n", swarm_.peers);
  header("byoi_swarm_received_bytes", "gauge",
         "Bytes of the last swarm download, by source: peers or the web seed (the image's URL).");
  out += fmt::format("byoi_swarm_received_bytes{{source=\"peers\"}} {}\n", swarm_.from_peers);
  out += fmt::format("byoi_swarm_received_bytes{{source=\"web_seed\"}} {}\n", swarm_.from_web_seed);
  header("byoi_swarm_uploaded_bytes", "gauge", "Bytes the last swarm download sent to peers.");
  out += fmt::format("byoi_swarm_uploaded_bytes {}\n", swarm_.uploaded);
  header("byoi_swarm_hash_failures", "gauge",
         "Pieces of the last swarm download that failed their hash check.");
  out += fmt::format("byoi_swarm_hash_failures {}\n", swarm_.hash_failures);
  header("byoi_step_duration_seconds", "gauge",
         "Time spent in each step of the current or last deployment.");
  for (Step step : kAllSteps) {
    out += fmt::format("byoi_step_duration_seconds{{step=\"{}\"}} {:.1f}\n", StepName(step),
                       step_seconds_[static_cast<size_t>(step)]);
  }
  header("byoi_jobs_total", "counter", "Deployments finished, by outcome.");
  for (const auto& [outcome, n] : outcomes_) {
    out += fmt::format("byoi_jobs_total{{outcome=\"{}\"}} {}\n", outcome, n);
  }
  header("byoi_http_requests_total", "counter", "HTTP API requests answered, by status code.");
  for (const auto& [code, n] : requests_) {
    out += fmt::format("byoi_http_requests_total{{code=\"{}\"}} {}\n", code, n);
  }
  header("byoi_api_unauthorized_total", "counter",
         "API requests refused for a missing or wrong token.");
  out += fmt::format("byoi_api_unauthorized_total {}\n", unauthorized_);
  return out;
}

}  // namespace byoi
