// Every option of the agent in one table (docs/cli.md): its config key, which is also its kernel
// command line word `byoi.<key>=` and, with dashes, its command line flag (`stall_timeout`,
// `byoi.stall_timeout=`, `--stall-timeout`); its help; and the one parser that checks a value and
// sets the typed field it stands for. CLI11 (deploy, daemon), the config file, the kernel command
// line and `disks --config` all go through it, so every value is checked once, with one range,
// before any job starts.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"
#include "agent/cli/config.hpp"

namespace byoi {

struct OptionSpec {
  enum class Scope {
    kJob,         // how a job runs: a flag of deploy and daemon, a key and a byoi. word
    kDaemon,      // the daemon's own: a flag of daemon, a key and a byoi. word
    kConfigOnly,  // set rarely: a key and a byoi. word, no flag
  };
  std::string_view key;
  Scope scope;
  std::string_view help;          // one line, with the default where there is one
  std::string_view group;         // the help section of its flag ("Download tuning"), or empty
  bool is_switch = false;         // a flag without value (--insecure); a bare byoi. word is true
  std::string_view metavar = "";  // what the value is, for the help ("SECONDS", "SIZE")
  // Checks `value` and sets its field of `config`. kInvalid with the reason, without the key or
  // where the value came from (the caller adds them): "must be none, reboot, poweroff or kexec".
  Status (*set)(std::string_view value, DaemonConfig& config) = nullptr;
};

// The table, in the order the help lists the flags.
std::span<const OptionSpec> AgentOptions();

// The option named `key` (a config key, dashes or underscores), or nullptr.
const OptionSpec* FindOption(std::string_view key);

// "--stall-timeout" for "stall_timeout".
std::string FlagName(const OptionSpec& option);

}  // namespace byoi
