// The status model (docs/status.md): one JobStatus that every step reports into, and the
// StatusBoard that holds it for the HTTP API, the backend poller, the console and the state file.
//
// Every string of a status is printable, valid UTF-8 (PrintableText, agent/base/text.hpp): the
// board's setters clean what they are given (an HTTP reason phrase, a name read from the image),
// so the JSON the API serves, the backend receives and the state file keeps is always valid, and
// the console shows no control sequence from outside.
#pragma once

#include <boost/json/fwd.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

enum class JobState { kDoing, kDone, kError };
enum class Step { kDownload, kVerify, kWrite, kPartition, kConfigDrive, kBootloader, kReboot };
enum class StepState { kTodo, kDoing, kDone, kError, kSkipped };

inline constexpr Step kAllSteps[] = {Step::kDownload,  Step::kVerify,      Step::kWrite,
                                     Step::kPartition, Step::kConfigDrive, Step::kBootloader,
                                     Step::kReboot};

std::string_view JobStateName(JobState state);    // "doing" "done" "error"
std::string_view StepName(Step step);             // "download" … "reboot"
std::string_view StepStateName(StepState state);  // "todo" "doing" "done" "error" "skipped"
// The reverse of the three above; nullopt for any other text.
std::optional<JobState> JobStateFromName(std::string_view name);
std::optional<Step> StepFromName(std::string_view name);
std::optional<StepState> StepStateFromName(std::string_view name);

struct StepStatus {
  Step step = Step::kDownload;
  StepState state = StepState::kTodo;
  std::string comment;       // "2.1 GiB in 19 s (113 MB/s)", or why it was skipped
  uint64_t bytes_done = 0;   // for byte-counted steps (download, write)
  uint64_t bytes_total = 0;  // 0 when unknown
  double seconds = 0;        // time spent in the step so far
};

// A swarm download's figures (docs/status.md, `swarm`): present only for a job whose manifest
// names a torrent.
struct SwarmStatus {
  int peers = 0;               // BitTorrent peers connected now
  uint64_t from_peers = 0;     // bytes received from peers
  uint64_t from_web_seed = 0;  // bytes received from the web seed (the image's URL)
  uint64_t uploaded = 0;       // bytes sent to peers
  int hash_failures = 0;       // pieces that failed their hash check
  bool seeding = false;        // the image is complete and served to the rack
};

struct JobStatus {
  JobState state = JobState::kDoing;
  std::string message = "starting";  // a catalogue sentence on error
  std::string detail;                // the technical cause on error
  Code code = Code::kOk;             // on error, what kind of failure it was (kCancelled, kIo, …)
  std::string checksum;              // the image's checksum, once known
  std::string servername;            // the host name being installed
  int64_t elapsed_seconds = 0;
  int64_t started_at = 0;  // Unix time the job was accepted
  std::vector<StepStatus> progress;
  std::vector<std::string> warnings;  // non-fatal findings, e.g. "image has no ESP"
  std::optional<SwarmStatus> swarm;   // a swarm download's figures, when the job has one
};

// Every string of `status` (message, detail, checksum, servername, step comments, warnings) made
// printable with PrintableText.
JobStatus PrintableStatus(JobStatus status);

boost::json::object StatusToJson(const JobStatus& status);
// Reads a status back (the state file). Bytes that are not UTF-8 inside strings do not make the
// text unreadable: every string read is made printable (PrintableStatus). kInvalid when the text is
// not a JSON object holding a status of ours.
Result<JobStatus> StatusFromJson(std::string_view text);

// Thread-safe holder of the current job's status. Stages never see it: the runner turns their
// ProgressFn calls into StepProgress. Listeners run on the caller's thread, outside the lock, on
// every state or step change, and at most once a second for byte progress. Every string given to
// a setter (Fail's message and detail included) is stored made printable (PrintableText), so a
// Snapshot() never holds a control character other than TAB, nor invalid UTF-8.
class StatusBoard {
 public:
  using Listener = std::function<void(const JobStatus& status, bool step_changed)>;

  StatusBoard();

  // Resets to a new job: doing/"starting", every step todo.
  void Start(std::string servername);
  // Replaces the whole status (a job restored from the state file), made printable.
  void Restore(JobStatus status);
  void BeginStep(Step step, std::string message);
  void StepProgress(Step step, uint64_t done, uint64_t total);
  // Marks the step done. An empty comment becomes "<bytes> in <time> (<rate>)" for byte steps.
  void FinishStep(Step step, std::string comment = {});
  void SkipStep(Step step, std::string why);
  void SetChecksum(std::string checksum);
  // The swarm's figures, replaced as they change (several times a second): kept for the next
  // Snapshot and publication, not published by themselves.
  void SetSwarm(const SwarmStatus& swarm);
  void Warn(std::string warning);
  // The steps that are `doing` become `error`; the job takes the status's code, message and
  // detail. REQUIRES: the status carries a catalogue sentence (docs/status.md): the runner and
  // JobControl make sure of it.
  void Fail(const Status& status);
  void Done(std::string message = "done");

  bool has_job() const;
  JobStatus Snapshot() const;
  void Subscribe(Listener listener);

 private:
  using Clock = std::chrono::steady_clock;
  StepStatus& StepLocked(Step step);
  void Publish(bool step_changed);

  mutable std::mutex mu_;
  bool has_job_ = false;
  JobStatus status_;
  Clock::time_point job_start_;
  Clock::time_point step_start_[std::size(kAllSteps)];
  Clock::time_point last_progress_publish_;
  std::vector<Listener> listeners_;
};

}  // namespace byoi
