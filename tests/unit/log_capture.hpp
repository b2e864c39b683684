// LogCapture: the lines spdlog's default logger writes while it lives, for tests that check what
// is logged (and what never is). Used by tests/unit/api_*_test.cpp.
#pragma once

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace byoi {

class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()), sink_(std::make_shared<Sink>()) {
    auto logger = std::make_shared<spdlog::logger>("capture", sink_);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(std::move(logger));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // Every line so far, as "<level> <message>" ("warning http: ..."). Thread-safe.
  std::vector<std::string> Lines() const { return sink_->Lines(); }
  // The lines containing `text`.
  std::vector<std::string> Matching(std::string_view text) const {
    std::vector<std::string> out = Lines();
    out.erase(std::remove_if(out.begin(), out.end(),
                             [&](const std::string& l) { return l.find(text) == l.npos; }),
              out.end());
    return out;
  }

 private:
  class Sink : public spdlog::sinks::base_sink<std::mutex> {
   public:
    std::vector<std::string> Lines() {
      std::lock_guard lock(mutex_);
      return lines_;
    }

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      const spdlog::string_view_t& level = spdlog::level::to_string_view(msg.level);
      lines_.push_back(std::string(level.data(), level.size()) + " " +
                       std::string(msg.payload.data(), msg.payload.size()));
    }
    void flush_() override {}

   private:
    std::vector<std::string> lines_;
  };

  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<Sink> sink_;
};

}  // namespace byoi
