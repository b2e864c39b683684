// The one sanitiser (agent/base/text.hpp): what is kept, what is replaced and how, the bound.
#include <gtest/gtest.h>

#include <string>

#include "agent/base/text.hpp"

namespace byoi {
namespace {

using std::string_literals::operator""s;

struct Case {
  const char* what;
  std::string in;
  std::string out;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.what; }

class PrintableTextTable : public ::testing::TestWithParam<Case> {};

TEST_P(PrintableTextTable, KeepsOrReplaces) {
  const Case& c = GetParam();
  EXPECT_EQ(PrintableText(c.in), c.out);
  EXPECT_EQ(IsPrintableText(c.in), c.in == c.out);
  // What comes out is kept as it is the second time.
  EXPECT_EQ(PrintableText(c.out), c.out);
  EXPECT_TRUE(IsPrintableText(c.out));
}

INSTANTIATE_TEST_SUITE_P(
    Sanitiser, PrintableTextTable,
    ::testing::Values(
        Case{"printable ASCII", "HTTP 500 Internal Server Error", "HTTP 500 Internal Server Error"},
        Case{"every printable ASCII byte",
             " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
             "abcdefghijklmnopqrstuvwxyz{|}~",
             " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
             "abcdefghijklmnopqrstuvwxyz{|}~"},
        Case{"TAB kept", "a\tb", "a\tb"}, Case{"empty", "", ""},
        Case{"valid multi-byte UTF-8 kept",
             "d\xc3\xa9ploy\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x92\xbe",
             "d\xc3\xa9ploy\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x92\xbe"},
        Case{"U+FFFD and U+10FFFF kept", "\xef\xbf\xbd \xf4\x8f\xbf\xbf",
             "\xef\xbf\xbd \xf4\x8f\xbf\xbf"},
        Case{"CSI erase screen", "a\x1b[2Jb", "a\\x1b[2Jb"},
        Case{"CSI colour", "\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"},
        Case{"OSC window title ended by BEL", "\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"},
        Case{"OSC ended by ST", "\x1b]8;;http://x\x1b\\", "\\x1b]8;;http://x\\x1b\\"},
        Case{"the red team's reason phrase", "\x1b]0;pwned\x07\x1b[2J\xff\xfe",
             "\\x1b]0;pwned\\x07\\x1b[2J\\xff\\xfe"},
        Case{"0xFF 0xFE", "\xff\xfe", "\\xff\\xfe"}, Case{"NUL", "a\0b"s, "a\\x00b"},
        Case{"CR LF BS DEL", "a\r\nb\bc\x7f", "a\\x0d\\x0ab\\x08c\\x7f"},
        Case{"every other C0 control", "\x01\x02\x0b\x0c\x1f", "\\x01\\x02\\x0b\\x0c\\x1f"},
        Case{"overlong NUL C0 80", "a\xc0\x80z", "a\\xc0\\x80z"},
        Case{"overlong slash E0 80 AF", "\xe0\x80\xaf", "\\xe0\\x80\\xaf"},
        Case{"overlong F0 80 80 AF", "\xf0\x80\x80\xaf", "\\xf0\\x80\\x80\\xaf"},
        Case{"surrogate U+D800 in UTF-8", "\xed\xa0\x80", "\\xed\\xa0\\x80"},
        Case{"surrogate pair in UTF-8 (CESU-8)", "\xed\xa0\xbd\xed\xb2\xbe",
             "\\xed\\xa0\\xbd\\xed\\xb2\\xbe"},
        Case{"past U+10FFFF", "\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"},
        Case{"F5-FF lead bytes", "\xf5\xf8\xfc", "\\xf5\\xf8\\xfc"},
        Case{"stray continuation bytes", "\x80\xbf", "\\x80\\xbf"},
        Case{"cut sequence before ASCII",
             "\xe6\x97"
             "A",
             "\\xe6\\x97A"},
        Case{"cut sequence at the end", "ok\xf0\x9f\x92", "ok\\xf0\\x9f\\x92"},
        Case{"C1 CSI U+009B",
             "a\xc2\x9b"
             "2Jb",
             "a\\u009b2Jb"},
        Case{"C1 range ends", "\xc2\x80\xc2\x9f\xc2\xa0", "\\u0080\\u009f\xc2\xa0"},
        Case{"line and paragraph separators",
             "a\xe2\x80\xa8"
             "b\xe2\x80\xa9",
             "a\\u2028b\\u2029"},
        Case{"bidi override",
             "\xe2\x80\xae"
             "cod.exe",
             "\\u202ecod.exe"},
        Case{"bidi isolates", "\xe2\x81\xa6x\xe2\x81\xa9", "\\u2066x\\u2069"}));

TEST(PrintableText, IsBoundedAndCutsAtACharacterBoundaryWithANote) {
  std::string long_text(10000, 'a');
  std::string out = PrintableText(long_text, 100);
  EXPECT_LE(out.size(), 100u);
  EXPECT_EQ(out.substr(0, 64), std::string(64, 'a'));
  EXPECT_NE(out.find("... ("), std::string::npos) << out;
  EXPECT_EQ(out.substr(out.find("... (")),
            "... (" + std::to_string(10000 - out.find("... (")) + " bytes cut)");
  // Escapes and multi-byte characters are never split by the cut.
  for (size_t max : {64u, 65u, 66u, 67u, 70u, 99u, 100u}) {
    std::string escapes = PrintableText(std::string(200, '\x1b'), max);
    EXPECT_LE(escapes.size(), max);
    EXPECT_EQ(escapes.substr(0, escapes.find("...")).size() % 4, 0u) << escapes;
    std::string e_acute;
    for (int i = 0; i < 200; ++i) e_acute += "\xc3\xa9";
    std::string cut = PrintableText(e_acute, max);
    EXPECT_LE(cut.size(), max);
    EXPECT_TRUE(IsPrintableText(cut)) << cut;
  }
  // Under 64 bytes there is no room for the note: a plain cut.
  EXPECT_EQ(PrintableText(std::string(100, 'b'), 10), std::string(10, 'b'));
  EXPECT_EQ(PrintableText("\x1b\x1b\x1b", 10), "\\x1b\\x1b");
  // A text of exactly the bound is not cut.
  EXPECT_EQ(PrintableText(std::string(100, 'c'), 100), std::string(100, 'c'));
}

TEST(PrintableText, DefaultBoundIsFourKiB) {
  std::string huge(1 << 20, '\xff');
  std::string out = PrintableText(huge);
  EXPECT_LE(out.size(), kMaxPrintableBytes);
  EXPECT_GT(out.size(), kMaxPrintableBytes - 64);
  EXPECT_NE(out.find(" bytes cut)"), std::string::npos);
}

TEST(DecodeUtf8, ReturnsTheCodePointAndLength) {
  EXPECT_EQ(DecodeUtf8("A").code_point, U'A');
  EXPECT_EQ(DecodeUtf8("\xc3\xa9").code_point, U'\u00e9');
  EXPECT_EQ(DecodeUtf8("\xc3\xa9").length, 2u);
  EXPECT_EQ(DecodeUtf8("\xe2\x82\xac!").code_point, U'\u20ac');
  EXPECT_EQ(DecodeUtf8("\xe2\x82\xac!").length, 3u);
  EXPECT_EQ(DecodeUtf8("\xf0\x9f\x92\xbe").code_point, U'\U0001F4BE');
  EXPECT_EQ(DecodeUtf8("").length, 0u);
  EXPECT_EQ(DecodeUtf8("\xc0\x80").length, 0u);
  EXPECT_EQ(DecodeUtf8("\xed\xbf\xbf").length, 0u);
  EXPECT_EQ(DecodeUtf8("\xe2\x82").length, 0u);
}

}  // namespace
}  // namespace byoi
