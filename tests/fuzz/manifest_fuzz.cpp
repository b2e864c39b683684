// libFuzzer target for the untrusted text the job stage reads: manifest bodies (ParseManifest,
// ManifestToJson), user data (DecodeUserData) and status JSON from the state file
// (StatusFromJson). Besides crashes and sanitizer reports it checks the contracts:
// - a refused manifest has code kInvalid and a catalogue message; an accepted one is normalised
//   (URL http(s), checksum lower-case hex of the right length, disk group >= 1, valid host name)
//   and its printed form hides header values;
// - decoded user data is exactly what its text encodes (strict base64 is canonical);
// - a status that is read back writes out as JSON that reads back to the same status.
// Seeds: tests/fuzz/seeds/manifest/ (the examples of proto/examples).
#include <openssl/evp.h>

#include <boost/json.hpp>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/base/messages.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/status.hpp"

namespace {

namespace json = boost::json;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

bool IsLowerHex(std::string_view s) {
  return s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

void FuzzManifest(std::string_view text) {
  auto m = byoi::ParseManifest(text);
  if (!m.ok()) {
    const byoi::Status& s = m.status();
    Check(s.code() == byoi::Code::kInvalid);
    const std::string& msg = s.message();
    Check(msg == byoi::msg::kBadFormat || msg == byoi::msg::kBadChecksumType ||
          msg == byoi::msg::kChecksumPair || msg.starts_with("Invalid manifest: "));
    Check(msg.size() < 256 && s.detail().size() < 512);  // bounded, whatever the input
    Check(msg.find_first_of("\r\n") == std::string::npos);
    return;
  }
  const byoi::Manifest& man = *m;
  std::string scheme = man.url.substr(0, 8);
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  Check(scheme.starts_with("http://") || scheme.starts_with("https://"));
  Check(man.disk_group_id >= 1 && man.disk_group_id <= 1000000);
  if (man.checksum) {
    Check(man.checksum->hex.size() == byoi::HashHexLength(man.checksum->algo));
    Check(IsLowerHex(man.checksum->hex));
  }
  Check(man.config_drive.hostname.empty() || byoi::IsValidHostname(man.config_drive.hostname));
  Check(man.headers.size() <= 64);
  for (const auto& h : man.headers) {
    Check(!h.name.empty());
    Check(h.value.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos);
  }
  json::object printed = byoi::ManifestToJson(man);
  for (const auto& h : printed.at("httpHeaders").as_array()) Check(h.at("value") == "***");
  std::string out = json::serialize(printed);
  // The printed form is JSON again.
  std::error_code ec;
  json::parse(out, ec);
  Check(!ec);
}

void FuzzUserData(std::string_view text) {
  auto decoded = byoi::DecodeUserData(text);
  if (decoded) Check(Base64(decoded->first) == text);
}

void FuzzStatus(std::string_view text) {
  auto s = byoi::StatusFromJson(text);
  if (!s.ok()) {
    Check(s.status().code() == byoi::Code::kInvalid);
    return;
  }
  std::string once = json::serialize(byoi::StatusToJson(*s));
  auto again = byoi::StatusFromJson(once);
  Check(again.ok());
  Check(json::serialize(byoi::StatusToJson(*again)) == once);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  FuzzManifest(text);
  FuzzUserData(text);
  FuzzStatus(text);
  return 0;
}
