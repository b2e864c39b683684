// The few pieces of HTTP the downloader reads itself, from header lines that libcurl hands over:
// the status line, Content-Length and Content-Range (RFC 9110 §14.4), and which statuses are worth
// another attempt. Pure functions over untrusted text, so they are unit-tested on their own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace byoi {

// A request header the manifest asks the download to send (docs/manifest.md).
struct HttpHeader {
  std::string name;   // an RFC 7230 token
  std::string value;  // no CR, LF or NUL; a secret: never logged, shown as *** when printed
};

struct StatusLine {
  int code = 0;        // 100-599
  std::string reason;  // "Not Found"; empty for HTTP/2 and later
};

// "HTTP/1.1 404 Not Found\r\n" -> {404, "Not Found"}; nullopt for anything else.
std::optional<StatusLine> ParseStatusLine(std::string_view line);

// If `line` is the header `name` (case-insensitive), its value without surrounding blanks and the
// line ending; nullopt otherwise.
std::optional<std::string_view> HeaderValue(std::string_view line, std::string_view name);

// A Content-Length value: decimal digits only, no sign, no overflow.
std::optional<uint64_t> ParseContentLength(std::string_view value);

struct ContentRange {
  uint64_t first = 0;
  uint64_t last = 0;                 // inclusive
  std::optional<uint64_t> complete;  // the whole representation's length; nullopt for "*"
};

// "bytes 100-999/1000" or "bytes 100-999/*". nullopt when malformed, when last < first, or when
// last is not below the complete length.
std::optional<ContentRange> ParseContentRange(std::string_view value);

// An HTTP error status that may go away on its own: 408, 429 and every 5xx. Other 4xx are final.
bool IsRetryableHttpStatus(int code);

}  // namespace byoi
