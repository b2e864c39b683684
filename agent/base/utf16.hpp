// UTF-16LE text where firmware, GPT and FAT use it: GPT partition names, shim's BOOTX64.CSV, FAT
// long file names, the descriptions of EFI load options.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace byoi {

// Decodes UTF-16LE bytes (an odd trailing byte is ignored) into UTF-8. Unpaired surrogates become
// U+FFFD. Stops at the first NUL code unit when `stop_at_nul`.
std::string Utf16LeToUtf8(std::span<const uint8_t> bytes, bool stop_at_nul = false);

// Encodes UTF-8 as UTF-16 code units; invalid UTF-8 sequences become U+FFFD.
std::u16string Utf8ToUtf16(std::string_view text);

}  // namespace byoi
