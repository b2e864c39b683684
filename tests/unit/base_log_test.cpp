// The logger makes every message printable, whatever a call site passes (agent/base/log.hpp).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <string>

#include "agent/base/fd.hpp"
#include "agent/base/log.hpp"
#include "agent/base/text.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

constexpr char kHostile[] = "\x1b]0;pwned\x07\x1b[2J\xff\xfe\nerror: fake line";

std::string Format(spdlog::formatter& f, std::string_view payload) {
  spdlog::details::log_msg msg("byoi-agent", spdlog::level::warn,
                               spdlog::string_view_t(payload.data(), payload.size()));
  spdlog::memory_buf_t buf;
  f.format(msg, buf);
  return std::string(buf.data(), buf.size());
}

TEST(PrintableFormatter, CleansTheMessageAndKeepsTheLayout) {
  auto f = MakePrintableFormatter("%l %v");
  EXPECT_EQ(Format(*f, kHostile),
            "warning \\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe\\x0aerror: fake line\n");
  EXPECT_EQ(Format(*f, "plain d\xc3\xa9ploy\xc3\xa9"), "warning plain d\xc3\xa9ploy\xc3\xa9\n");
  // A clone (spdlog clones the formatter for each sink) cleans too.
  EXPECT_EQ(Format(*f->clone(), "\x07"), "warning \\x07\n");
}

TEST(PrintableFormatter, BoundsAMessage) {
  auto f = MakePrintableFormatter("%v");
  std::string line = Format(*f, std::string(1 << 20, 'x'));
  EXPECT_LE(line.size(), kMaxLogMessageBytes + 1);
  EXPECT_NE(line.find(" bytes cut)\n"), std::string::npos);
}

// The logger SetupLogging installs, as the agent uses it: what reaches stderr.
TEST(SetupLogging, EveryLineOnStderrIsPrintable) {
  testing::TempDir dir;
  std::string path = dir / "stderr";
  int saved = ::dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  {
    Result<UniqueFd> file = OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(file.ok());
    ASSERT_EQ(::dup2(file->get(), STDERR_FILENO), STDERR_FILENO);
  }
  ASSERT_TRUE(SetupLogging("info").ok());
  spdlog::warn("download: HTTP 500 {}", kHostile);
  spdlog::error("{}", std::string("\0\x9b", 2));
  spdlog::default_logger()->flush();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);

  std::string text = testing::ReadAll(path);
  size_t first_end = text.find('\n');
  ASSERT_NE(first_end, std::string::npos) << text;
  EXPECT_NE(text.find(" warning download: HTTP 500 \\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe\\x0aerror: "
                      "fake line\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(" error \\x00\\x9b\n"), std::string::npos) << text;
  // Two lines, each printable apart from its end of line.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos;
       start = end + 1) {
    EXPECT_TRUE(IsPrintableText(text.substr(start, end - start))) << text;
  }
}

}  // namespace
}  // namespace byoi
