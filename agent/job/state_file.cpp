#include "agent/job/state_file.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <cerrno>
#include <filesystem>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"

namespace byoi {

namespace json = boost::json;

// A state file is a few KiB; anything much larger is not ours.
constexpr size_t kMaxStateBytes = 1 << 20;

StateFile::StateFile(std::string path) : path_(std::move(path)) {}

std::string StateToJson(const JobRecord& record) {
  json::object o = StatusToJson(record.status);
  o["jobId"] = record.job_id;
  return json::serialize(o) + "\n";
}

JobStatus MarkInterrupted(JobStatus status) {
  if (status.state != JobState::kDoing) return status;
  std::string step = "starting";
  for (StepStatus& s : status.progress) {
    if (s.state == StepState::kDoing) {
      s.state = StepState::kError;
      step = std::string(StepName(s.step));
    }
  }
  status.state = JobState::kError;
  status.message = std::string(msg::kInterrupted);
  status.detail = "the agent stopped during step " + step;
  return status;
}

Result<std::optional<JobRecord>> StateFile::Load() const {
  Result<std::string> text = ReadSmallFile(path_, kMaxStateBytes);
  if (!text.ok()) {
    if (text.status().code() == Code::kIo && !std::filesystem::exists(path_)) {
      return std::optional<JobRecord>();
    }
    return std::move(text).status();
  }
  Result<JobStatus> status = StatusFromJson(*text);
  if (!status.ok()) return std::move(status).status().Context("reading " + path_);
  JobRecord record;
  record.status = MarkInterrupted(std::move(*status));
  std::error_code ec;
  json::value root = json::parse(*text, ec);
  if (!ec && root.is_object()) {
    if (const json::value* id = root.get_object().if_contains("jobId"); id && id->is_string()) {
      record.job_id = id->get_string();
    }
  }
  return std::optional<JobRecord>(std::move(record));
}

Status StateFile::Save(const JobRecord& record) {
  std::lock_guard lock(mu_);
  std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (!dir.empty() && !std::filesystem::is_directory(dir)) {
    std::error_code ec;
    if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno("creating " + dir.string(), errno);
    }
  }
  last_save_ = std::chrono::steady_clock::now();
  return WriteFileAtomic(path_, StateToJson(record));
}

Status StateFile::Remove() {
  std::lock_guard lock(mu_);
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno("removing " + path_, errno);
  }
  return Status::Ok();
}

void StateFile::OnEvent(const JobEvent& event) {
  Status s;
  if (event.status == nullptr) {
    s = Remove();
  } else {
    {
      std::lock_guard lock(mu_);
      if (!event.step_changed &&
          std::chrono::steady_clock::now() - last_save_ < std::chrono::seconds(5)) {
        return;
      }
    }
    s = Save(JobRecord{*event.status, event.job_id});
  }
  if (!s.ok()) spdlog::warn("state file: {}", s.ToString());
}

}  // namespace byoi
