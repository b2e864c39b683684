// An OVA's `.mf` manifest (DSP0243 §5.1): one line per file, `SHA256(disk1.vmdk)= 3b4f…`, and the
// digests it names, computed with OpenSSL over the files where they lie in the archive. Used by
// ova.hpp only.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
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

// Digests of one byte stream with one or more of the manifest's algorithms, fed in pieces.
class ManifestHasher {
 public:
  // `algos`: "sha1", "sha256", "sha512". kInternal when OpenSSL cannot provide one.
  static Result<ManifestHasher> Create(const std::vector<std::string>& algos);
  ManifestHasher(ManifestHasher&&) noexcept;
  ManifestHasher& operator=(ManifestHasher&&) noexcept;
  ~ManifestHasher();

  void Update(std::span<const uint8_t> bytes);
  // (algo, lower-case hex) for each algorithm given to Create, in its order. kInternal when
  // OpenSSL failed on the way.
  Result<std::vector<std::pair<std::string, std::string>>> Final();

 private:
  ManifestHasher() = default;
  struct Context;
  std::vector<Context> contexts_;
  bool failed_ = false;
};

// The lower-case hex `algo` digest ("sha1", "sha256", "sha512") of `bytes`, checking `cancel`
// every 64 MiB. kCancelled; kInternal when OpenSSL fails.
Result<std::string> HexDigest(std::string_view algo, std::span<const uint8_t> bytes,
                              const CancelToken& cancel);

}  // namespace byoi
