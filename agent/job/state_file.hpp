// The state file: the daemon's job status kept across restarts (docs/status.md).
//
// The file is the status JSON of docs/status.md plus a "jobId" field (the backend's id, "" for jobs
// posted to the API). It is rewritten atomically (temp file, fsync, rename, fsync of the directory)
// on every state or step change and at most every 5 s for byte progress, and removed when the job
// is cleared. Default path: /run/byoi-agent/state.json (tmpfs: it survives a crash or a restart of
// the service, not a reboot, which is what a rescue system wants).
//
// On start, a job found `doing` cannot be running any more: it becomes `error` with the catalogue
// message "Deployment interrupted: the agent restarted.".
//
// The last job is never lost silently (a backend or an operator would take "no job" for "never
// ran"). The file is written from the board's status, whose strings are printable (status.hpp),
// with "jobId" first, so that a cut file still names the job. Reading it:
//   - bytes that are not UTF-8 (a file of an older agent that wrote raw reason phrases) are read
//     and shown escaped (PrintableText), in every string, jobId included;
//   - a damaged file (cut short, not JSON, not a status, over 1 MiB) gives what can be recovered:
//     the longest complete prefix of its JSON is read leniently (state, message, detail, checksum,
//     servername, times, the complete steps, warnings, jobId; missing steps are `todo`), and a
//     warning says the record was recovered. When not even the state can be read, the record is
//     `error` with the catalogue message "Deployment interrupted: the agent restarted." and a
//     detail saying that the outcome is unknown.
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
  // becomes `error`), every string printable. A damaged file gives the record recovered from it
  // (see above), never an error. nullopt when there is no file; kIo when it cannot be read.
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

// The state file's text for `record` ("jobId" first, the status made printable), and the
// interrupted conversion, exposed for tests.
std::string StateToJson(const JobRecord& record);
JobStatus MarkInterrupted(JobStatus status);

}  // namespace byoi
