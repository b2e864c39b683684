#include "agent/fetch/http_headers.hpp"

#include <cctype>
#include <charconv>

#include "agent/base/text.hpp"

namespace byoi {

namespace {

bool AllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (!AllDigits(s)) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::optional<StatusLine> ParseStatusLine(std::string_view line) {
  line = TrimBlanks(line);
  if (!line.starts_with("HTTP/")) return std::nullopt;
  size_t sp = line.find(' ');
  if (sp == std::string_view::npos) return std::nullopt;
  std::string_view rest = line.substr(sp + 1);
  if (rest.size() < 3 || !AllDigits(rest.substr(0, 3))) return std::nullopt;
  if (rest.size() > 3 && rest[3] != ' ') return std::nullopt;
  StatusLine s;
  s.code = (rest[0] - '0') * 100 + (rest[1] - '0') * 10 + (rest[2] - '0');
  if (s.code < 100 || s.code > 599) return std::nullopt;
  if (rest.size() > 4) s.reason = std::string(TrimBlanks(rest.substr(4)));
  return s;
}

std::optional<std::string_view> HeaderValue(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':') return std::nullopt;
  for (size_t i = 0; i < name.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(line[i])) !=
        std::tolower(static_cast<unsigned char>(name[i]))) {
      return std::nullopt;
    }
  }
  return TrimBlanks(line.substr(name.size() + 1));
}

std::optional<uint64_t> ParseContentLength(std::string_view value) {
  return ParseDecimal(TrimBlanks(value));
}

std::optional<ContentRange> ParseContentRange(std::string_view value) {
  value = TrimBlanks(value);
  if (!value.starts_with("bytes ")) return std::nullopt;
  value.remove_prefix(6);
  size_t dash = value.find('-');
  size_t slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) {
    return std::nullopt;
  }
  auto first = ParseDecimal(value.substr(0, dash));
  auto last = ParseDecimal(value.substr(dash + 1, slash - dash - 1));
  std::string_view complete = value.substr(slash + 1);
  if (!first || !last || *last < *first) return std::nullopt;
  ContentRange r{*first, *last, std::nullopt};
  if (complete != "*") {
    auto n = ParseDecimal(complete);
    if (!n || *last >= *n) return std::nullopt;
    r.complete = *n;
  }
  return r;
}

bool IsRetryableHttpStatus(int code) { return code == 408 || code == 429 || code >= 500; }

}  // namespace byoi
