// Where each request of a download goes, and whether the manifest's credentials go with it: its
// headers (httpHeader / httpHeaders, docs/manifest.md) and the userinfo of its URL.
//
// The downloader follows redirects itself, with this class, rather than let libcurl do it:
// libcurl keeps custom headers on a redirect to any host (it drops only Authorization and Cookie),
// so a header such as X-Api-Key or PRIVATE-TOKEN would reach whatever host a redirect names.
//
// The rules:
//   - The credentials go to the origin of the manifest's URL only: the same scheme, host and port
//     (RFC 6454 §4; a missing port is the scheme's default). A request anywhere else carries
//     neither the headers nor any userinfo; a presigned object-store URL needs none of them.
//   - Each request is judged on its own URL: in a chain origin -> elsewhere -> origin, the last
//     request carries the credentials again. The origin is trusted with them in any case, and the
//     host in the middle saw none of them; refusing them would break an origin that sends a
//     client through a login or a CDN check and back.
//   - http and https only; when the manifest's URL is https, https only: nothing that follows a
//     redirect travels in clear.
//   - At most kMaxRedirects redirects in one chain; a loop ends there.
//   - Every attempt of a download (a retry, a resume with Range) starts again at the manifest's
//     URL: a presigned URL a redirect handed out may have expired since; the origin hands out a
//     fresh one.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

class RedirectChain {
 public:
  static constexpr int kMaxRedirects = 5;

  // A chain at `url`, the manifest's URL (any scheme: refusing other schemes is libcurl's job at
  // the first request). Error (kInvalid, no message) when libcurl cannot parse it.
  static Result<RedirectChain> Create(std::string_view url);

  RedirectChain(RedirectChain&&) noexcept;
  RedirectChain& operator=(RedirectChain&&) noexcept;
  ~RedirectChain();

  // Back at the manifest's URL, for a new attempt.
  void Restart();

  // The URL to request now: the manifest's URL as given before any redirect; after one, the
  // target resolved against the previous URL, with the manifest's userinfo when at the origin and
  // with no userinfo otherwise. It may hold secrets (userinfo, a presigned query): hand it to
  // libcurl, show it only through msg::ShownUrl.
  const std::string& url() const { return url_; }
  // True when url() is at the manifest URL's origin: the manifest's headers go with the request.
  bool at_origin() const { return at_origin_; }
  // Redirects followed since the start or the last Restart().
  int redirects() const { return redirects_; }

  // Moves to `location`, a Location header's value (absolute or relative to url()). Errors
  // (kIo, no message; final: asking again leads to the same place): more than kMaxRedirects
  // redirects, a location that is not a URL, a scheme other than http and https, http after an
  // https manifest URL. The detail names the refused target through msg::ShownUrl. On error the
  // chain is unchanged.
  Status Follow(std::string_view location);

 private:
  struct Parts;
  explicit RedirectChain(std::unique_ptr<Parts> parts);

  std::unique_ptr<Parts> parts_;  // the libcurl URL handles
  std::string url_;
  bool at_origin_ = true;
  int redirects_ = 0;
};

}  // namespace byoi
