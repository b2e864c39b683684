// The daemon's configuration (docs/cli.md): every `daemon` option from three sources, in order of
// precedence: the command line flag, the kernel command line word `byoi.<key>=`, the config file.
//
// A netbooted rescue system is configured through its kernel command line, so every key can be
// given there (`byoi.token=… byoi.backend_url=https://…`). The config file is `key = value` lines:
//
//   # comments and blank lines are ignored
//   listen = 0.0.0.0:9999
//   token = "s3cret"            # double quotes around a value are optional
//
// Keys are the flags' names with underscores (`--backend-url` is `backend_url`); dashes are
// accepted too, as the kernel itself treats `-` and `_` alike in parameter names. An unknown key in
// the config file is an error (a typo must not silently drop a setting); an unknown `byoi.` word on
// the kernel command line is reported as a warning, since the command line is shared with other
// tools.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/job/job_options.hpp"

namespace byoi {

inline constexpr const char* kDefaultConfigFile = "/etc/byoi-agent/byoi-agent.conf";
// The shortest API token accepted: anyone on the rescue network can try tokens.
inline constexpr size_t kMinTokenLength = 16;

struct DaemonConfig {
  std::string listen = "0.0.0.0:9999";  // ADDR:PORT ([v6]:PORT), port 0 = any; "off": no HTTP API
  // Bearer token (printable ASCII, at least kMinTokenLength characters); required unless listen is
  // off. A secret. Given as `token`, or read from the file named by `token_file` (which keeps it
  // out of /proc/PID/cmdline): one line, its newline stripped; the file must not be accessible to
  // group or others. Both from one source is an error; else the higher-precedence source wins.
  std::string token;
  std::string token_file;
  std::string tls_cert, tls_key;  // PEM files; TLS when both are set
  std::string backend_url;        // poll this backend (docs/backend.md) when set; no trailing /
  std::string agent_id;           // default: DMI product UUID, else first permanent MAC
  std::string state_file = "/run/byoi-agent/state.json";
  std::string console = "/dev/console";           // where progress is drawn; "none" to disable
  std::string log_level = "info";                 // trace debug info warn error off
  std::chrono::milliseconds poll_interval{5000};  // between backend polls (before jitter)
  JobOptions job;  // disk, efivars, reboot (the daemon's default: reboot), ...

  // Where each option given came from, by key: "command line", "kernel command line" or the
  // config file's path. For the start-up log and the messages; never values.
  std::map<std::string, std::string> sources;
  // Non-fatal findings while loading (unknown byoi.* words); the caller logs them.
  std::vector<std::string> warnings;
};

// Where the options come from, in order of precedence.
struct ConfigSources {
  // Values given on the command line, by config key (options.hpp); CLI11 fills it.
  std::map<std::string, std::string> flags;
  // The config file; "" means kDefaultConfigFile when it exists. A file named explicitly must
  // exist.
  std::string config_file;
  bool read_config_file = true;                  // false: no config file at all (deploy)
  std::string kernel_cmdline = "/proc/cmdline";  // "" to ignore the kernel command line
};

// Every option from its sources (flag, then kernel command line, then config file), each set by its
// parser (options.hpp) over `defaults`. kInvalid with a sentence naming the key and its source for
// a bad value ("reboot (from config file line 4): must be none, reboot, poweroff or kexec"); kIo
// when an explicitly named config file cannot be read. Values are never echoed for `token`.
Result<DaemonConfig> LoadOptions(const ConfigSources& sources, DaemonConfig defaults = {});

// LoadOptions with the daemon's defaults (reboot), then what the daemon needs to start: the token
// (from token or token_file, and long enough), both TLS files or none, and something to do.
Result<DaemonConfig> LoadDaemonConfig(const ConfigSources& sources);

// Exposed for tests. `key = value` lines → key → value; kInvalid naming the line for a line without
// `=`, an unknown key or a key given twice.
Result<std::map<std::string, std::string>> ParseConfigText(std::string_view text);

// The `byoi.<key>=<value>` words of a kernel command line (quotes handled as the kernel does; words
// after a lone `--` belong to init and are ignored). Unknown keys go to `unknown`.
std::map<std::string, std::string> ParseKernelCmdline(std::string_view text,
                                                      std::vector<std::string>* unknown = nullptr);

}  // namespace byoi
