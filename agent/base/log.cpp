#include "agent/base/log.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

#include "agent/base/text.hpp"

namespace byoi {
namespace {

constexpr const char* kPattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v";

// Cleans the message, then lets spdlog's own formatter lay out the line: the pattern's parts
// (time, level, the end of line) are ours and stay as they are.
class PrintableFormatter final : public spdlog::formatter {
 public:
  explicit PrintableFormatter(std::unique_ptr<spdlog::formatter> inner)
      : inner_(std::move(inner)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string_view payload(msg.payload.data(), msg.payload.size());
    if (IsPrintableText(payload) && payload.size() <= kMaxLogMessageBytes) {
      inner_->format(msg, dest);
      return;
    }
    std::string clean = PrintableText(payload, kMaxLogMessageBytes);
    spdlog::details::log_msg copy = msg;
    copy.payload = spdlog::string_view_t(clean.data(), clean.size());
    inner_->format(copy, dest);
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<PrintableFormatter>(inner_->clone());
  }

 private:
  std::unique_ptr<spdlog::formatter> inner_;
};

}  // namespace

std::unique_ptr<spdlog::formatter> MakePrintableFormatter(const std::string& pattern) {
  return std::make_unique<PrintableFormatter>(std::make_unique<spdlog::pattern_formatter>(pattern));
}

Status SetupLogging(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return Status::Error(Code::kInvalid, "unknown log level " + std::string(level));
  }
  spdlog::drop("byoi-agent");
  auto logger = spdlog::stderr_logger_mt("byoi-agent");
  logger->set_formatter(MakePrintableFormatter(kPattern));
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return Status::Ok();
}

}  // namespace byoi
