#include "agent/job/state_file.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <cerrno>
#include <filesystem>
#include <optional>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"

namespace byoi {

namespace json = boost::json;

// A state file is a few KiB; anything much larger is not ours.
constexpr size_t kMaxStateBytes = 1 << 20;
// The status nests three levels deep; a deeper file is not one we wrote.
constexpr size_t kMaxRecoveryDepth = 8;

namespace {

// The longest prefix of `text` that ends after a complete member or element, with the brackets
// still open there closed: '{"a":"x","b":[1,2' -> '{"a":"x","b":[1]}'. The first complete value
// when there is one (trailing bytes are ignored). Empty when no prefix can be closed.
std::string CloseTruncatedJson(std::string_view text) {
  std::string open;       // the brackets open at `i`, outermost first
  bool key_next = false;  // in an object, the next string is a member's name
  size_t cut = std::string_view::npos;
  std::string cut_open;
  auto cut_here = [&](size_t at) {
    cut = at;
    cut_open = open;
  };
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
        // A string value completes its member or element; a name does not.
        if (!open.empty() && !(open.back() == '{' && key_next)) cut_here(i + 1);
        if (!open.empty() && open.back() == '{') key_next = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        if (open.size() == kMaxRecoveryDepth) return {};
        open += c;
        key_next = c == '{';
        cut_here(i + 1);  // an empty object or array is complete
        break;
      case '}':
      case ']':
        if (open.empty() || (open.back() == '{') != (c == '}')) return {};
        open.pop_back();
        if (open.empty()) return std::string(text.substr(0, i + 1));
        key_next = false;
        cut_here(i + 1);
        break;
      case ',':
        if (open.empty()) return {};
        key_next = open.back() == '{';
        cut_here(i);
        break;
      default:
        break;
    }
  }
  if (cut == std::string_view::npos) return {};
  std::string out(text.substr(0, cut));
  for (auto it = cut_open.rbegin(); it != cut_open.rend(); ++it) out += *it == '{' ? '}' : ']';
  return out;
}

const json::string* StringField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_string() ? &v->get_string() : nullptr;
}

template <typename T>
std::optional<T> NumberField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return std::nullopt;
  std::error_code ec;
  T n = v->to_number<T>(ec);
  if (ec) return std::nullopt;
  return n;
}

// Whatever a damaged file's readable part says, field by field; nullopt for the state when it
// cannot be read. Every step of kAllSteps is there, `todo` unless the file says otherwise.
std::optional<JobState> RecoverFields(const json::object& o, JobRecord& record) {
  JobStatus& s = record.status;
  if (const json::string* id = StringField(o, "jobId")) record.job_id = PrintableText(*id);
  std::optional<JobState> state;
  if (const json::string* v = StringField(o, "status")) state = JobStateFromName(*v);
  s.message.clear();
  if (const json::string* v = StringField(o, "message")) s.message = *v;
  if (const json::string* v = StringField(o, "detail")) s.detail = *v;
  if (const json::string* v = StringField(o, "checksum")) s.checksum = *v;
  if (const json::string* v = StringField(o, "servername")) s.servername = *v;
  s.elapsed_seconds = NumberField<int64_t>(o, "elapsedTime").value_or(0);
  s.started_at = NumberField<int64_t>(o, "startedAt").value_or(0);
  for (Step step : kAllSteps) {
    s.progress.emplace_back();
    s.progress.back().step = step;
  }
  if (const json::value* v = o.if_contains("progress"); v != nullptr && v->is_array()) {
    for (const json::value& item : v->get_array()) {
      if (!item.is_object()) continue;
      const json::object& p = item.get_object();
      const json::string* name = StringField(p, "step");
      const json::string* st = StringField(p, "status");
      std::optional<Step> step = name ? StepFromName(*name) : std::nullopt;
      std::optional<StepState> step_state = st ? StepStateFromName(*st) : std::nullopt;
      if (!step || !step_state) continue;
      StepStatus& out = s.progress[static_cast<size_t>(*step)];
      out.state = *step_state;
      if (const json::string* c = StringField(p, "comment")) out.comment = *c;
      out.bytes_done = NumberField<uint64_t>(p, "bytesDone").value_or(0);
      out.bytes_total = NumberField<uint64_t>(p, "bytesTotal").value_or(0);
      double seconds = NumberField<double>(p, "seconds").value_or(0);
      out.seconds = seconds >= 0 && seconds <= 1e9 ? seconds : 0;
    }
  }
  if (const json::value* v = o.if_contains("warnings"); v != nullptr && v->is_array()) {
    for (const json::value& w : v->get_array()) {
      if (w.is_string()) s.warnings.emplace_back(w.get_string());
    }
  }
  return state;
}

// The record of a file StatusFromJson refused (`why`): see the header.
JobRecord RecoverRecord(std::string_view text, const std::string& path, const std::string& why) {
  JobRecord record;
  json::object fields;
  std::string closed = CloseTruncatedJson(text);
  if (!closed.empty()) {
    std::error_code ec;
    json::parse_options options;
    options.allow_invalid_utf8 = true;
    json::value root = json::parse(closed, ec, {}, options);
    if (!ec && root.is_object()) fields = std::move(root.get_object());
  }
  std::optional<JobState> state = RecoverFields(fields, record);
  JobStatus& s = record.status;
  const std::string damage = "the state file " + path + " is damaged (" + why + ")";
  if (!state) {
    s.state = JobState::kError;
    s.message = std::string(msg::kInterrupted);
    s.detail = damage + ": the outcome of the last job is unknown";
  } else {
    s.state = *state;
    if (s.state == JobState::kError && s.message.empty()) {
      s.message = std::string(msg::kInterrupted);
      if (s.detail.empty()) s.detail = damage + ": the cause of the failure is unknown";
    }
    if (s.state == JobState::kDone && s.message.empty()) s.message = "done";
    s.warnings.push_back(damage + "; this record is what could be read of it");
  }
  record.status = PrintableStatus(std::move(s));
  return record;
}

}  // namespace

StateFile::StateFile(std::string path) : path_(std::move(path)) {}

std::string StateToJson(const JobRecord& record) {
  // jobId first: a file cut short still names the backend's job (see the header).
  json::object o;
  o["jobId"] = record.job_id;
  for (auto& [key, value] : StatusToJson(PrintableStatus(record.status))) o[key] = value;
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
  if (!text.ok() && text.status().code() == Code::kTooBig) {
    return std::optional<JobRecord>(RecoverRecord("", path_, text.status().detail()));
  }
  if (!text.ok()) {
    if (text.status().code() == Code::kIo && !std::filesystem::exists(path_)) {
      return std::optional<JobRecord>();
    }
    return std::move(text).status();
  }
  Result<JobStatus> status = StatusFromJson(*text);
  JobRecord record;
  if (status.ok()) {
    record.status = std::move(*status);
    std::error_code ec;
    json::parse_options options;
    options.allow_invalid_utf8 = true;
    json::value root = json::parse(*text, ec, {}, options);
    if (const json::string* id =
            ec || !root.is_object() ? nullptr : StringField(root.get_object(), "jobId")) {
      record.job_id = PrintableText(*id);
    }
  } else {
    std::string why = text->empty() ? "empty" : status.status().detail();
    record = RecoverRecord(*text, path_, why);
  }
  record.status = MarkInterrupted(std::move(record.status));
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
