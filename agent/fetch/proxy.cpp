#include "agent/fetch/proxy.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fmt/format.h>
#include <strings.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <memory>
#include <optional>

#include "agent/base/text.hpp"
#include "agent/fetch/curl_handles.hpp"

namespace byoi {

namespace {

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string FirstSet(const char* lower, const char* upper) {
  std::string v = Getenv(lower);
  return v.empty() ? Getenv(upper) : v;
}

// An IPv4 or IPv6 address as 4 or 16 bytes; nullopt for anything else (a name).
struct Address {
  std::array<uint8_t, 16> bytes{};
  int size = 0;  // 4 or 16
};

std::optional<Address> ParseAddress(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  if (text.empty() || text.size() > 64) return std::nullopt;
  const std::string s(text);
  Address a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
    a.size = 4;
    return a;
  }
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
    a.size = 16;
    return a;
  }
  return std::nullopt;
}

// The first `bits` bits of `a` and `b` are equal (both of one family).
bool SamePrefix(const Address& a, const Address& b, int bits) {
  for (int i = 0; bits > 0; ++i, bits -= 8) {
    const uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if ((a.bytes[i] & mask) != (b.bytes[i] & mask)) return false;
  }
  return true;
}

// One no_proxy entry against `host` (brackets and trailing dot removed).
bool EntryMatches(std::string_view host, const std::optional<Address>& host_addr,
                  std::string_view entry) {
  if (entry == "*") return true;
  if (const size_t slash = entry.find('/'); slash != std::string_view::npos) {
    if (!host_addr) return false;
    std::optional<Address> net = ParseAddress(entry.substr(0, slash));
    std::string_view bits_text = entry.substr(slash + 1);
    int bits = -1;
    auto [end, ec] = std::from_chars(bits_text.data(), bits_text.data() + bits_text.size(), bits);
    if (!net || net->size != host_addr->size || ec != std::errc() ||
        end != bits_text.data() + bits_text.size() || bits < 0 || bits > net->size * 8) {
      return false;
    }
    return SamePrefix(*net, *host_addr, bits);
  }
  if (host_addr) {
    std::optional<Address> addr = ParseAddress(entry);
    return addr && addr->size == host_addr->size && addr->bytes == host_addr->bytes;
  }
  if (entry.starts_with('.')) entry.remove_prefix(1);
  if (entry.ends_with('.')) entry.remove_suffix(1);
  if (entry.empty()) return false;
  if (EqualsIgnoreCaseAscii(host, entry)) return true;
  return host.size() > entry.size() && host[host.size() - entry.size() - 1] == '.' &&
         EqualsIgnoreCaseAscii(host.substr(host.size() - entry.size()), entry);
}

}  // namespace

ProxyEnvironment ProxyEnvironment::FromProcess() {
  ProxyEnvironment env;
  env.http_proxy = Getenv("http_proxy");
  env.https_proxy = FirstSet("https_proxy", "HTTPS_PROXY");
  env.no_proxy = FirstSet("no_proxy", "NO_PROXY");
  return env;
}

Status CheckProxyUrl(std::string_view url) {
  auto bad = [](std::string_view why) {
    return Status::Error(Code::kInvalid,
                         fmt::format("{} (expected http://HOST[:PORT] or https://HOST[:PORT], "
                                     "optionally with USER:PASSWORD@ before the host)",
                                     why));
  };
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos ||
      !(EqualsIgnoreCaseAscii(url.substr(0, scheme_end), "http") ||
        EqualsIgnoreCaseAscii(url.substr(0, scheme_end), "https"))) {
    return bad("must start with http:// or https://");
  }
  CurlUrlPtr u(curl_url());
  if (!u) return Status::Error(Code::kInternal, "curl_url failed");
  // libcurl's reason names the part that is wrong, never its text.
  if (CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, std::string(url).c_str(), 0);
      rc != CURLUE_OK) {
    return bad(fmt::format("not a URL: {}", curl_url_strerror(rc)));
  }
  if (UrlPart(u.get(), CURLUPART_HOST).value_or("").empty()) return bad("has no host");
  if (std::optional<std::string> port = UrlPart(u.get(), CURLUPART_PORT)) {
    int n = 0;
    auto [end, ec] = std::from_chars(port->data(), port->data() + port->size(), n);
    if (ec != std::errc() || end != port->data() + port->size() || n < 1 || n > 65535) {
      return bad("has a port outside 1-65535");
    }
  }
  if (std::optional<std::string> path = UrlPart(u.get(), CURLUPART_PATH);
      path && !path->empty() && *path != "/") {
    return bad("has a path (a proxy is a host and a port)");
  }
  if (UrlPart(u.get(), CURLUPART_QUERY) || UrlPart(u.get(), CURLUPART_FRAGMENT)) {
    return bad("has a query or a fragment");
  }
  return Status::Ok();
}

bool NoProxyMatches(std::string_view host, std::string_view no_proxy) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.ends_with('.')) host.remove_suffix(1);
  if (host.empty()) return false;
  const std::optional<Address> host_addr = ParseAddress(host);
  size_t pos = 0;
  while (pos < no_proxy.size()) {
    const size_t end = std::min(no_proxy.find_first_of(", \t", pos), no_proxy.size());
    std::string_view entry = no_proxy.substr(pos, end - pos);
    pos = end + 1;
    if (!entry.empty() && EntryMatches(host, host_addr, entry)) return true;
  }
  return false;
}

Result<ProxyChoice> ChooseProxy(std::string_view url, std::string_view configured,
                                const ProxyEnvironment& env) {
  if (!configured.empty()) {
    if (Status s = CheckProxyUrl(configured); !s.ok()) {
      return std::move(s).Context("the proxy option");
    }
    return ProxyChoice{std::string(configured), "the proxy option"};
  }
  CurlUrlPtr u(curl_url());
  if (!u) return Status::Error(Code::kInternal, "curl_url failed");
  if (CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, std::string(url).c_str(), 0);
      rc != CURLUE_OK) {
    return Status::Error(Code::kInvalid,
                         fmt::format("choosing a proxy: the URL: {}", curl_url_strerror(rc)));
  }
  const bool https =
      EqualsIgnoreCaseAscii(UrlPart(u.get(), CURLUPART_SCHEME).value_or(""), "https");
  const std::string& value = https ? env.https_proxy : env.http_proxy;
  const char* name = https ? "https_proxy" : "http_proxy";
  if (value.empty()) return ProxyChoice{};
  if (NoProxyMatches(UrlPart(u.get(), CURLUPART_HOST).value_or(""), env.no_proxy)) {
    return ProxyChoice{};
  }
  std::string proxy = value.find("://") == std::string::npos ? "http://" + value : value;
  if (Status s = CheckProxyUrl(proxy); !s.ok()) {
    return std::move(s).Context(fmt::format("the {} environment variable", name));
  }
  return ProxyChoice{std::move(proxy), name};
}

}  // namespace byoi
