// `byoi-agent deploy`: one job in the foreground (docs/cli.md). The status goes to --status-file
// (rewritten atomically on every change and about once a second while bytes move), progress lines
// to stderr, and the final status to stdout (JSON with --json). SIGINT/SIGTERM cancel the job.
// Exit codes: 0 done, 1 job error (the catalogue message is printed), 2 usage.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdio>
#include <map>
#include <mutex>

#include "agent/base/cancel.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/log.hpp"
#include "agent/cli/cli_util.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/config.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/runner.hpp"
#include "agent/job/status.hpp"

namespace byoi {

namespace {

// The one job of this process, for the signal handler: CancelToken::Cancel is a lock-free atomic
// store, safe in a handler.
CancelToken* g_cancel = nullptr;

void OnSignal(int) {
  if (g_cancel != nullptr) g_cancel->Cancel();
}

void InstallSignalHandlers(CancelToken& cancel) {
  g_cancel = &cancel;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  // A server that closes its end while we write must be an error code, not the end of us.
  ::signal(SIGPIPE, SIG_IGN);
}

// Keeps --status-file current and prints progress lines: one per step change, and one about
// every second for a step that moves bytes (overwritten in place on a terminal).
class Reporter {
 public:
  explicit Reporter(std::string status_file)
      : status_file_(std::move(status_file)), tty_(::isatty(STDERR_FILENO) == 1) {}

  void operator()(const JobStatus& status, bool step_changed) {
    std::lock_guard lock(mu_);
    WriteStatusFile(status);
    for (const StepStatus& s : status.progress) {
      auto [it, inserted] = printed_.try_emplace(s.step, StepState::kTodo);
      if (s.state == it->second) {
        if (!step_changed && s.state == StepState::kDoing && !s.comment.empty()) {
          PrintLine(fmt::format("{}: {}", StepName(s.step), s.comment), /*transient=*/true);
        }
        continue;
      }
      it->second = s.state;
      std::string line = fmt::format("{}: {}", StepName(s.step), StepStateName(s.state));
      if (!s.comment.empty()) line += " (" + s.comment + ")";
      PrintLine(line, false);
    }
  }

  void Flush() {
    std::lock_guard lock(mu_);
    if (pending_newline_) std::fputc('\n', stderr);
    pending_newline_ = false;
  }

 private:
  void WriteStatusFile(const JobStatus& status) {
    if (status_file_.empty()) return;
    Status s = WriteFileAtomic(status_file_, boost::json::serialize(StatusToJson(status)) + "\n");
    if (!s.ok() && !warned_) {
      warned_ = true;
      std::fprintf(stderr, "warning: cannot keep the status file: %s\n", s.ToString().c_str());
    }
  }

  void PrintLine(const std::string& line, bool transient) {
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), transient ? "" : "\n");
      pending_newline_ = transient;
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  std::mutex mu_;
  std::string status_file_;
  bool tty_;
  bool warned_ = false;
  bool pending_newline_ = false;
  std::map<Step, StepState> printed_;
};

int Finish(const StatusBoard& board, const DeployArgs& args, Reporter& reporter) {
  reporter.Flush();
  JobStatus final = board.Snapshot();
  if (args.json) {
    std::printf("%s\n", boost::json::serialize(StatusToJson(final)).c_str());
  } else if (final.state == JobState::kDone) {
    std::printf("done%s%s\n", final.checksum.empty() ? "" : ", checksum ", final.checksum.c_str());
  }
  if (final.state != JobState::kDone) {
    std::fprintf(stderr, "error: %s\n", final.message.c_str());
    if (!final.detail.empty() && final.detail != final.message) {
      std::fprintf(stderr, "detail: %s\n", final.detail.c_str());
    }
  }
  return final.state == JobState::kDone ? kExitOk : kExitJobError;
}

}  // namespace

int RunDeploy(const DeployArgs& args) {
  (void)SetupLogging("info");
  // The job options from the command line, and from a config file only when named: the default
  // one and the kernel command line configure the daemon of a rescue system (its reboot, say),
  // while an operator who names the file wants its disk groups and proxy, as the daemon has them.
  ConfigSources sources;
  sources.flags = args.options;
  sources.config_file = args.config;
  sources.read_config_file = !args.config.empty();
  sources.kernel_cmdline.clear();
  Result<DaemonConfig> options = LoadOptions(sources);
  if (!options.ok()) {
    std::fprintf(stderr, "byoi-agent deploy: %s\n", options.status().ToString().c_str());
    return kExitUsage;
  }
  auto text = ReadManifestText(args.manifest);
  if (!text.ok() && text.status().code() != Code::kInvalid) {
    std::fprintf(stderr, "byoi-agent deploy: %s\n", text.status().ToString().c_str());
    return kExitUsage;
  }

  StatusBoard board;
  Reporter reporter(args.status_file);
  board.Subscribe([&reporter](const JobStatus& s, bool changed) { reporter(s, changed); });

  Result<Manifest> manifest = text.ok() ? ParseManifest(*text) : Result<Manifest>(text.status());
  if (!manifest.ok()) {
    // A refused manifest is a job error like any other: it shows in the status file too.
    board.Start("");
    board.Fail(manifest.status());
    return Finish(board, args, reporter);
  }

  CancelToken cancel;
  InstallSignalHandlers(cancel);
  board.Start(manifest->config_drive.hostname);
  RunOptions run;
  run.job = options->job;
  run.dry_run = args.dry_run;
  (void)RunJob(*manifest, run, board, cancel);
  int code = Finish(board, args, reporter);
  g_cancel = nullptr;
  return code;
}

}  // namespace byoi
