// Logging setup: spdlog to stderr (journald picks it up under systemd). Never log secrets:
// header values, the API token and user data stay out of every log line.
//
// Every message is made printable (PrintableText, agent/base/text.hpp) by the logger's formatter,
// whatever a call site passes: an HTTP reason phrase or a name read from an image can hold
// escape sequences or invalid UTF-8, and a log line must neither drive the terminal it is shown
// on nor split into lines that look like the agent's own.
#pragma once

#include <spdlog/formatter.h>

#include <memory>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

// The longest message of one log line (the timestamp and level come on top).
inline constexpr size_t kMaxLogMessageBytes = 16 * 1024;

// `level` is one of trace debug info warn error off. Returns kInvalid for anything else.
Status SetupLogging(std::string_view level);

// The formatter SetupLogging gives the logger: spdlog's pattern formatter with `pattern`, fed the
// message made printable and cut at kMaxLogMessageBytes. Exposed for tests.
std::unique_ptr<spdlog::formatter> MakePrintableFormatter(const std::string& pattern);

}  // namespace byoi
