#include "agent/job/status.hpp"

#include <fmt/format.h>

#include <boost/json.hpp>
#include <cassert>
#include <cmath>
#include <ctime>

#include "agent/base/text.hpp"
#include "agent/base/units.hpp"

namespace byoi {

namespace json = boost::json;

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kDoing:
      return "doing";
    case JobState::kDone:
      return "done";
    case JobState::kError:
      return "error";
  }
  return "?";
}

std::string_view StepName(Step step) {
  switch (step) {
    case Step::kDownload:
      return "download";
    case Step::kVerify:
      return "verify";
    case Step::kWrite:
      return "write";
    case Step::kPartition:
      return "partition";
    case Step::kConfigDrive:
      return "configdrive";
    case Step::kBootloader:
      return "bootloader";
    case Step::kReboot:
      return "reboot";
  }
  return "?";
}

std::string_view StepStateName(StepState state) {
  switch (state) {
    case StepState::kTodo:
      return "todo";
    case StepState::kDoing:
      return "doing";
    case StepState::kDone:
      return "done";
    case StepState::kError:
      return "error";
    case StepState::kSkipped:
      return "skipped";
  }
  return "?";
}

JobStatus PrintableStatus(JobStatus s) {
  auto clean = [](std::string& text) { text = PrintableText(text); };
  clean(s.message);
  clean(s.detail);
  clean(s.checksum);
  clean(s.servername);
  for (StepStatus& p : s.progress) clean(p.comment);
  for (std::string& w : s.warnings) clean(w);
  return s;
}

json::object StatusToJson(const JobStatus& s) {
  json::object out;
  out["status"] = JobStateName(s.state);
  out["message"] = s.message;
  out["checksum"] = s.checksum;
  out["servername"] = s.servername;
  out["detail"] = s.detail;
  if (s.state == JobState::kError && s.code != Code::kOk) out["code"] = CodeName(s.code);
  out["elapsedTime"] = s.elapsed_seconds;
  out["startedAt"] = s.started_at;
  json::array progress;
  for (const StepStatus& p : s.progress) {
    progress.push_back(json::object{{"step", StepName(p.step)},
                                    {"status", StepStateName(p.state)},
                                    {"comment", p.comment},
                                    {"bytesDone", p.bytes_done},
                                    {"bytesTotal", p.bytes_total},
                                    {"seconds", std::round(p.seconds * 10) / 10}});
  }
  out["progress"] = std::move(progress);
  json::array warnings;
  for (const auto& w : s.warnings) warnings.push_back(json::string(w));
  out["warnings"] = std::move(warnings);
  if (s.swarm) {
    out["swarm"] = json::object{{"peers", s.swarm->peers},
                                {"fromPeers", s.swarm->from_peers},
                                {"fromWebSeed", s.swarm->from_web_seed},
                                {"uploaded", s.swarm->uploaded},
                                {"hashFailures", s.swarm->hash_failures},
                                {"seeding", s.swarm->seeding}};
  }
  return out;
}

namespace {

template <typename E, size_t N>
std::optional<E> FromName(std::string_view name, const E (&all)[N], std::string_view (*namer)(E)) {
  for (E e : all) {
    if (namer(e) == name) return e;
  }
  return std::nullopt;
}

StepStatus MakeStep(Step step) {
  StepStatus s;
  s.step = step;
  return s;
}

constexpr double kMaxStepSeconds = 1e9;

constexpr JobState kJobStates[] = {JobState::kDoing, JobState::kDone, JobState::kError};
constexpr StepState kStepStates[] = {StepState::kTodo, StepState::kDoing, StepState::kDone,
                                     StepState::kError, StepState::kSkipped};

}  // namespace

std::optional<JobState> JobStateFromName(std::string_view name) {
  return FromName(name, kJobStates, JobStateName);
}
std::optional<Step> StepFromName(std::string_view name) {
  return FromName(name, kAllSteps, StepName);
}
std::optional<StepState> StepStateFromName(std::string_view name) {
  return FromName(name, kStepStates, StepStateName);
}

Result<JobStatus> StatusFromJson(std::string_view text) {
  auto bad = [](std::string why) { return Status::Error(Code::kInvalid, "status: " + why); };
  std::error_code ec;
  // A file written by an older agent may hold raw bytes from outside in its strings: read them,
  // and clean them below, rather than lose the whole record.
  json::parse_options options;
  options.allow_invalid_utf8 = true;
  json::value root = json::parse(text, ec, {}, options);
  if (ec || !root.is_object()) return bad("not a JSON object");
  const json::object& o = root.get_object();
  JobStatus s;
  try {
    std::optional<JobState> state = JobStateFromName(o.at("status").as_string());
    if (!state) return bad("unknown status");
    s.state = *state;
    s.message = o.at("message").as_string();
    if (auto* v = o.if_contains("detail")) s.detail = v->as_string();
    if (auto* v = o.if_contains("code")) {
      std::optional<Code> code = CodeFromName(v->as_string());
      if (!code || *code == Code::kOk) return bad("unknown code");
      s.code = *code;
    }
    if (auto* v = o.if_contains("checksum")) s.checksum = v->as_string();
    if (auto* v = o.if_contains("servername")) s.servername = v->as_string();
    if (auto* v = o.if_contains("elapsedTime")) s.elapsed_seconds = v->to_number<int64_t>();
    if (auto* v = o.if_contains("startedAt")) s.started_at = v->to_number<int64_t>();
    for (const json::value& item : o.at("progress").as_array()) {
      const json::object& p = item.as_object();
      StepStatus step;
      std::optional<Step> name = StepFromName(p.at("step").as_string());
      std::optional<StepState> step_state = StepStateFromName(p.at("status").as_string());
      if (!name || !step_state) return bad("unknown step or step status");
      step.step = *name;
      step.state = *step_state;
      if (auto* v = p.if_contains("comment")) step.comment = v->as_string();
      if (auto* v = p.if_contains("bytesDone")) step.bytes_done = v->to_number<uint64_t>();
      if (auto* v = p.if_contains("bytesTotal")) step.bytes_total = v->to_number<uint64_t>();
      if (auto* v = p.if_contains("seconds")) step.seconds = v->to_number<double>();
      // "1e999" reads as infinity, which StatusToJson would write as non-JSON; a step lasting
      // more than 30 years means a corrupt file too.
      if (!(step.seconds >= 0 && step.seconds <= kMaxStepSeconds)) {
        return bad("step seconds out of range");
      }
      s.progress.push_back(std::move(step));
    }
    if (auto* v = o.if_contains("warnings")) {
      for (const json::value& w : v->as_array()) s.warnings.emplace_back(w.as_string());
    }
    if (auto* v = o.if_contains("swarm")) {
      const json::object& w = v->as_object();
      SwarmStatus swarm;
      // Counts: a negative or huge one throws (to_number is exact), and is refused below.
      const auto peers = w.at("peers").to_number<uint64_t>();
      const auto failures = w.at("hashFailures").to_number<uint64_t>();
      if (peers > 1000000 || failures > 1000000000) return bad("swarm counts out of range");
      swarm.peers = static_cast<int>(peers);
      swarm.hash_failures = static_cast<int>(failures);
      swarm.from_peers = w.at("fromPeers").to_number<uint64_t>();
      swarm.from_web_seed = w.at("fromWebSeed").to_number<uint64_t>();
      swarm.uploaded = w.at("uploaded").to_number<uint64_t>();
      swarm.seeding = w.at("seeding").as_bool();
      s.swarm = swarm;
    }
  } catch (const std::exception& e) {  // Boost.JSON's accessors throw on a wrong type
    return bad(e.what());
  }
  return PrintableStatus(std::move(s));
}

StatusBoard::StatusBoard() {
  Start("");
  has_job_ = false;
}

void StatusBoard::Start(std::string servername) {
  {
    std::lock_guard lock(mu_);
    has_job_ = true;
    status_ = JobStatus();
    status_.servername = PrintableText(servername);
    status_.started_at = static_cast<int64_t>(std::time(nullptr));
    for (Step step : kAllSteps) status_.progress.push_back(MakeStep(step));
    job_start_ = Clock::now();
  }
  Publish(true);
}

void StatusBoard::Restore(JobStatus status) {
  {
    std::lock_guard lock(mu_);
    has_job_ = true;
    status_ = PrintableStatus(std::move(status));
    job_start_ = Clock::now() - std::chrono::seconds(status_.elapsed_seconds);
  }
  Publish(true);
}

StepStatus& StatusBoard::StepLocked(Step step) {
  for (StepStatus& s : status_.progress) {
    if (s.step == step) return s;
  }
  status_.progress.push_back(MakeStep(step));
  return status_.progress.back();
}

void StatusBoard::BeginStep(Step step, std::string message) {
  {
    std::lock_guard lock(mu_);
    StepStatus& s = StepLocked(step);
    s.state = StepState::kDoing;
    s.comment.clear();
    status_.message = PrintableText(message);
    step_start_[static_cast<int>(step)] = Clock::now();
  }
  Publish(true);
}

void StatusBoard::StepProgress(Step step, uint64_t done, uint64_t total) {
  bool publish = false;
  {
    std::lock_guard lock(mu_);
    StepStatus& s = StepLocked(step);
    s.bytes_done = done;
    s.bytes_total = total;
    auto now = Clock::now();
    double secs = std::chrono::duration<double>(now - step_start_[static_cast<int>(step)]).count();
    s.seconds = secs;
    double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    s.comment =
        total > 0 ? fmt::format("{} of {}", HumanBytes(done), HumanBytes(total)) : HumanBytes(done);
    if (rate > 0) s.comment += ", " + HumanRate(rate);
    if (rate > 0 && total > done) {
      double eta = static_cast<double>(total - done) / rate;
      // Download and write run at once in stream mode: the job ends with the slower of them.
      if (step == Step::kDownload || step == Step::kWrite) {
        const StepStatus& other =
            StepLocked(step == Step::kDownload ? Step::kWrite : Step::kDownload);
        if (other.state == StepState::kDoing && other.bytes_done > 0 && other.seconds > 0 &&
            other.bytes_total > other.bytes_done) {
          double other_rate = static_cast<double>(other.bytes_done) / other.seconds;
          eta =
              std::max(eta, static_cast<double>(other.bytes_total - other.bytes_done) / other_rate);
        }
      }
      s.comment += ", ETA " + HumanDuration(eta);
    }
    if (now - last_progress_publish_ >= std::chrono::seconds(1)) {
      last_progress_publish_ = now;
      publish = true;
    }
  }
  if (publish) Publish(false);
}

void StatusBoard::FinishStep(Step step, std::string comment) {
  {
    std::lock_guard lock(mu_);
    StepStatus& s = StepLocked(step);
    s.state = StepState::kDone;
    s.seconds =
        std::chrono::duration<double>(Clock::now() - step_start_[static_cast<int>(step)]).count();
    if (comment.empty() && s.bytes_done > 0) {
      comment = fmt::format("{} in {}", HumanBytes(s.bytes_done), HumanDuration(s.seconds));
      if (s.seconds > 0)
        comment += " (" + HumanRate(static_cast<double>(s.bytes_done) / s.seconds) + ")";
    }
    s.comment = PrintableText(comment);
  }
  Publish(true);
}

void StatusBoard::SkipStep(Step step, std::string why) {
  {
    std::lock_guard lock(mu_);
    StepStatus& s = StepLocked(step);
    s.state = StepState::kSkipped;
    s.comment = PrintableText(why);
  }
  Publish(true);
}

void StatusBoard::SetSwarm(const SwarmStatus& swarm) {
  std::lock_guard lock(mu_);
  status_.swarm = swarm;
}

void StatusBoard::SetChecksum(std::string checksum) {
  std::lock_guard lock(mu_);
  status_.checksum = PrintableText(checksum);
}

void StatusBoard::Warn(std::string warning) {
  {
    std::lock_guard lock(mu_);
    status_.warnings.push_back(PrintableText(warning));
  }
  Publish(false);
}

void StatusBoard::Fail(const Status& error) {
  assert(!error.message().empty());
  {
    std::lock_guard lock(mu_);
    for (StepStatus& s : status_.progress) {
      if (s.state == StepState::kDoing) s.state = StepState::kError;
    }
    status_.state = JobState::kError;
    status_.elapsed_seconds =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - job_start_).count();
    status_.message = PrintableText(error.message());
    status_.detail = PrintableText(error.detail());
    status_.code = error.code();
  }
  Publish(true);
}

void StatusBoard::Done(std::string message) {
  {
    std::lock_guard lock(mu_);
    status_.state = JobState::kDone;
    status_.elapsed_seconds =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - job_start_).count();
    status_.message = PrintableText(message);
  }
  Publish(true);
}

bool StatusBoard::has_job() const {
  std::lock_guard lock(mu_);
  return has_job_;
}

JobStatus StatusBoard::Snapshot() const {
  std::lock_guard lock(mu_);
  JobStatus copy = status_;
  if (copy.state == JobState::kDoing) {
    copy.elapsed_seconds =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - job_start_).count();
  }
  return copy;
}

void StatusBoard::Subscribe(Listener listener) {
  std::lock_guard lock(mu_);
  listeners_.push_back(std::move(listener));
}

void StatusBoard::Publish(bool step_changed) {
  std::vector<Listener> listeners;
  {
    std::lock_guard lock(mu_);
    if (!has_job_) return;
    listeners = listeners_;
  }
  JobStatus snapshot = Snapshot();
  for (const Listener& l : listeners) l(snapshot, step_changed);
}

}  // namespace byoi
