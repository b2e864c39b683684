// Running a program: the one way the agent starts one (mkfs.fat and mtools for the config drive,
// tools in tests). Never through a shell: an argument vector, an environment of our choosing.
#pragma once

#include <string>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

// Runs `argv` (argv[0] looked up on PATH) with `env` as its whole environment, stdin from
// /dev/null, waits, and returns Ok on exit status 0; otherwise kIo with the program's combined
// output (first 4 KiB) in the detail. `output`, when given, receives stdout+stderr (first 1 MiB).
Status RunProgram(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  std::string* output = nullptr);

}  // namespace byoi
