// Metrics for GET /metrics (docs/api.md), in the Prometheus text exposition format 0.0.4:
// bytes downloaded and written, step durations of the current (or last) job, job outcomes, and the
// API's own request count and failed logins. Fed by the JobControl listener and the HTTP handler;
// thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "agent/job/job_control.hpp"

namespace byoi {

class Metrics {
 public:
  // A JobControl listener.
  void OnEvent(const JobEvent& event);
  // Counts one answered HTTP request.
  void CountRequest(unsigned status_code);
  // Counts one request refused for a missing or wrong token (byoi_api_unauthorized_total).
  void CountUnauthorized();

  // The whole exposition, "# HELP" and "# TYPE" lines included, ending with a newline.
  std::string Render() const;

 private:
  mutable std::mutex mu_;
  // Bytes of finished jobs, plus the current job's (kept apart so a job's progress is not counted
  // twice as it grows).
  uint64_t downloaded_before_ = 0, written_before_ = 0;
  uint64_t downloaded_now_ = 0, written_now_ = 0;
  int64_t current_started_at_ = -1;
  bool current_doing_ = false;
  bool running_ = false;
  std::array<double, 7> step_seconds_{};  // indexed by Step
  std::map<std::string, uint64_t> outcomes_{{"done", 0}, {"error", 0}, {"cancelled", 0}};
  std::map<unsigned, uint64_t> requests_;
  uint64_t unauthorized_ = 0;
  SwarmStatus swarm_;  // the last swarm download's figures (docs/api.md)
};

}  // namespace byoi
