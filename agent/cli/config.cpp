#include "agent/cli/config.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <optional>

#include "agent/api/http_server.hpp"  // ParseListenAddress
#include "agent/base/fd.hpp"
#include "agent/base/units.hpp"
#include "agent/disk/inventory.hpp"

namespace byoi {

namespace {

// Every key, with the DaemonArgs field of its command line flag.
struct Key {
  const char* name;
  std::optional<std::string> DaemonArgs::*flag;  // null for config-only keys
};

constexpr Key kKeys[] = {
    {"listen", &DaemonArgs::listen},
    {"token", &DaemonArgs::token},
    {"token_file", &DaemonArgs::token_file},
    {"tls_cert", &DaemonArgs::tls_cert},
    {"tls_key", &DaemonArgs::tls_key},
    {"backend_url", &DaemonArgs::backend_url},
    {"agent_id", &DaemonArgs::agent_id},
    {"disk", &DaemonArgs::disk},
    {"efivars", &DaemonArgs::efivars},
    {"state_file", &DaemonArgs::state_file},
    {"reboot", &DaemonArgs::reboot},
    {"memory_limit", &DaemonArgs::memory_limit},
    {"efi_boot_order", &DaemonArgs::efi_boot_order},
    {"log_level", &DaemonArgs::log_level},
    {"ca_bundle", &DaemonArgs::ca_bundle},
    {"insecure", &DaemonArgs::insecure},
    {"stall_timeout", &DaemonArgs::stall_timeout},
    {"retry_delay", &DaemonArgs::retry_delay},
    {"download_attempts", &DaemonArgs::download_attempts},
    {"connections", &DaemonArgs::connections},
    // Not flags: set rarely, in the config file or on the kernel command line.
    {"poll_interval", nullptr},
    {"console", nullptr},
    {"disk_groups", nullptr},
};

bool IsKnownKey(std::string_view key) {
  return std::any_of(std::begin(kKeys), std::end(kKeys),
                     [&](const Key& k) { return key == k.name; });
}

std::string NormaliseKey(std::string_view key) {
  std::string out(key);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

std::string_view Trim(std::string_view s) {
  const char* ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// A decimal number of seconds within [min, max].
std::optional<double> ParseSeconds(const std::string& v, double min, double max) {
  double seconds = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
  if (ec != std::errc() || end != v.data() + v.size() || !(seconds >= min) || seconds > max) {
    return std::nullopt;
  }
  return seconds;
}

bool OneOf(const std::string& value, std::initializer_list<std::string_view> allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

// The token in `path`: the file's one line without its line ending. Refused when the file is
// accessible to group or others (like ssh with a private key: a token others can read is no
// secret), empty, or more than a line. The token is never part of an error.
Result<std::string> ReadTokenFile(const std::string& path) {
  if (path.empty()) return Status::Error(Code::kInvalid, "must name a file");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno("reading " + path, errno);
  if (!S_ISREG(st.st_mode)) return Status::Error(Code::kInvalid, path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    return Status::Error(Code::kInvalid,
                         fmt::format("{} is accessible to group or others (mode {:04o}): make it "
                                     "0600 or 0400",
                                     path, st.st_mode & 07777));
  }
  BYOI_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 4096));
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  if (text.empty()) return Status::Error(Code::kInvalid, path + " holds no token");
  if (text.find('\n') != std::string::npos) {
    return Status::Error(Code::kInvalid, path + " holds more than one line");
  }
  return text;
}

}  // namespace

Result<std::map<std::string, std::string>> ParseConfigText(std::string_view text) {
  std::map<std::string, std::string> out;
  int line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    auto bad = [&](std::string why) {
      return Status::Error(Code::kInvalid, fmt::format("config file line {}: {}", line_no, why));
    };

    line = Trim(line);
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("expected `key = value`");
    std::string key = NormaliseKey(Trim(line.substr(0, eq)));
    std::string_view value = Trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"') {
      size_t close = value.find('"', 1);
      if (close == std::string_view::npos) return bad("unterminated quote");
      std::string_view rest = Trim(value.substr(close + 1));
      if (!rest.empty() && rest[0] != '#') return bad("text after the closing quote");
      value = value.substr(1, close - 1);
    } else if (size_t hash = value.find(" #"); hash != std::string_view::npos) {
      value = Trim(value.substr(0, hash));
    }
    if (!IsKnownKey(key)) return bad("unknown key " + key);
    if (out.count(key)) return bad(key + " given twice");
    out[key] = std::string(value);
  }
  return out;
}

std::map<std::string, std::string> ParseKernelCmdline(std::string_view text,
                                                      std::vector<std::string>* unknown) {
  // Split like the kernel's next_arg(): whitespace separates words except inside double quotes;
  // the quotes themselves are dropped.
  std::vector<std::string> words;
  std::string word;
  bool in_quotes = false, have_word = false;
  for (char c : text) {
    if (c == '"') {
      in_quotes = !in_quotes;
      have_word = true;
    } else if (!in_quotes && (c == ' ' || c == '\t' || c == '\n')) {
      if (have_word) words.push_back(std::move(word));
      word.clear();
      have_word = false;
    } else {
      word += c;
      have_word = true;
    }
  }
  if (have_word) words.push_back(std::move(word));

  std::map<std::string, std::string> out;
  for (const std::string& w : words) {
    if (w == "--") break;  // the rest is init's
    if (w.rfind("byoi.", 0) != 0) continue;
    size_t eq = w.find('=');
    std::string key =
        NormaliseKey(std::string_view(w).substr(5, eq == std::string::npos ? w.npos : eq - 5));
    if (!IsKnownKey(key)) {
      if (unknown) unknown->push_back("byoi." + key);
      continue;
    }
    out[key] = eq == std::string::npos ? std::string() : w.substr(eq + 1);  // the last one wins
  }
  return out;
}

Result<DaemonConfig> LoadDaemonConfig(const DaemonArgs& flags, const ConfigSources& sources) {
  // 1. The config file.
  std::map<std::string, std::string> file;
  std::string file_path = sources.config_file;
  bool file_explicit = !file_path.empty();
  if (!file_explicit && std::filesystem::exists(kDefaultConfigFile)) file_path = kDefaultConfigFile;
  if (!file_path.empty()) {
    BYOI_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(file_path, 1 << 20));
    Result<std::map<std::string, std::string>> parsed = ParseConfigText(text);
    if (!parsed.ok()) return std::move(parsed).status().Context(file_path);
    file = std::move(*parsed);
  }

  // 2. The kernel command line.
  DaemonConfig config;
  std::map<std::string, std::string> cmdline;
  if (!sources.kernel_cmdline.empty()) {
    Result<std::string> text = ReadSmallFile(sources.kernel_cmdline, 1 << 16);
    if (text.ok()) {
      std::vector<std::string> unknown;
      cmdline = ParseKernelCmdline(*text, &unknown);
      for (const std::string& u : unknown) {
        config.warnings.push_back("ignoring unknown kernel command line option " + u);
      }
    } else {
      config.warnings.push_back(text.status().ToString());
    }
  }

  // 3. Merge: flag > kernel command line > config file. `Take` returns the winning value.
  std::map<std::string, std::string> where;
  std::map<std::string, int> rank;  // 0 for the command line, 1 the kernel's, 2 the config file
  auto Take = [&](const Key& key) -> std::optional<std::string> {
    if (key.flag && (flags.*key.flag)) {
      where[key.name] = "command line";
      rank[key.name] = 0;
      return *(flags.*key.flag);
    }
    if (auto it = cmdline.find(key.name); it != cmdline.end()) {
      where[key.name] = "kernel command line";
      rank[key.name] = 1;
      return it->second;
    }
    if (auto it = file.find(key.name); it != file.end()) {
      where[key.name] = file_path;
      rank[key.name] = 2;
      return it->second;
    }
    return std::nullopt;
  };
  auto bad = [&](const char* key, std::string why) {
    return Status::Error(Code::kInvalid, fmt::format("{} (from {}): {}", key, where[key], why));
  };

  config.job.reboot = "reboot";                  // the daemon's default; `deploy` defaults to none
  std::optional<std::string> token, token_file;  // resolved after the loop
  for (const Key& key : kKeys) {
    std::optional<std::string> v = Take(key);
    if (!v) continue;
    config.sources.push_back(fmt::format("{} ({})", key.name, where[key.name]));
    std::string_view name = key.name;
    if (name == "listen") {
      if (Result<ListenAddress> a = ParseListenAddress(*v); *v != "off" && !a.ok()) {
        return bad("listen", "expected ADDR:PORT such as 0.0.0.0:9999 or [::]:9999, or off");
      }
      config.listen = *v;
    } else if (name == "token") {
      token = *v;
    } else if (name == "token_file") {
      token_file = *v;
    } else if (name == "tls_cert") {
      config.tls_cert = *v;
    } else if (name == "tls_key") {
      config.tls_key = *v;
    } else if (name == "backend_url") {
      std::string url = *v;
      while (!url.empty() && url.back() == '/') url.pop_back();
      if (!url.empty() && url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
        return bad("backend_url", "must start with http:// or https://");
      }
      config.backend_url = url;
    } else if (name == "agent_id") {
      config.agent_id = *v;
    } else if (name == "disk") {
      config.job.disk = *v;
    } else if (name == "efivars") {
      config.job.efivars = *v;
    } else if (name == "state_file") {
      if (v->empty()) return bad("state_file", "must not be empty");
      config.state_file = *v;
    } else if (name == "reboot") {
      if (!OneOf(*v, {"none", "reboot", "poweroff", "kexec"})) {
        return bad("reboot", "must be none, reboot, poweroff or kexec");
      }
      config.job.reboot = *v;
    } else if (name == "memory_limit") {
      std::optional<uint64_t> size = ParseSize(*v);
      if (!size) return bad("memory_limit", "not a size (e.g. 20G, 512M)");
      config.job.memory_limit = size;
    } else if (name == "efi_boot_order") {
      if (!OneOf(*v, {"first", "after-network", "bootnext", "none"})) {
        return bad("efi_boot_order", "must be first, after-network, bootnext or none");
      }
      config.job.efi_boot_order = *v;
    } else if (name == "log_level") {
      if (!OneOf(*v, {"trace", "debug", "info", "warn", "error", "off"})) {
        return bad("log_level", "must be trace, debug, info, warn, error or off");
      }
      config.log_level = *v;
    } else if (name == "ca_bundle") {
      std::error_code ec;
      if (!v->empty() && !std::filesystem::is_regular_file(*v, ec)) {
        return bad("ca_bundle", "no such file: " + *v);
      }
      config.job.ca_bundle = *v;
    } else if (name == "insecure") {
      // A bare `byoi.insecure` word on the kernel command line means true.
      if (!OneOf(*v, {"", "true", "1", "yes", "false", "0", "no"})) {
        return bad("insecure", "must be true or false");
      }
      config.job.insecure = OneOf(*v, {"", "true", "1", "yes"});
    } else if (name == "stall_timeout") {
      std::optional<double> seconds = ParseSeconds(*v, 0.1, 3600);
      if (!seconds) return bad("stall_timeout", "must be a number of seconds between 0.1 and 3600");
      config.job.stall_timeout = *seconds;
    } else if (name == "retry_delay") {
      std::optional<double> seconds = ParseSeconds(*v, 0, 300);
      if (!seconds) return bad("retry_delay", "must be a number of seconds between 0 and 300");
      config.job.retry_delay = *seconds;
    } else if (name == "download_attempts") {
      int attempts = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), attempts);
      if (ec != std::errc() || end != v->data() + v->size() || attempts < 1 || attempts > 1000) {
        return bad("download_attempts", "must be a whole number between 1 and 1000");
      }
      config.job.download_attempts = attempts;
    } else if (name == "connections") {
      int connections = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), connections);
      if (ec != std::errc() || end != v->data() + v->size() || connections < 1 ||
          connections > 16) {
        return bad("connections", "must be a whole number between 1 and 16");
      }
      config.job.connections = connections;
    } else if (name == "poll_interval") {
      std::optional<double> seconds = ParseSeconds(*v, 0.05, 3600);
      if (!seconds)
        return bad("poll_interval", "must be a number of seconds between 0.05 and 3600");
      config.poll_interval = *seconds;
    } else if (name == "console") {
      config.console = v->empty() ? "none" : *v;
    } else if (name == "disk_groups") {
      if (Result<std::vector<GroupMapping>> m = ParseGroupMapping(*v); !m.ok()) {
        return bad("disk_groups", m.status().detail() + " (expected e.g. 1=sda,sdb 2=nvme0n1)");
      }
      config.job.disk_groups = *v;
    }
  }

  // The token, given or from its file: one setting, so the higher-precedence source wins.
  if (token && token_file) {
    if (rank["token"] == rank["token_file"]) {
      return Status::Error(Code::kInvalid, fmt::format("token and token_file are both given on the "
                                                       "{}: give one of them",
                                                       where["token"]));
    }
    if (rank["token"] < rank["token_file"]) {
      token_file.reset();
    } else {
      token.reset();
    }
  }
  if (token_file) {
    Result<std::string> read = ReadTokenFile(*token_file);
    if (!read.ok()) return bad("token_file", read.status().detail());
    token = std::move(*read);
  }
  if (token) {
    const char* key = token_file ? "token_file" : "token";
    std::string_view whose = token_file ? "the token in the file" : "the token";
    for (unsigned char c : *token) {
      if (c <= 0x20 || c >= 0x7f) {
        return bad(key, fmt::format("{} must be printable ASCII without spaces", whose));
      }
    }
    if (token->size() < kMinTokenLength) {
      return bad(key, fmt::format("{} must be at least {} characters long (it has {})", whose,
                                  kMinTokenLength, token->size()));
    }
    config.token = std::move(*token);
  }

  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return Status::Error(Code::kInvalid, "tls_cert and tls_key must be given together");
  }
  if (config.listen != "off" && config.token.empty()) {
    return Status::Error(Code::kInvalid,
                         "no API token: set token or token_file in the config file, byoi.token= "
                         "or byoi.token_file= on the kernel command line, or --token or "
                         "--token-file (or listen = off)");
  }
  if (config.listen == "off" && config.backend_url.empty()) {
    return Status::Error(Code::kInvalid,
                         "nothing to do: the HTTP API is off and no backend_url is set");
  }
  return config;
}

}  // namespace byoi
