#include <gtest/gtest.h>

#include "agent/fetch/http_headers.hpp"

namespace byoi {
namespace {

TEST(ParseStatusLine, Table) {
  struct Case {
    const char* line;
    int code;  // 0: refused
    const char* reason;
  } cases[] = {
      {"HTTP/1.1 200 OK\r\n", 200, "OK"},
      {"HTTP/1.1 404 Not Found\r\n", 404, "Not Found"},
      {"HTTP/1.0 503 Service Unavailable\n", 503, "Service Unavailable"},
      {"HTTP/2 206 \r\n", 206, ""},
      {"HTTP/2 200\r\n", 200, ""},
      {"HTTP/1.1 99 Low\r\n", 0, ""},
      {"HTTP/1.1 600 High\r\n", 0, ""},
      {"HTTP/1.1 20 OK\r\n", 0, ""},
      {"HTTP/1.1 2000 OK\r\n", 0, ""},
      {"HTTP/1.1 abc OK\r\n", 0, ""},
      {"Content-Length: 5\r\n", 0, ""},
      {"\r\n", 0, ""},
      {"HTTP/1.1\r\n", 0, ""},
  };
  for (const Case& c : cases) {
    auto s = ParseStatusLine(c.line);
    if (c.code == 0) {
      EXPECT_FALSE(s.has_value()) << c.line;
      continue;
    }
    ASSERT_TRUE(s.has_value()) << c.line;
    EXPECT_EQ(s->code, c.code) << c.line;
    EXPECT_EQ(s->reason, c.reason) << c.line;
  }
}

TEST(HeaderValue, CaseInsensitiveNameTrimmedValue) {
  EXPECT_EQ(HeaderValue("Content-Length: 42\r\n", "content-length"), "42");
  EXPECT_EQ(HeaderValue("content-range:\tbytes 1-2/3 \r\n", "Content-Range"), "bytes 1-2/3");
  EXPECT_FALSE(HeaderValue("Content-Length-X: 42\r\n", "content-length").has_value());
  EXPECT_FALSE(HeaderValue("Content-Lengt: 42\r\n", "content-length").has_value());
  EXPECT_FALSE(HeaderValue("X: 1\r\n", "content-length").has_value());
}

TEST(ParseContentLength, DigitsOnly) {
  EXPECT_EQ(ParseContentLength("0"), 0u);
  EXPECT_EQ(ParseContentLength(" 2147483648 "), 2147483648u);
  EXPECT_EQ(ParseContentLength("18446744073709551615"), UINT64_MAX);
  EXPECT_FALSE(ParseContentLength("18446744073709551616").has_value());
  EXPECT_FALSE(ParseContentLength("-1").has_value());
  EXPECT_FALSE(ParseContentLength("+1").has_value());
  EXPECT_FALSE(ParseContentLength("1,2").has_value());
  EXPECT_FALSE(ParseContentLength("").has_value());
  EXPECT_FALSE(ParseContentLength("0x10").has_value());
}

TEST(ParseContentRange, Table) {
  auto r = ParseContentRange("bytes 100-999/1000");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->first, 100u);
  EXPECT_EQ(r->last, 999u);
  EXPECT_EQ(r->complete, 1000u);
  r = ParseContentRange("bytes 0-0/*");
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->complete.has_value());
  for (const char* bad :
       {"bytes 100-99/1000", "bytes 100-1000/1000", "bytes */1000", "items 0-1/2", "bytes 0-1",
        "bytes -1/2", "bytes 1-/2", "bytes 0-1/", "bytes a-1/2", "bytes 0-1/2x", ""}) {
    EXPECT_FALSE(ParseContentRange(bad).has_value()) << bad;
  }
}

TEST(IsRetryableHttpStatus, OnlyTimeoutsRateLimitsAndServerErrors) {
  for (int code : {408, 429, 500, 502, 503, 504, 599}) EXPECT_TRUE(IsRetryableHttpStatus(code));
  for (int code : {400, 401, 403, 404, 410, 416, 451}) EXPECT_FALSE(IsRetryableHttpStatus(code));
}

}  // namespace
}  // namespace byoi
