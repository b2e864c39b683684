// The backend poller (docs/backend.md): takes jobs from a provisioning backend and reports their
// status back.
//
//   GET {backend_url}/v1/agents/{agentId}/job
//       204: no job; 200: {"jobId": "...", "manifest": {...}}
//   PUT {backend_url}/v1/agents/{agentId}/jobs/{jobId}/status
//       the status JSON of docs/status.md
//
// Both carry the bearer token. Polling happens only while no job is running, every poll_interval
// with ±20 % jitter; after a failed poll the delay doubles (up to 5 min) with full jitter. A job
// whose manifest is invalid is answered at once with an error status carrying the catalogue
// message.
//
// Status reports: every state or step change of a backend job is queued in order (byte progress
// replaces a queued progress report instead of piling up), and while the job is doing a report goes
// out at least every 5 s. The queue is sent front to back; a report is retried with back-off (0.5 s
// doubling to 30 s, jittered) until the backend answers 2xx, so the backend sees every step. When a
// job ends `done` (a reboot follows), the poller's listener blocks the runner's thread until the
// final report is delivered or `final_wait` passed — then the runner reboots anyway, and the log
// says the backend was not told.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "agent/api/http_client.hpp"
#include "agent/job/job_control.hpp"

namespace byoi {

struct PollerOptions {
  std::string backend_url;  // no trailing slash
  std::string agent_id;
  std::string token;      // a secret: sent, never logged
  std::string ca_bundle;  // PEM CA certificates for an https backend; empty: the system's
  std::chrono::milliseconds poll_interval{5000};
  std::chrono::milliseconds heartbeat{5000};    // a status report at least this often while doing
  std::chrono::milliseconds final_wait{60000};  // how long a `done` job waits for its final report
  std::chrono::milliseconds max_poll_backoff{300000};
  std::chrono::milliseconds max_report_backoff{30000};
  std::chrono::milliseconds request_timeout{30000};
};

class Poller {
 public:
  // Borrows `jobs`, which must outlive the poller (until Stop() returned).
  Poller(JobControl& jobs, PollerOptions options);
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // A JobControl listener: queues reports for backend jobs (those with a job id).
  void OnEvent(const JobEvent& event);

  // Starts the poller's thread.
  void Start();
  // Stops polling, keeps trying to deliver queued reports for up to `flush`, then joins the thread.
  void Stop(std::chrono::milliseconds flush = std::chrono::seconds(5));

 private:
  struct Report {
    std::string job_id;
    JobStatus status;
    bool step_changed = true;
  };

  void Loop();
  // One poll; returns false on a failure (for the back-off).
  bool PollOnce();
  // Sends the front report; returns false on a failure.
  bool SendFront();
  void Enqueue(Report report);
  std::string JobUrl() const;
  std::string StatusUrl(const std::string& job_id) const;
  std::chrono::milliseconds Jitter(std::chrono::milliseconds base, double low, double high);

  JobControl& jobs_;
  const PollerOptions options_;
  std::atomic<bool> abort_{false};  // aborts a transfer in progress (after the flush time)
  HttpClient client_;               // used by the poller's thread only
  std::mt19937_64 rng_;             // poller's thread only
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable wake_;       // new report, or stop
  std::condition_variable delivered_;  // the queue shrank
  std::deque<Report> queue_;
  bool in_flight_ = false;  // the front report is being sent
  bool stopping_ = false;
  std::chrono::steady_clock::time_point flush_deadline_;
  std::chrono::steady_clock::time_point last_report_;
  std::string current_job_;   // the backend job last submitted (or restored)
  std::string finished_job_;  // the backend job that last ended: not taken again if handed out
};

}  // namespace byoi
