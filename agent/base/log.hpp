// Logging setup: spdlog to stderr (journald picks it up under systemd). Never log secrets:
// header values, the API token and user data stay out of every log line.
#pragma once

#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

// `level` is one of trace debug info warn error off. Returns kInvalid for anything else.
Status SetupLogging(std::string_view level);

}  // namespace byoi
