// The proxy rule of agent/fetch/proxy.hpp: the option wins, else the environment (by the URL's
// scheme, minus no_proxy), else none; the checks of a proxy URL never echo it.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>
#include <string>

#include "agent/fetch/proxy.hpp"

namespace byoi {
namespace {

TEST(CheckProxyUrlTest, AcceptsHttpAndHttpsHostsWithOptionalPortAndCredentials) {
  for (const char* url :
       {"http://cache.example", "http://cache.example:3128", "https://cache.example:3129/",
        "HTTPS://Cache.Example", "http://10.0.0.5:3128", "http://[fd00::5]:3128",
        "http://user:p%40ss@cache.example:3128", "http://user@cache.example:3128"}) {
    EXPECT_TRUE(CheckProxyUrl(url).ok()) << url << ": " << CheckProxyUrl(url).ToString();
  }
}

TEST(CheckProxyUrlTest, RefusesOtherSchemesPathsQueriesAndPortsWithoutEchoingTheUrl) {
  struct Case {
    const char* url;
    const char* reason;
  } cases[] = {
      {"socks5h://pw-a:pw-b@cache.example:1080", "must start with http:// or https://"},
      {"pw-a:pw-b@cache.example:3128", "must start with http:// or https://"},
      {"", "must start with http:// or https://"},
      {"http://pw-a:pw-b@", "not a URL: "},
      {"http://pw-a:pw-b@cache.example:0", "has a port outside 1-65535"},
      {"http://pw-a:pw-b@cache.example:3128/pw-c", "has a path (a proxy is a host and a port)"},
      {"http://pw-a:pw-b@cache.example:3128?pw-c", "has a query or a fragment"},
      {"http://pw-a:pw-b@cache.example#pw-c", "has a query or a fragment"},
      {"http://pw-a:pw-b@cache\nexample", "not a URL: "},
  };
  for (const Case& c : cases) {
    Status s = CheckProxyUrl(c.url);
    ASSERT_FALSE(s.ok()) << c.url;
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_TRUE(s.detail().starts_with(c.reason)) << c.url << " -> " << s.detail();
    EXPECT_EQ(s.detail().find("pw-"), std::string::npos) << s.detail();
  }
}

TEST(NoProxyMatchesTest, Table) {
  struct Case {
    const char* host;
    const char* no_proxy;
    bool exempt;
  } cases[] = {
      {"images.example.net", "*", true},
      {"images.example.net", "", false},
      {"images.example.net", "example.net", true},
      {"images.example.net", ".example.net", true},
      {"example.net", ".example.net", true},
      {"IMAGES.Example.NET", "example.net", true},
      {"images.example.net.", "example.net", true},
      {"images.example.net", "example.net.", true},
      {"badexample.net", "example.net", false},
      {"example.net", "images.example.net", false},
      {"images.example.net", "localhost, 127.0.0.1 ,example.net", true},
      {"images.example.net", "localhost\texample.org example.net", true},
      {"127.0.0.1", "127.0.0.1", true},
      {"127.0.0.2", "127.0.0.1", false},
      {"127.0.0.1", "127.0.0.0/8", true},
      {"10.1.2.3", "10.0.0.0/8", true},
      {"11.1.2.3", "10.0.0.0/8", false},
      {"10.1.2.3", "10.1.2.0/23", true},
      {"10.1.4.3", "10.1.2.0/23", false},
      {"10.1.2.3", "0.0.0.0/0", true},
      {"10.1.2.3", "10.0.0.0/33", false},
      {"10.1.2.3", "10.0.0.0/x", false},
      {"[fd00::5]", "fd00::/8", true},
      {"fd00::5", "fd00::5", true},
      {"[fd00::5]", "fe00::/8", false},
      {"[fd00::5]", "10.0.0.0/8", false},
      {"[::1]", "::1", true},
      {"images.example.net", "10.0.0.0/8", false},
      {"1.2.3.4", "2.3.4", false},  // an address is no domain
  };
  for (const Case& c : cases) {
    EXPECT_EQ(NoProxyMatches(c.host, c.no_proxy), c.exempt) << c.host << " / " << c.no_proxy;
  }
}

TEST(ChooseProxyTest, TheOptionWinsElseTheEnvironmentByScheme) {
  ProxyEnvironment env{.http_proxy = "http://plain.example:3128",
                       .https_proxy = "secure.example:3129",
                       .no_proxy = "internal.example,10.0.0.0/8"};
  struct Case {
    const char* url;
    const char* configured;
    const char* proxy;
    const char* source;
  } cases[] = {
      // The option: every request, no_proxy or not.
      {"http://images.example/a.raw", "http://opt.example:1", "http://opt.example:1",
       "the proxy option"},
      {"https://internal.example/a.raw", "http://opt.example:1", "http://opt.example:1",
       "the proxy option"},
      // The environment, by the URL's scheme; a value without a scheme is http://.
      {"http://images.example/a.raw", "", "http://plain.example:3128", "http_proxy"},
      {"https://images.example/a.raw", "", "http://secure.example:3129", "https_proxy"},
      // no_proxy exempts names, subdomains and networks.
      {"https://internal.example/a.raw", "", "", ""},
      {"http://a.internal.example:8080/a.raw", "", "", ""},
      {"http://10.9.8.7/a.raw", "", "", ""},
      {"http://11.9.8.7/a.raw", "", "http://plain.example:3128", "http_proxy"},
  };
  for (const Case& c : cases) {
    Result<ProxyChoice> choice = ChooseProxy(c.url, c.configured, env);
    ASSERT_TRUE(choice.ok()) << c.url << ": " << choice.status().ToString();
    EXPECT_EQ(choice->url, c.proxy) << c.url;
    EXPECT_EQ(choice->source, c.source) << c.url;
  }
  // Nothing set: no proxy.
  Result<ProxyChoice> none = ChooseProxy("https://images.example/a.raw", "", ProxyEnvironment{});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->url, "");
}

TEST(ChooseProxyTest, ABadProxyNamesItsSourceNeverItsValue) {
  ProxyEnvironment env;
  env.http_proxy = "socks5://pw-a:pw-b@socks.example:1080";
  Result<ProxyChoice> from_env = ChooseProxy("http://images.example/a.raw", "", env);
  ASSERT_FALSE(from_env.ok());
  EXPECT_TRUE(from_env.status().detail().starts_with(
      "the http_proxy environment variable: must start with http:// or https://"))
      << from_env.status().detail();
  EXPECT_EQ(from_env.status().detail().find("pw-"), std::string::npos);

  Result<ProxyChoice> from_option =
      ChooseProxy("http://images.example/a.raw", "http://pw-a:pw-b@x.example/pw-c", env);
  ASSERT_FALSE(from_option.ok());
  EXPECT_TRUE(from_option.status().detail().starts_with("the proxy option: has a path"))
      << from_option.status().detail();
  EXPECT_EQ(from_option.status().detail().find("pw-"), std::string::npos);
}

// Restores one environment variable when it goes.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = getenv(name)) old_ = old;
    if (value) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(ProxyEnvironmentTest, ReadsLowerCaseFirstAndNeverHttpProxyInUpperCase) {
  ScopedEnv a("http_proxy", nullptr), b("HTTP_PROXY", "http://cgi-header.example:1");
  ScopedEnv c("https_proxy", nullptr), d("HTTPS_PROXY", "http://upper.example:2");
  ScopedEnv e("no_proxy", "lower.example"), f("NO_PROXY", "upper.example");
  ProxyEnvironment env = ProxyEnvironment::FromProcess();
  EXPECT_EQ(env.http_proxy, "");  // HTTP_PROXY is what a CGI program gets from a `Proxy:` header
  EXPECT_EQ(env.https_proxy, "http://upper.example:2");
  EXPECT_EQ(env.no_proxy, "lower.example");
  ScopedEnv g("https_proxy", "http://lower.example:3"), h("http_proxy", "http://plain.example:4");
  env = ProxyEnvironment::FromProcess();
  EXPECT_EQ(env.https_proxy, "http://lower.example:3");
  EXPECT_EQ(env.http_proxy, "http://plain.example:4");
}

}  // namespace
}  // namespace byoi
