// Console progress for people watching an install through IPMI/KVM or a serial console:
// one line per step change, a progress line with a bar, rate and ETA during byte-counted steps, and
// on error the catalogue message and its detail in full.
//
// On a screen (a virtual console, as a BMC's KVM shows it, or a pseudo-terminal) the progress line
// is redrawn in place (carriage return + erase line); elsewhere (a serial console, as IPMI
// serial-over-LAN records it, a file) progress is printed as plain lines at most every 10 s per
// step, so logs stay readable. Example:
//
//   byoi-agent: deployment started (web-1)
//   byoi-agent: download    [#########-----------]  45%  1.0 GiB of 2.1 GiB  113 MB/s  ETA 10 s
//   byoi-agent: download    done: 2.1 GiB in 19 s (113 MB/s)
//   byoi-agent: ERROR: Could not download image located: https://example.net/x.qcow2.
//   byoi-agent:   detail: HTTP 404
//
// Each line's text is made printable (PrintableText) before it is written, whatever the status
// holds: the only control characters on the console are the display's own (CR, erase line, LF),
// so a reason phrase or a file name from outside cannot drive the terminal or fake a line.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "agent/base/fd.hpp"
#include "agent/base/status.hpp"
#include "agent/job/job_control.hpp"

namespace byoi {

class ConsoleDisplay {
 public:
  // Opens `path` for writing (without becoming its controlling terminal; a regular file is created
  // or appended to). kIo when it cannot be opened.
  static Result<std::unique_ptr<ConsoleDisplay>> Open(const std::string& path);
  // Draws on `fd`; `tty` chooses in-place redraws (RedrawsInPlace).
  ConsoleDisplay(UniqueFd fd, bool tty);

  // A JobControl listener. Never blocks on a stuck console: writes are non-blocking and dropped
  // when the console cannot take them.
  void OnEvent(const JobEvent& event);

  // The text OnEvent writes for `status`, given what was shown before; exposed for tests.
  std::string Render(const JobStatus& status, bool step_changed);

 private:
  UniqueFd fd_;
  const bool tty_;
  std::mutex mu_;
  // What the console shows already.
  int64_t job_started_at_ = -1;
  StepState shown_[7] = {};
  JobState shown_state_ = JobState::kDoing;
  bool progress_line_open_ = false;  // tty: a progress line waits to be overwritten
  std::chrono::steady_clock::time_point last_plain_progress_;
};

// True when `fd` is a virtual console or a pseudo-terminal, also behind /dev/console; false for
// serial ports, other terminals and anything that is not a terminal.
bool RedrawsInPlace(int fd);

// "[#########-----------]" for done/total with `width` cells inside the brackets.
std::string ProgressBar(uint64_t done, uint64_t total, int width = 20);
// The progress part of a line: bar, percent, bytes, rate and ETA (what is known of them).
std::string ProgressText(const StepStatus& step, bool with_eta = true);
// The progress line of a job: every byte-counted step that is doing (download and write at once in
// stream mode), and one ETA, the slower step's.
std::string ProgressLine(const JobStatus& status);

}  // namespace byoi
