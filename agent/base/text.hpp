// Text from outside made safe to show: the one sanitiser of byoi-agent.
//
// Strings that come from outside the agent — an origin's HTTP reason phrase, libcurl's error text,
// names read from an image's partition table or FAT file system, manifest strings — reach the
// status (docs/status.md), the console an operator watches through IPMI/KVM or serial-over-LAN, the
// logs, the backend and the state file. Raw, an ESC or OSC sequence there is terminal control
// injection, and a stray 0xFF makes the status JSON invalid UTF-8 (the state file then cannot be
// read back). PrintableText() is applied where text enters those outputs: the StatusBoard's
// setters, the logger's formatter, the console's output and the state file's reader and writer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace byoi {

// The default bound of PrintableText(): a status field, a log message.
inline constexpr size_t kMaxPrintableBytes = 4096;

// `text` made printable and valid UTF-8.
//
// Kept as they are: printable ASCII (0x20-0x7E), TAB, and well-formed UTF-8 sequences (Unicode
// 15, table 3-7: shortest form, no UTF-16 surrogates, at most U+10FFFF) of characters other than
// those replaced below. A valid string of such characters comes back unchanged ("déployé", "日本").
//
// Replaced, each by a visible ASCII escape, so the operator sees that something was there:
//   - C0 controls other than TAB (0x00-0x1F: NUL, BEL, BS, LF, CR, ESC…) and DEL (0x7F):
//     "\x1b", "\x00"… An escape sequence loses its ESC and so stays plain text:
//     "\x1b]0;title\x07", "\x1b[2J";
//   - C1 controls U+0080-U+009F (a terminal may take U+009B as CSI), the line and paragraph
//     separators U+2028 and U+2029 (line breaks to some log viewers) and the bidirectional
//     overrides U+202A-U+202E and U+2066-U+2069 (they reorder what is shown): "\u009b", "\u202e";
//   - every byte that is not part of a well-formed UTF-8 sequence (0x80-0xBF alone, 0xC0, 0xC1,
//     0xF5-0xFF, a cut sequence, overlong forms such as C0 80, encoded surrogates such as
//     ED A0 80, code points past U+10FFFF): "\xff", one escape per byte.
// The escapes are not reversible (a literal "\x1b" in the input looks the same): this is for
// display, not an encoding.
//
// The result is at most `max_bytes` bytes long. A longer one is cut at a character boundary and
// ends with "... (N bytes cut)", N counting input bytes; when `max_bytes` is under 64 the cut has
// no such note. Never allocates more than about `max_bytes`, whatever the input's size.
std::string PrintableText(std::string_view text, size_t max_bytes = kMaxPrintableBytes);

// True when PrintableText(text, text.size()) == text: nothing in `text` would be replaced.
bool IsPrintableText(std::string_view text);

// One well-formed UTF-8 sequence at the start of `text` (table 3-7 above): its code point and its
// length in bytes; length 0 when `text` is empty or does not start with one.
struct Utf8Char {
  char32_t code_point = 0;
  size_t length = 0;
};
Utf8Char DecodeUtf8(std::string_view text);

// ASCII-only case folding, as FAT and firmware compare file names (neither folds non-ASCII letters
// reliably, so neither do we): "\EFI\Debian" equals "\efi\DEBIAN".
bool EqualsIgnoreCaseAscii(std::string_view a, std::string_view b);
std::string ToUpperAscii(std::string_view text);
std::string ToLowerAscii(std::string_view text);

// `text` without leading and trailing blanks: space, TAB, CR, LF, VT, FF, and NUL (fixed-width
// fields from devices and sysfs are NUL-padded).
std::string_view TrimBlanks(std::string_view text);

}  // namespace byoi
