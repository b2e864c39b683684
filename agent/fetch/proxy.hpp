// Which proxy each request of a download goes through (docs/cli.md `proxy`, docs/proxy.md).
//
// A rack reinstalled at once pulls one customer image many times; a caching proxy on the
// provider's network turns that into about one download from the customer's server. The rule is
// explicit rather than libcurl's implicit one, so that what the agent does can be told and tested:
//   1. the `proxy` option (--proxy, config key, byoi.proxy=) when set: every request of the
//      download goes through it, whatever the environment says (no_proxy included);
//   2. else the environment, as curl and wget read it: `https_proxy` (or `HTTPS_PROXY`) for an
//      https URL, `http_proxy` for an http URL (lower case only: a CGI program gets the request
//      header `Proxy:` as HTTP_PROXY, RFC 3875 §4.1.18), unless `no_proxy` (or `NO_PROXY`) names
//      the URL's host; `all_proxy` is not read (its usual values are SOCKS proxies);
//   3. else none: a direct connection.
// The choice is made for each request's own URL, so a redirect to another host is judged on that
// host. A daemon under systemd has no such variables: providers set the option.
//
// A proxy URL is http://HOST[:PORT] or https://HOST[:PORT] (TLS to the proxy), optionally with
// USER:PASSWORD@ (percent-encoded; sent as Proxy-Authorization: Basic). It is a secret when it
// holds credentials: shown only through msg::ShownUrl, which drops them.
//
// What a proxy can cache: an http image URL is asked of the proxy as `GET http://host/path`, and
// the proxy forwards it (and can cache the answer). An https image URL is tunnelled (CONNECT): TLS
// runs from the agent to the origin, and the proxy passes bytes it cannot read or cache.
#pragma once

#include <string>
#include <string_view>

#include "agent/base/status.hpp"

namespace byoi {

// The proxy variables of an environment; empty when unset.
struct ProxyEnvironment {
  std::string http_proxy;   // http_proxy (never HTTP_PROXY, see above)
  std::string https_proxy;  // https_proxy, else HTTPS_PROXY
  std::string no_proxy;     // no_proxy, else NO_PROXY

  // This process's environment, read now.
  static ProxyEnvironment FromProcess();
};

// Checks a proxy URL: scheme http or https, a host, an optional port (1-65535), optional userinfo,
// no path other than "/", no query, no fragment. kInvalid with the reason; the reason never holds
// the URL nor any part of it (it may hold a password).
Status CheckProxyUrl(std::string_view url);

// True when `no_proxy` (a no_proxy value: entries separated by commas or spaces) exempts `host`:
// "*" exempts every host; a name exempts itself and its subdomains ("example.net" and
// ".example.net" both exempt example.net and a.example.net; case-insensitive, a trailing dot
// ignored); an IP address exempts itself; ADDRESS/BITS exempts the addresses of that network.
// `host` is a URL's host: a name, an IPv4 address or an IPv6 address with or without brackets.
bool NoProxyMatches(std::string_view host, std::string_view no_proxy);

struct ProxyChoice {
  std::string url;     // the proxy to use (may hold credentials), or empty for a direct connection
  std::string source;  // where it came from, for messages: "the proxy option", "https_proxy", ""
};

// The proxy for a request to `url` (http or https) under the rule above. `configured` is the
// proxy option's value ("" when not set). An environment value without "://" is taken as http://
// (as curl does). Errors (kInvalid, no message): a proxy that fails CheckProxyUrl, the detail
// naming its source ("the https_proxy environment variable: ..."), never its value; a `url` that
// cannot be parsed.
Result<ProxyChoice> ChooseProxy(std::string_view url, std::string_view configured,
                                const ProxyEnvironment& env);

}  // namespace byoi
