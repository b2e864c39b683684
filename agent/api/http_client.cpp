#include "agent/api/http_client.hpp"

#include <curl/curl.h>
#include <fmt/format.h>

#include <memory>

#include "agent/base/messages.hpp"
#include "agent/fetch/curl_handles.hpp"

namespace byoi {

namespace {

struct Transfer {
  std::string body;
  size_t max_body;
  bool too_big = false;
  const std::atomic<bool>* abort;
};

size_t OnData(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * count;
  if (t->body.size() + n > t->max_body) {
    t->too_big = true;
    return 0;  // makes curl fail with CURLE_WRITE_ERROR
  }
  t->body.append(data, n);
  return n;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->abort && t->abort->load() ? 1 : 0;
}

}  // namespace

HttpClient::HttpClient(const std::atomic<bool>* abort, std::string ca_bundle)
    : curl_(curl_easy_init()), abort_(abort), ca_bundle_(std::move(ca_bundle)) {}

HttpClient::~HttpClient() = default;

Result<HttpResult> HttpClient::Send(std::string_view method, const std::string& url,
                                    std::string_view body, std::string_view bearer_token,
                                    std::chrono::milliseconds timeout, size_t max_body) {
  std::string what = fmt::format("{} {}", method, msg::ShownUrl(url));
  CURL* curl = curl_.get();
  if (!curl) return Status::Error(Code::kInternal, what + ": curl_easy_init failed");
  curl_easy_reset(curl);

  Transfer transfer{{}, max_body, false, abort_};
  CurlSlistPtr headers;
  auto add = [&](const std::string& line) {
    headers.reset(curl_slist_append(headers.release(), line.c_str()));
  };
  if (!bearer_token.empty()) add(fmt::format("Authorization: Bearer {}", bearer_token));
  if (!body.empty()) add("Content-Type: application/json");
  add("Expect:");  // no 100-continue round trip for our small bodies

  std::string method_str(method);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  if (!ca_bundle_.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, ca_bundle_.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method_str.c_str());
  if (method != "GET") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "byoi-agent/" BYOI_VERSION);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::min<int64_t>(timeout.count(), 10000)));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnData);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);

  CURLcode rc = curl_easy_perform(curl);
  if (transfer.too_big) {
    return Status::Error(Code::kTooBig,
                         fmt::format("{}: answer larger than {} bytes", what, max_body));
  }
  if (rc == CURLE_ABORTED_BY_CALLBACK) return Status::Error(Code::kCancelled, what + ": stopped");
  if (rc != CURLE_OK)
    return Status::Error(Code::kIo, fmt::format("{}: {}", what, curl_easy_strerror(rc)));
  HttpResult result;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result.status);
  result.body = std::move(transfer.body);
  return result;
}

std::string EscapePathSegment(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace byoi
