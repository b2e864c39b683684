// RedirectChain: where each request of a download goes and whether the manifest's credentials
// go with it. The same rules run against real servers in tests/integration/test_fetch.py.
#include <gtest/gtest.h>

#include <string>

#include "agent/fetch/redirect_chain.hpp"

namespace byoi {
namespace {

RedirectChain MustCreate(const std::string& url) {
  auto chain = RedirectChain::Create(url);
  EXPECT_TRUE(chain.ok()) << url;
  return std::move(chain).value();
}

TEST(RedirectChain, StartsAtTheManifestUrlAsGiven) {
  RedirectChain chain = MustCreate("HTTPS://u:p@Example.NET/a/b.raw?x=1");
  EXPECT_EQ(chain.url(), "HTTPS://u:p@Example.NET/a/b.raw?x=1");
  EXPECT_TRUE(chain.at_origin());
  EXPECT_EQ(chain.redirects(), 0);
}

TEST(RedirectChain, CredentialsOnlyAtTheOrigin) {
  struct Case {
    const char* location;
    const char* url;  // where the chain is afterwards
    bool at_origin;
  };
  // From http://u:p@example.net/dir/image.raw, one redirect each.
  const Case cases[] = {
      // The same origin: the manifest's userinfo comes along.
      {"/other.raw", "http://u:p@example.net/other.raw", true},
      {"other.raw?v=2", "http://u:p@example.net/dir/other.raw?v=2", true},
      {"http://EXAMPLE.net:80/x", "http://u:p@EXAMPLE.net:80/x", true},  // host case kept
      {"http://example.net/x", "http://u:p@example.net/x", true},
      // Another host, port or scheme is another origin: no userinfo, not even the Location's.
      {"http://bucket.example.net/x?X-Amz-Signature=abc",
       "http://bucket.example.net/x?X-Amz-Signature=abc", false},
      {"http://example.net:8080/x", "http://example.net:8080/x", false},
      {"https://example.net/x", "https://example.net/x", false},
      {"//cdn.example.net/x", "http://cdn.example.net/x", false},
      {"http://v:w@cdn.example.net/x", "http://cdn.example.net/x", false},
      // Spaces are encoded as libcurl does when it follows a Location itself.
      {"/a b.raw", "http://u:p@example.net/a%20b.raw", true},
  };
  for (const Case& c : cases) {
    RedirectChain chain = MustCreate("http://u:p@example.net/dir/image.raw");
    ASSERT_TRUE(chain.Follow(c.location).ok()) << c.location;
    EXPECT_EQ(chain.url(), c.url) << c.location;
    EXPECT_EQ(chain.at_origin(), c.at_origin) << c.location;
    EXPECT_EQ(chain.redirects(), 1);
  }
}

TEST(RedirectChain, BackAtTheOriginCarriesThemAgain) {
  RedirectChain chain = MustCreate("http://example.net/image.raw");
  ASSERT_TRUE(chain.Follow("http://127.0.0.1:9000/login").ok());
  EXPECT_FALSE(chain.at_origin());
  // Relative to the host in the middle: still elsewhere.
  ASSERT_TRUE(chain.Follow("/check").ok());
  EXPECT_EQ(chain.url(), "http://127.0.0.1:9000/check");
  EXPECT_FALSE(chain.at_origin());
  ASSERT_TRUE(chain.Follow("http://example.net/image.raw?ok=1").ok());
  EXPECT_TRUE(chain.at_origin());
  EXPECT_EQ(chain.redirects(), 3);
  chain.Restart();
  EXPECT_EQ(chain.url(), "http://example.net/image.raw");
  EXPECT_TRUE(chain.at_origin());
  EXPECT_EQ(chain.redirects(), 0);
}

TEST(RedirectChain, SchemeRelativeLocationKeepsHttps) {
  RedirectChain chain = MustCreate("https://example.net/x");
  ASSERT_TRUE(chain.Follow("//example.net:80/y").ok());
  EXPECT_EQ(chain.url(), "https://example.net:80/y");
  EXPECT_FALSE(chain.at_origin());  // port 80 is not https's 443
}

TEST(RedirectChain, IPv6OriginsCompareByAddressAndPort) {
  RedirectChain chain = MustCreate("http://[::1]:8080/x");
  ASSERT_TRUE(chain.Follow("http://[::1]:8080/y").ok());
  EXPECT_TRUE(chain.at_origin());
  ASSERT_TRUE(chain.Follow("http://[::1]:8081/y").ok());
  EXPECT_FALSE(chain.at_origin());
}

TEST(RedirectChain, RefusedRedirectsLeaveTheChainWhereItWas) {
  struct Case {
    const char* from;
    const char* location;
    const char* detail;
  };
  const Case cases[] = {
      {"https://example.net/x", "http://example.net/x?sig=abc",
       "a redirect from https to http://example.net/x refused: the request would travel in clear "
       "over http"},
      {"http://example.net/x", "file:///etc/passwd",
       "a redirect to file:///etc/passwd refused: only http and https are followed"},
      {"http://example.net/x", "ftp://u:p@example.net/x?t=1",
       "a redirect to ftp://example.net/x refused: only http and https are followed"},
      {"http://example.net/x", "http://exa mple.net:99999/?sig=abc",
       "a redirect to http://exa mple.net:99999/, which is not a valid URL"},
  };
  for (const Case& c : cases) {
    RedirectChain chain = MustCreate(c.from);
    Status s = chain.Follow(c.location);
    ASSERT_FALSE(s.ok()) << c.location;
    EXPECT_EQ(s.code(), Code::kIo);
    EXPECT_TRUE(s.message().empty());
    EXPECT_EQ(s.detail().substr(0, std::string(c.detail).size()), c.detail) << s.detail();
    EXPECT_EQ(s.detail().find("sig=abc"), std::string::npos);
    EXPECT_EQ(s.detail().find("u:p"), std::string::npos);
    EXPECT_EQ(chain.url(), c.from);
    EXPECT_EQ(chain.redirects(), 0);
  }
}

TEST(RedirectChain, AtMostFiveRedirects) {
  RedirectChain chain = MustCreate("http://example.net/0");
  for (int i = 1; i <= RedirectChain::kMaxRedirects; ++i) {
    ASSERT_TRUE(chain.Follow("/" + std::to_string(i)).ok()) << i;
  }
  Status s = chain.Follow("/6?token=abc");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.detail(), "more than 5 redirects, the last to http://example.net/6");
  EXPECT_EQ(chain.url(), "http://example.net/5");
  chain.Restart();
  EXPECT_TRUE(chain.Follow("/again").ok());  // a new attempt may redirect again
}

TEST(RedirectChain, UnparsableManifestUrl) {
  auto chain = RedirectChain::Create("http://exa mple.net/x?sig=abc");
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), Code::kInvalid);
  EXPECT_EQ(chain.status().detail().find("sig=abc"), std::string::npos);
}

}  // namespace
}  // namespace byoi
