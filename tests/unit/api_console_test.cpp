// Console progress: what a person watching IPMI/KVM or a serial console sees.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "agent/api/console.hpp"
#include "agent/base/messages.hpp"

namespace byoi {
namespace {

TEST(ConsoleTest, ProgressBar) {
  EXPECT_EQ(ProgressBar(0, 100, 10), "[----------]");
  EXPECT_EQ(ProgressBar(45, 100, 10), "[####------]");
  EXPECT_EQ(ProgressBar(100, 100, 10), "[##########]");
  EXPECT_EQ(ProgressBar(200, 100, 10), "[##########]");
  EXPECT_EQ(ProgressBar(5, 0, 4), "[----]");  // unknown total
}

TEST(ConsoleTest, ProgressTextShowsBytesRateAndEta) {
  StepStatus s;
  s.step = Step::kDownload;
  s.bytes_done = 1000000000;
  s.bytes_total = 2000000000;
  s.seconds = 10;
  EXPECT_EQ(ProgressText(s),
            ProgressBar(1, 2) + "  50%  " + "954 MiB of 1.9 GiB  100 MB/s  ETA 10 s");
  s.bytes_total = 0;  // size unknown: no bar, no ETA
  EXPECT_EQ(ProgressText(s), "954 MiB  100 MB/s");
}

TEST(ConsoleTest, ProgressLineShowsDownloadAndWriteAtOnceWithTheSlowerEta) {
  JobStatus status;
  status.progress = {StepStatus{Step::kDownload, StepState::kDoing, "", 1000000000, 2000000000, 10},
                     StepStatus{Step::kVerify, StepState::kTodo, "", 0, 0, 0},
                     StepStatus{Step::kWrite, StepState::kDoing, "", 500000000, 2000000000, 10}};
  // Download: 10 s left at 100 MB/s; write: 30 s left at 50 MB/s. The job ends with the write.
  EXPECT_EQ(ProgressLine(status), "download    " + ProgressText(status.progress[0], false) +
                                      "  |  write       " +
                                      ProgressText(status.progress[2], false) + "  ETA 30 s");
  EXPECT_EQ(ProgressText(status.progress[2], false).find("ETA"), std::string::npos);
  // One step doing: its own line, its own ETA, as ProgressText gives it.
  status.progress[0].state = StepState::kDone;
  EXPECT_EQ(ProgressLine(status), "write       " + ProgressText(status.progress[2]));
}

class ConsoleRenderTest : public ::testing::Test {
 protected:
  static JobStatus Started() {
    StatusBoard board;
    board.Start("web-1");
    return board.Snapshot();
  }
};

TEST_F(ConsoleRenderTest, PlainLinesOnANonTerminal) {
  ConsoleDisplay console(UniqueFd(), /*tty=*/false);
  JobStatus s = Started();
  EXPECT_EQ(console.Render(s, true), "byoi-agent: deployment started (web-1)\n");
  s.progress[0].state = StepState::kDoing;
  EXPECT_EQ(console.Render(s, true), "byoi-agent: download    started\n");
  // Byte progress right after the step began is not repeated on a serial console.
  s.progress[0].bytes_done = 10;
  s.progress[0].bytes_total = 100;
  EXPECT_EQ(console.Render(s, false), "");
  s.progress[0].state = StepState::kDone;
  s.progress[0].comment = "100 B in 1 s (100 B/s)";
  s.progress[1].state = StepState::kSkipped;
  s.progress[1].comment = "no checksum given";
  EXPECT_EQ(console.Render(s, true),
            "byoi-agent: download    done: 100 B in 1 s (100 B/s)\n"
            "byoi-agent: verify      skipped: no checksum given\n");
  s.progress[2].state = StepState::kError;
  s.state = JobState::kError;
  s.message = "Can't write raw on disk.";
  s.detail = "writing extent at 0x100000: Input/output error";
  EXPECT_EQ(console.Render(s, true),
            "byoi-agent: write       failed\n"
            "byoi-agent: ERROR: Can't write raw on disk.\n"
            "byoi-agent:   detail: writing extent at 0x100000: Input/output error\n");
  EXPECT_EQ(console.Render(s, true), "");  // nothing new
}

TEST_F(ConsoleRenderTest, TerminalRedrawsTheProgressLineInPlace) {
  ConsoleDisplay console(UniqueFd(), /*tty=*/true);
  JobStatus s = Started();
  console.Render(s, true);
  s.progress[0].state = StepState::kDoing;
  s.progress[0].bytes_done = 50;
  s.progress[0].bytes_total = 100;
  EXPECT_EQ(console.Render(s, true),
            "byoi-agent: download    started\n\r\033[Kbyoi-agent: download    " +
                ProgressText(s.progress[0]));
  s.progress[0].bytes_done = 60;
  EXPECT_EQ(console.Render(s, false),
            "\r\033[Kbyoi-agent: download    " + ProgressText(s.progress[0]));
  s.progress[0].state = StepState::kDone;
  s.state = JobState::kDone;
  s.message = "done";
  s.elapsed_seconds = 65;
  EXPECT_EQ(console.Render(s, true),
            "\r\033[Kbyoi-agent: download    done\nbyoi-agent: DONE in 1 min 05 s: done\n");
}

TEST_F(ConsoleRenderTest, ARestoredInterruptedJobIsShownInFull) {
  ConsoleDisplay console(UniqueFd(), false);
  JobStatus s = Started();
  s.state = JobState::kError;
  s.message = std::string(msg::kInterrupted);
  s.detail = "the agent stopped during step write";
  s.progress[0].state = StepState::kDone;
  s.progress[2].state = StepState::kError;
  EXPECT_EQ(console.Render(s, true),
            "byoi-agent: download    done\n"
            "byoi-agent: write       failed\n"
            "byoi-agent: ERROR: Deployment interrupted: the agent restarted.\n"
            "byoi-agent:   detail: the agent stopped during step write\n");
}

// Whatever a status holds (one made without the board, which cleans its text already), the console
// shows no control character from it: on a serial console none at all but the line ends, on a
// screen only the display's own "\r\033[K".
TEST_F(ConsoleRenderTest, TextFromOutsideNeverDrivesTheTerminal) {
  const std::string hostile = "\x1b]0;pwned\x07\x1b[2J\xff\xfe\nbyoi-agent: DONE";
  const std::string shown = "\\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe\\x0abyoi-agent: DONE";
  for (bool tty : {false, true}) {
    SCOPED_TRACE(tty ? "screen" : "serial");
    ConsoleDisplay console(UniqueFd(), tty);
    JobStatus s;
    s.started_at = 1;
    s.servername = hostile;
    for (Step step : kAllSteps) {
      StepStatus p;
      p.step = step;
      s.progress.push_back(p);
    }
    std::string out = console.Render(s, true);
    EXPECT_EQ(out, "byoi-agent: deployment started (" + shown + ")\n");
    s.progress[0].state = StepState::kDone;
    s.progress[0].comment = hostile;
    s.progress[1].state = StepState::kSkipped;
    s.progress[1].comment = hostile;
    s.progress[2].state = StepState::kError;
    s.state = JobState::kError;
    s.message = hostile;
    s.detail = hostile + " (detail)";
    std::string end = console.Render(s, true);
    EXPECT_EQ(end, "byoi-agent: download    done: " + shown + "\n" +
                       "byoi-agent: verify      skipped: " + shown + "\n" +
                       "byoi-agent: write       failed\n" + "byoi-agent: ERROR: " + shown + "\n" +
                       "byoi-agent:   detail: " + shown + " (detail)\n");
    out += end;
    EXPECT_EQ(out.find_first_of("\x1b\x07\xff\xfe\r"), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 6);
  }
}

TEST(ConsoleOpenTest, RedrawsInPlaceOnlyOnScreensNotOnSerialPortsOrFiles) {
  // A pseudo-terminal: an operator's terminal.
  UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  ASSERT_TRUE(master.valid());
  ASSERT_EQ(::grantpt(master.get()), 0);
  ASSERT_EQ(::unlockpt(master.get()), 0);
  UniqueFd pty(::open(::ptsname(master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
  ASSERT_TRUE(pty.valid());
  EXPECT_TRUE(RedrawsInPlace(pty.get()));
  // Not terminals.
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  EXPECT_FALSE(RedrawsInPlace(write_end.get()));
  UniqueFd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  EXPECT_FALSE(RedrawsInPlace(null.get()));
  // The machine's own consoles, where it has them (this one does: serial ttyS0 and the VT tty0).
  for (auto [path, expected] : {std::pair{"/dev/ttyS0", false}, std::pair{"/dev/tty0", true}}) {
    UniqueFd fd(::open(path, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid() || ::isatty(fd.get()) != 1) continue;  // no such hardware here
    EXPECT_EQ(RedrawsInPlace(fd.get()), expected) << path;
  }
}

TEST(ConsoleOpenTest, WritesToAFile) {
  std::string path = ::testing::TempDir() + "/byoi-console-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  Result<std::unique_ptr<ConsoleDisplay>> console = ConsoleDisplay::Open(path);
  ASSERT_TRUE(console.ok()) << console.status().ToString();
  StatusBoard board;
  board.Start("");
  JobStatus s = board.Snapshot();
  std::string id;
  (*console)->OnEvent(JobEvent{&s, id, true});
  (*console)->OnEvent(JobEvent{nullptr, id, true});
  Result<std::string> text = ReadSmallFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "byoi-agent: deployment started\n");
  ::unlink(path.c_str());
  EXPECT_FALSE(ConsoleDisplay::Open("/nonexistent-dir/console").ok());
}

}  // namespace
}  // namespace byoi
