// An OVA's `.mf` manifest (DSP0243 §5.1): one line per file, `SHA256(disk1.vmdk)= 3b4f…`, and the
// digests it names, computed with OpenSSL over the files where they lie in the archive. Used by
// ova.hpp only.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"

namespace byoi {

inline constexpr uint64_t kMaxOvaManifestBytes = 1 << 20;

struct OvaManifestLine {
  std::string file;  // as written between the parentheses
  std::string algo;  // "sha1", "sha256" or "sha512"
  std::string hex;   // lower case
};

// Parses `text`: lines `ALGO(FILE)= HEX`, blanks accepted around the parentheses and `=`
// (VirtualBox writes `SHA1 (FILE) = HEX`), ALGO in any case, CR LF line ends, blank lines skipped.
// kInvalid naming the line for anything else (a hex digest of the wrong length for its type, a
// line that is not a digest); kUnsupported for an algorithm other than SHA1, SHA256, SHA512.
Result<std::vector<OvaManifestLine>> ParseOvaManifest(std::string_view text);

// The lower-case hex `algo` digest ("sha1", "sha256", "sha512") of `bytes`, checking `cancel`
// every 64 MiB. kCancelled; kInternal when OpenSSL fails.
Result<std::string> HexDigest(std::string_view algo, std::span<const uint8_t> bytes,
                              const CancelToken& cancel);

}  // namespace byoi
