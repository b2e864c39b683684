#include "agent/cli/config.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <optional>

#include "agent/base/fd.hpp"
#include "agent/base/text.hpp"
#include "agent/cli/options.hpp"

namespace byoi {

namespace {

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

    line = TrimBlanks(line);
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("expected `key = value`");
    const OptionSpec* option = FindOption(TrimBlanks(line.substr(0, eq)));
    std::string key =
        option ? std::string(option->key) : std::string(TrimBlanks(line.substr(0, eq)));
    std::string_view value = TrimBlanks(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"') {
      size_t close = value.find('"', 1);
      if (close == std::string_view::npos) return bad("unterminated quote");
      std::string_view rest = TrimBlanks(value.substr(close + 1));
      if (!rest.empty() && rest[0] != '#') return bad("text after the closing quote");
      value = value.substr(1, close - 1);
    } else if (size_t hash = value.find(" #"); hash != std::string_view::npos) {
      value = TrimBlanks(value.substr(0, hash));
    }
    if (option == nullptr) return bad("unknown key " + key);
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
    std::string_view name =
        std::string_view(w).substr(5, eq == std::string::npos ? w.npos : eq - 5);
    const OptionSpec* option = FindOption(name);
    if (option == nullptr) {
      if (unknown) unknown->push_back("byoi." + std::string(name));
      continue;
    }
    // The last one wins.
    out[std::string(option->key)] = eq == std::string::npos ? std::string() : w.substr(eq + 1);
  }
  return out;
}

Result<DaemonConfig> LoadOptions(const ConfigSources& sources, DaemonConfig config) {
  // 1. The config file.
  std::map<std::string, std::string> file;
  std::string file_path = sources.read_config_file ? sources.config_file : std::string();
  if (sources.read_config_file && file_path.empty() &&
      std::filesystem::exists(kDefaultConfigFile)) {
    file_path = kDefaultConfigFile;
  }
  if (!file_path.empty()) {
    BYOI_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(file_path, 1 << 20));
    Result<std::map<std::string, std::string>> parsed = ParseConfigText(text);
    if (!parsed.ok()) return std::move(parsed).status().Context(file_path);
    file = std::move(*parsed);
  }

  // 2. The kernel command line.
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

  // 3. Merge: flag > kernel command line > config file; each winner set by its parser.
  config.token_file.clear();
  for (const OptionSpec& option : AgentOptions()) {
    const std::string key(option.key);
    std::optional<std::string> value;
    std::string where;
    if (auto it = sources.flags.find(key); it != sources.flags.end()) {
      value = it->second;
      where = "command line";
    } else if (auto it = cmdline.find(key); it != cmdline.end()) {
      value = it->second;
      where = "kernel command line";
    } else if (auto it = file.find(key); it != file.end()) {
      value = it->second;
      where = file_path;
    }
    if (!value) continue;
    config.sources[key] = where;
    if (Status s = option.set(*value, config); !s.ok()) {
      return Status::Error(Code::kInvalid, fmt::format("{} (from {}): {}", key, where, s.detail()));
    }
  }
  return config;
}

Result<DaemonConfig> LoadDaemonConfig(const ConfigSources& sources) {
  DaemonConfig defaults;
  defaults.job.reboot = RebootMode::kReboot;  // the daemon's default; `deploy` defaults to none
  BYOI_ASSIGN_OR_RETURN(DaemonConfig config, LoadOptions(sources, std::move(defaults)));
  auto source_of = [&](const std::string& key) -> std::string {
    auto it = config.sources.find(key);
    return it == config.sources.end() ? std::string() : it->second;
  };
  auto rank = [&](const std::string& key) {
    std::string where = source_of(key);
    return where == "command line" ? 0 : where == "kernel command line" ? 1 : 2;
  };
  auto bad = [&](const std::string& key, std::string why) {
    return Status::Error(Code::kInvalid, fmt::format("{} (from {}): {}", key, source_of(key), why));
  };
  std::optional<std::string> token, token_file;
  if (!source_of("token").empty()) token = config.token;
  if (!source_of("token_file").empty()) token_file = config.token_file;
  config.token.clear();

  // The token, given or from its file: one setting, so the higher-precedence source wins.
  if (token && token_file) {
    if (rank("token") == rank("token_file")) {
      return Status::Error(Code::kInvalid, fmt::format("token and token_file are both given on the "
                                                       "{}: give one of them",
                                                       source_of("token")));
    }
    if (rank("token") < rank("token_file")) {
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
