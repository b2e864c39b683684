#include "agent/image/ova_manifest.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <memory>

#include "agent/base/text.hpp"

namespace byoi {
namespace {

constexpr uint64_t kDigestSlice = 64ull << 20;

struct Algo {
  std::string_view name;  // ours, lower case
  const char* openssl;    // OpenSSL's
  size_t hex_length;
};
constexpr Algo kAlgos[] = {
    {"sha1", "SHA1", 40}, {"sha256", "SHA256", 64}, {"sha512", "SHA512", 128}};

const Algo* FindAlgo(std::string_view name) {
  for (const Algo& a : kAlgos) {
    if (EqualsIgnoreCaseAscii(a.name, name)) return &a;
  }
  return nullptr;
}

struct CtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

}  // namespace

Result<std::vector<OvaManifestLine>> ParseOvaManifest(std::string_view text) {
  std::vector<OvaManifestLine> lines;
  for (size_t number = 1; !text.empty(); ++number) {
    const size_t nl = std::min(text.find('\n'), text.size());
    std::string_view line = TrimBlanks(text.substr(0, nl));
    text.remove_prefix(std::min(nl + 1, text.size()));
    if (line.empty()) continue;
    auto bad = [number](std::string_view why) {
      return Status::Error(Code::kInvalid, fmt::format("line {}: {}", number, why));
    };
    const size_t open = line.find('(');
    const size_t close = line.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
      return bad("not ALGO(FILE)= DIGEST");
    }
    std::string_view algo = TrimBlanks(line.substr(0, open));
    std::string_view file = line.substr(open + 1, close - open - 1);
    std::string_view rest = TrimBlanks(line.substr(close + 1));
    if (rest.empty() || rest.front() != '=' || file.empty()) return bad("not ALGO(FILE)= DIGEST");
    std::string_view hex = TrimBlanks(rest.substr(1));
    const Algo* a = FindAlgo(algo);
    if (a == nullptr) {
      return Status::Error(Code::kUnsupported,
                           fmt::format("line {}: digest {} (SHA1, SHA256 or SHA512 expected)",
                                       number, PrintableText(algo, 32)));
    }
    if (hex.size() != a->hex_length || !std::all_of(hex.begin(), hex.end(), [](char c) {
          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        })) {
      return bad(fmt::format("a {} digest is {} hex digits", a->name, a->hex_length));
    }
    lines.push_back({std::string(file), std::string(a->name), ToLowerAscii(hex)});
  }
  return lines;
}

struct ManifestHasher::Context {
  std::string algo;
  std::unique_ptr<EVP_MD_CTX, CtxFree> ctx;
};

Result<ManifestHasher> ManifestHasher::Create(const std::vector<std::string>& algos) {
  ManifestHasher h;
  for (const std::string& name : algos) {
    const Algo* a = FindAlgo(name);
    const EVP_MD* md = a != nullptr ? EVP_get_digestbyname(a->openssl) : nullptr;
    Context c{std::string(a != nullptr ? a->name : name), {EVP_MD_CTX_new(), CtxFree()}};
    if (md == nullptr || c.ctx == nullptr || EVP_DigestInit_ex(c.ctx.get(), md, nullptr) != 1) {
      return Status::Error(Code::kInternal, "OpenSSL cannot compute " + name);
    }
    h.contexts_.push_back(std::move(c));
  }
  return h;
}

ManifestHasher::ManifestHasher(ManifestHasher&&) noexcept = default;
ManifestHasher& ManifestHasher::operator=(ManifestHasher&&) noexcept = default;
ManifestHasher::~ManifestHasher() = default;

void ManifestHasher::Update(std::span<const uint8_t> bytes) {
  for (Context& c : contexts_) {
    if (EVP_DigestUpdate(c.ctx.get(), bytes.data(), bytes.size()) != 1) failed_ = true;
  }
}

Result<std::vector<std::pair<std::string, std::string>>> ManifestHasher::Final() {
  std::vector<std::pair<std::string, std::string>> out;
  for (Context& c : contexts_) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (failed_ || EVP_DigestFinal_ex(c.ctx.get(), digest, &length) != 1) {
      return Status::Error(Code::kInternal, "OpenSSL failed computing " + c.algo);
    }
    std::string hex;
    for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
    out.emplace_back(c.algo, std::move(hex));
  }
  return out;
}

Result<std::string> HexDigest(std::string_view algo, std::span<const uint8_t> bytes,
                              const CancelToken& cancel) {
  BYOI_ASSIGN_OR_RETURN(ManifestHasher h, ManifestHasher::Create({std::string(algo)}));
  for (uint64_t done = 0; done < bytes.size(); done += kDigestSlice) {
    BYOI_RETURN_IF_ERROR(cancel.Check());
    h.Update(bytes.subspan(done, std::min<uint64_t>(kDigestSlice, bytes.size() - done)));
  }
  BYOI_ASSIGN_OR_RETURN(auto digests, h.Final());
  return std::move(digests.front().second);
}

}  // namespace byoi
