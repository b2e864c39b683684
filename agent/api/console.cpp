#include "agent/api/console.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/kd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "agent/base/text.hpp"
#include "agent/base/units.hpp"

namespace byoi {

namespace {

constexpr auto kPlainProgressEvery = std::chrono::seconds(10);
constexpr const char* kPrefix = "byoi-agent: ";
constexpr const char* kEraseLine = "\r\033[K";

// Unix98 pseudo-terminals (devices.txt: majors 136-143).
bool IsPtyMajor(unsigned major) { return major >= 136 && major <= 143; }

}  // namespace

bool RedrawsInPlace(int fd) {
  if (::isatty(fd) != 1) return false;
  // A virtual console (the screen a BMC's KVM shows) answers KDGKBTYPE; serial ports do not.
  char keyboard = 0;
  if (::ioctl(fd, KDGKBTYPE, &keyboard) == 0) return true;
  // /dev/console itself is 5:1 whatever it points at: TIOCGDEV names the terminal behind it.
  unsigned int dev = 0;
  if (::ioctl(fd, TIOCGDEV, &dev) == 0) return IsPtyMajor(major(dev));
  struct stat st;
  return ::fstat(fd, &st) == 0 && IsPtyMajor(major(st.st_rdev));
}

std::string ProgressBar(uint64_t done, uint64_t total, int width) {
  int filled = total == 0 ? 0
                          : static_cast<int>(static_cast<double>(std::min(done, total)) /
                                             static_cast<double>(total) * width);
  return "[" + std::string(static_cast<size_t>(filled), '#') +
         std::string(static_cast<size_t>(width - filled), '-') + "]";
}

std::optional<double> StepEta(const StepStatus& step) {
  if (step.seconds < 0.5 || step.bytes_done == 0 || step.bytes_total <= step.bytes_done) {
    return std::nullopt;
  }
  double rate = static_cast<double>(step.bytes_done) / step.seconds;
  return static_cast<double>(step.bytes_total - step.bytes_done) / rate;
}

std::string ProgressText(const StepStatus& step, bool with_eta) {
  std::string out;
  if (step.bytes_total > 0) {
    int percent =
        static_cast<int>(static_cast<double>(std::min(step.bytes_done, step.bytes_total)) * 100 /
                         static_cast<double>(step.bytes_total));
    out = fmt::format("{} {:>3}%  {} of {}", ProgressBar(step.bytes_done, step.bytes_total),
                      percent, HumanBytes(step.bytes_done), HumanBytes(step.bytes_total));
  } else {
    out = HumanBytes(step.bytes_done);
  }
  if (step.seconds >= 0.5 && step.bytes_done > 0) {
    out += "  " + HumanRate(static_cast<double>(step.bytes_done) / step.seconds);
  }
  if (std::optional<double> eta = StepEta(step); eta && with_eta)
    out += "  ETA " + HumanDuration(*eta);
  return out;
}

std::string ProgressLine(const JobStatus& status) {
  std::string out;
  std::optional<double> eta;
  for (const StepStatus& p : status.progress) {
    if (p.state != StepState::kDoing || (p.bytes_done == 0 && p.bytes_total == 0)) continue;
    if (!out.empty()) out += "  |  ";
    out += fmt::format("{:<11} {}", StepName(p.step), ProgressText(p, /*with_eta=*/false));
    if (std::optional<double> e = StepEta(p)) eta = std::max(eta.value_or(0), *e);
  }
  if (eta) out += "  ETA " + HumanDuration(*eta);
  return out;
}

Result<std::unique_ptr<ConsoleDisplay>> ConsoleDisplay::Open(const std::string& path) {
  // O_NOCTTY: a daemon must not acquire /dev/console as its controlling terminal. O_NONBLOCK: a
  // stuck serial line must not stall the deployment whose listener writes here.
  BYOI_ASSIGN_OR_RETURN(
      UniqueFd fd, OpenFile(path, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_APPEND | O_CREAT, 0644));
  bool redraw = RedrawsInPlace(fd.get());
  return std::make_unique<ConsoleDisplay>(std::move(fd), redraw);
}

ConsoleDisplay::ConsoleDisplay(UniqueFd fd, bool tty) : fd_(std::move(fd)), tty_(tty) {}

std::string ConsoleDisplay::Render(const JobStatus& status, bool step_changed) {
  std::string out;
  auto line = [&](const std::string& text) {
    if (tty_ && progress_line_open_) out += kEraseLine;
    progress_line_open_ = false;
    out += kPrefix + PrintableText(text) + "\n";
  };

  if (status.started_at != job_started_at_) {
    job_started_at_ = status.started_at;
    std::fill(std::begin(shown_), std::end(shown_), StepState::kTodo);
    shown_state_ = JobState::kDoing;
    last_plain_progress_ = {};
    if (status.state == JobState::kDoing) {
      line(status.servername.empty() ? "deployment started"
                                     : fmt::format("deployment started ({})", status.servername));
    }
  }

  for (const StepStatus& p : status.progress) {
    StepState& shown = shown_[static_cast<size_t>(p.step)];
    if (p.state == shown) continue;
    shown = p.state;
    std::string name = fmt::format("{:<11}", StepName(p.step));
    switch (p.state) {
      case StepState::kDoing:
        line(name + " started");
        last_plain_progress_ = std::chrono::steady_clock::now();
        break;
      case StepState::kDone:
        line(p.comment.empty() ? name + " done" : name + " done: " + p.comment);
        break;
      case StepState::kSkipped:
        line(p.comment.empty() ? name + " skipped" : name + " skipped: " + p.comment);
        break;
      case StepState::kError:
        line(name + " failed");
        break;
      case StepState::kTodo:
        break;
    }
  }

  if (status.state != shown_state_) {
    shown_state_ = status.state;
    if (status.state == JobState::kDone) {
      line(fmt::format("DONE in {}: {}", HumanDuration(static_cast<double>(status.elapsed_seconds)),
                       status.message));
    } else if (status.state == JobState::kError) {
      line("ERROR: " + status.message);
      if (!status.detail.empty() && status.detail != status.message) {
        line("  detail: " + status.detail);
      }
    }
  } else if (std::string text = ProgressLine(status);
             status.state == JobState::kDoing && !text.empty()) {
    auto now = std::chrono::steady_clock::now();
    if (tty_) {
      out += kEraseLine;
      out += kPrefix + PrintableText(text);
      progress_line_open_ = true;
    } else if (!step_changed && now - last_plain_progress_ >= kPlainProgressEvery) {
      last_plain_progress_ = now;
      line(text);
    }
  }
  return out;
}

void ConsoleDisplay::OnEvent(const JobEvent& event) {
  if (event.status == nullptr) return;
  std::lock_guard lock(mu_);
  std::string text = Render(*event.status, event.step_changed);
  // One write: lines from concurrent writers (the kernel's console messages) stay whole. A console
  // that cannot take it now (EAGAIN) loses this update; the next one redraws.
  if (!text.empty()) {
    ssize_t n = ::write(fd_.get(), text.data(), text.size());
    (void)n;
  }
}

}  // namespace byoi
