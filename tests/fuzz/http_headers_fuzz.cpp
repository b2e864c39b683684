// The header parsers of the downloader over arbitrary lines from a server.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/fetch/http_headers.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  if (auto s = byoi::ParseStatusLine(line)) {
    if (s->code < 100 || s->code > 599) std::abort();
  }
  if (auto v = byoi::HeaderValue(line, "content-range")) {
    if (auto r = byoi::ParseContentRange(*v)) {
      if (r->last < r->first || (r->complete && r->last >= *r->complete)) std::abort();
    }
  }
  (void)byoi::ParseContentRange(line);
  (void)byoi::ParseContentLength(line);
  return 0;
}
