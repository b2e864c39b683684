// The state file: the daemon's job status kept across restarts (docs/status.md, issue 7).
//
// The file is the status JSON of docs/status.md plus a "jobId" field (the backend's id, "" for jobs
// posted to the API). It is rewritten atomically (temp file, fsync, rename, fsync of the directory)
// on every state or step change and at most every 5 s for byte progress, and removed when the job
// is cleared. Default path: /run/byoi-agent/state.json (tmpfs: it survives a crash or a restart of
// the service, not a reboot, which is what a rescue system wants).
//
// On start, a job found `doing` cannot be running any more: it becomes `error` with the catalogue
// message "Deployment interrupted: the agent restarted.".
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "agent/base/status.hpp"
#include "agent/job/job_control.hpp"

namespace byoi {

inline constexpr const char* kDefaultStateFile = "/run/byoi-agent/state.json";

class StateFile {
 public:
  explicit StateFile(std::string path);

  // The job kept in the file, with a `doing` job turned into an interrupted error (its `doing` step
  // becomes `error`). nullopt when there is no file. kInvalid when the file is not a status of ours
  // (the caller logs it and starts without a job); kIo when it cannot be read.
  Result<std::optional<JobRecord>> Load() const;

  // Writes `record` atomically, creating the parent directory (0700) when missing.
  Status Save(const JobRecord& record);
  // Removes the file; no error when it does not exist.
  Status Remove();

  // A JobControl listener: Save on step changes and every 5 s of progress, Remove when cleared.
  // Failures are logged (a full /run must not stop a deployment).
  void OnEvent(const JobEvent& event);

  const std::string& path() const { return path_; }

 private:
  const std::string path_;
  std::mutex mu_;  // one writer at a time: WriteFileAtomic uses a fixed temp name
  std::chrono::steady_clock::time_point last_save_;
};

// The state file's text for `record`, and the interrupted conversion, exposed for tests.
std::string StateToJson(const JobRecord& record);
JobStatus MarkInterrupted(JobStatus status);

}  // namespace byoi
