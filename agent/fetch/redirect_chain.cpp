#include "agent/fetch/redirect_chain.hpp"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <optional>

#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/fetch/curl_handles.hpp"

namespace byoi {

namespace {

struct Origin {
  std::string scheme;  // lower case
  std::string host;    // lower case; an IPv6 address keeps its brackets
  std::string port;    // the scheme's default when the URL names none
  bool operator==(const Origin&) const = default;
};

Origin OriginOf(CURLU* u) {
  return {ToLowerAscii(UrlPart(u, CURLUPART_SCHEME).value_or("")),
          ToLowerAscii(UrlPart(u, CURLUPART_HOST).value_or("")),
          UrlPart(u, CURLUPART_PORT, CURLU_DEFAULT_PORT).value_or("")};
}

}  // namespace

struct RedirectChain::Parts {
  std::string manifest_url;
  CurlUrlPtr start;    // the manifest's URL
  CurlUrlPtr current;  // url(), parsed
  Origin origin;
  std::optional<std::string> user, password;  // the manifest URL's, percent-encoded
};

RedirectChain::RedirectChain(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) { Restart(); }
RedirectChain::RedirectChain(RedirectChain&&) noexcept = default;
RedirectChain& RedirectChain::operator=(RedirectChain&&) noexcept = default;
RedirectChain::~RedirectChain() = default;

Result<RedirectChain> RedirectChain::Create(std::string_view url) {
  auto parts = std::make_unique<Parts>();
  parts->manifest_url = std::string(url);
  parts->start.reset(curl_url());
  if (!parts->start) return Status::Error(Code::kInternal, "curl_url failed");
  CURLUcode rc = curl_url_set(parts->start.get(), CURLUPART_URL, parts->manifest_url.c_str(),
                              CURLU_NON_SUPPORT_SCHEME);
  if (rc != CURLUE_OK) {
    return Status::Error(Code::kInvalid, fmt::format("parsing the URL {}: {}", msg::ShownUrl(url),
                                                     curl_url_strerror(rc)));
  }
  parts->origin = OriginOf(parts->start.get());
  parts->user = UrlPart(parts->start.get(), CURLUPART_USER);
  parts->password = UrlPart(parts->start.get(), CURLUPART_PASSWORD);
  return RedirectChain(std::move(parts));
}

void RedirectChain::Restart() {
  parts_->current.reset(curl_url_dup(parts_->start.get()));
  url_ = parts_->manifest_url;
  at_origin_ = true;
  redirects_ = 0;
}

Status RedirectChain::Follow(std::string_view location) {
  auto refused = [](std::string why) { return Status::Error(Code::kIo, std::move(why)); };
  CurlUrlPtr next(parts_->current ? curl_url_dup(parts_->current.get()) : nullptr);
  if (!next) return Status::Error(Code::kInternal, "curl_url_dup failed");
  // As libcurl follows a Location itself: relative to the current URL, spaces encoded.
  std::string loc(location);
  CURLUcode rc = curl_url_set(next.get(), CURLUPART_URL, loc.c_str(),
                              CURLU_NON_SUPPORT_SCHEME | CURLU_URLENCODE | CURLU_ALLOW_SPACE);
  if (rc != CURLUE_OK) {
    return refused(fmt::format("a redirect to {}, which is not a valid URL: {}",
                               msg::ShownUrl(location), curl_url_strerror(rc)));
  }
  // Whatever userinfo the target carries (its own, or the previous URL's kept by a relative
  // resolution) goes; the manifest's comes back at the origin only.
  curl_url_set(next.get(), CURLUPART_USER, nullptr, 0);
  curl_url_set(next.get(), CURLUPART_PASSWORD, nullptr, 0);
  curl_url_set(next.get(), CURLUPART_OPTIONS, nullptr, 0);
  std::optional<std::string> resolved = UrlPart(next.get(), CURLUPART_URL);
  if (!resolved) {
    return refused(
        fmt::format("a redirect to {}, which is not a valid URL", msg::ShownUrl(location)));
  }
  const std::string shown = msg::ShownUrl(*resolved);
  if (redirects_ >= kMaxRedirects) {
    return refused(fmt::format("more than {} redirects, the last to {}", kMaxRedirects, shown));
  }
  Origin target = OriginOf(next.get());
  if (target.scheme != "http" && target.scheme != "https") {
    return refused(
        fmt::format("a redirect to {} refused: only http and https are followed", shown));
  }
  if (parts_->origin.scheme == "https" && target.scheme != "https") {
    return refused(fmt::format(
        "a redirect from https to {} refused: the request would travel in clear over http", shown));
  }
  bool at_origin = target == parts_->origin;
  if (at_origin && parts_->user) {
    curl_url_set(next.get(), CURLUPART_USER, parts_->user->c_str(), 0);
    if (parts_->password)
      curl_url_set(next.get(), CURLUPART_PASSWORD, parts_->password->c_str(), 0);
    resolved = UrlPart(next.get(), CURLUPART_URL);
    if (!resolved) return Status::Error(Code::kInternal, "setting the userinfo of " + shown);
  }
  parts_->current = std::move(next);
  url_ = std::move(*resolved);
  at_origin_ = at_origin;
  ++redirects_;
  return Status::Ok();
}

}  // namespace byoi
