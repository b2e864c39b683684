#include "agent/base/text.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace byoi {
namespace {

// Below this bound a cut text gets no "(N bytes cut)" note: the note would not fit.
constexpr size_t kMinBytesForCutNote = 64;
// The longest note: "... (" + 20 digits + " bytes cut)".
constexpr size_t kCutNoteReserve = 36;

bool Replaced(char32_t c) {
  return c < 0x20 ? c != '\t'
                  : c == 0x7F || (c >= 0x80 && c <= 0x9F) || c == 0x2028 || c == 0x2029 ||
                        (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

// What stands for the start of `text` in the output, and how many input bytes it covers.
struct Piece {
  std::string_view kept;  // the input's own bytes, when kept
  char escape[8] = {};    // else this, NUL-terminated
  size_t consumed = 0;
  size_t size() const {
    return kept.empty() ? std::char_traits<char>::length(escape) : kept.size();
  }
};

Piece NextPiece(std::string_view text) {
  Piece p;
  Utf8Char c = DecodeUtf8(text);
  if (c.length == 0) {
    // Not UTF-8: this byte alone, so that a cut sequence does not swallow the next character.
    fmt::format_to_n(p.escape, sizeof(p.escape) - 1, "\\x{:02x}", static_cast<uint8_t>(text[0]));
    p.consumed = 1;
  } else if (Replaced(c.code_point)) {
    if (c.code_point < 0x80) {
      fmt::format_to_n(p.escape, sizeof(p.escape) - 1, "\\x{:02x}",
                       static_cast<uint32_t>(c.code_point));
    } else {
      fmt::format_to_n(p.escape, sizeof(p.escape) - 1, "\\u{:04x}",
                       static_cast<uint32_t>(c.code_point));
    }
    p.consumed = c.length;
  } else {
    p.kept = text.substr(0, c.length);
    p.consumed = c.length;
  }
  return p;
}

void Append(std::string& out, const Piece& p) {
  if (p.kept.empty()) {
    out += p.escape;
  } else {
    out += p.kept;
  }
}

}  // namespace

Utf8Char DecodeUtf8(std::string_view text) {
  if (text.empty()) return {};
  auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t b = byte(0);
  if (b < 0x80) return {b, 1};
  size_t len = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // the range of the second byte (table 3-7)
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3;
    if (b == 0xE0) lo = 0xA0;  // overlong below U+0800
    if (b == 0xED) hi = 0x9F;  // surrogates U+D800-U+DFFF
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4;
    if (b == 0xF0) lo = 0x90;  // overlong below U+10000
    if (b == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return {};  // a continuation byte, C0/C1 (overlong ASCII) or F5-FF
  }
  if (text.size() < len || byte(1) < lo || byte(1) > hi) return {};
  char32_t c = b & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return {};
    c = (c << 6) | (byte(i) & 0x3F);
  }
  return {c, len};
}

std::string PrintableText(std::string_view text, size_t max_bytes) {
  const bool note = max_bytes >= kMinBytesForCutNote;
  // Where the text is cut if it turns out not to fit: the last piece boundary that leaves room
  // for the note.
  const size_t cut_limit = note ? max_bytes - kCutNoteReserve : max_bytes;
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  size_t cut_in = 0, cut_out = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    Piece p = NextPiece(text.substr(pos));
    if (out.size() + p.size() > max_bytes) {
      out.resize(cut_out);
      if (note) out += fmt::format("... ({} bytes cut)", text.size() - cut_in);
      return out;
    }
    Append(out, p);
    pos += p.consumed;
    if (out.size() <= cut_limit) {
      cut_in = pos;
      cut_out = out.size();
    }
  }
  return out;
}

bool IsPrintableText(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    Piece p = NextPiece(text.substr(pos));
    if (p.kept.empty()) return false;
    pos += p.consumed;
  }
  return true;
}

namespace {
char AsciiUpper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }
}  // namespace

bool EqualsIgnoreCaseAscii(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiUpper(a[i]) != AsciiUpper(b[i])) return false;
  }
  return true;
}

std::string ToUpperAscii(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = AsciiUpper(c);
  return out;
}

std::string ToLowerAscii(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view TrimBlanks(std::string_view text) {
  constexpr std::string_view kBlanks{" \t\r\n\v\f\0", 7};
  size_t begin = text.find_first_not_of(kBlanks);
  if (begin == std::string_view::npos) return {};
  return text.substr(begin, text.find_last_not_of(kBlanks) - begin + 1);
}

}  // namespace byoi
