// Small helpers shared by the subcommands that take a manifest.
#pragma once

#include <string>

#include "agent/base/status.hpp"

namespace byoi {

// The manifest text from a file, or from standard input for "-". Refuses more than 1 MiB with the
// catalogue message, without reading further.
Result<std::string> ReadManifestText(const std::string& path);

}  // namespace byoi
