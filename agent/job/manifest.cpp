#include "agent/job/manifest.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <cmath>
#include <memory>
#include <set>

#include "agent/base/messages.hpp"
#include "agent/boot/boot_entry.hpp"  // ParseBootOrderPolicy

namespace byoi {

namespace json = boost::json;

namespace {

constexpr size_t kMaxUrlBytes = 8192;
constexpr size_t kMaxHeaders = 64;
constexpr size_t kMaxSshKeyBytes = 16384;
constexpr size_t kMaxEfiPathBytes = 512;
constexpr double kMaxDiskGroupId = 1000000;

Status Invalid(std::string_view field, std::string_view reason) {
  return Status::Error(Code::kInvalid, std::string(field) + ": " + std::string(reason),
                       msg::InvalidManifest(field, reason));
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// An untrusted value for a detail string: quoted, cut at 64 bytes, control characters as '?'.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = "'";
  for (char c : s.substr(0, kMax)) {
    auto u = static_cast<unsigned char>(c);
    out += u < 0x20 || u == 0x7f ? '?' : c;
  }
  out += s.size() > kMax ? "'..." : "'";
  return out;
}

// The field name of a member of a JSON object whose keys come from the manifest (v3 headers and
// metadata): "prefix.key" when the key is short printable ASCII, else "prefix[i]" by position, so
// that a hostile key never puts control characters or a megabyte into a message.
std::string KeyField(std::string_view prefix, std::string_view key, size_t index) {
  bool plain = !key.empty() && key.size() <= 64 &&
               std::all_of(key.begin(), key.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (plain) return std::string(prefix) + "." + std::string(key);
  return std::string(prefix) + "[" + std::to_string(index) + "]";
}

bool HasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

// Field accessors: absent and null are the same ("not given"); any other wrong type is refused.
Result<const json::value*> Field(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || it->value().is_null()) return static_cast<const json::value*>(nullptr);
  return &it->value();
}

Result<std::optional<std::string>> GetString(const json::object& o, std::string_view key,
                                             std::string_view field) {
  BYOI_ASSIGN_OR_RETURN(const json::value* v, Field(o, key));
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return Invalid(field, "expected a string");
  return std::optional<std::string>(std::string(v->get_string()));
}

Result<std::optional<bool>> GetBool(const json::object& o, std::string_view key,
                                    std::string_view field) {
  BYOI_ASSIGN_OR_RETURN(const json::value* v, Field(o, key));
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_bool()) return Invalid(field, "expected true or false");
  return std::optional<bool>(v->get_bool());
}

Result<const json::object*> GetObject(const json::object& o, std::string_view key,
                                      std::string_view field) {
  BYOI_ASSIGN_OR_RETURN(const json::value* v, Field(o, key));
  if (v == nullptr) return static_cast<const json::object*>(nullptr);
  if (!v->is_object()) return Invalid(field, "expected an object");
  return &v->get_object();
}

Result<const json::array*> GetArray(const json::object& o, std::string_view key,
                                    std::string_view field) {
  BYOI_ASSIGN_OR_RETURN(const json::value* v, Field(o, key));
  if (v == nullptr) return static_cast<const json::array*>(nullptr);
  if (!v->is_array()) return Invalid(field, "expected an array");
  return &v->get_array();
}

Result<int> GetDiskGroup(const json::object& o, std::string_view key, std::string_view field) {
  BYOI_ASSIGN_OR_RETURN(const json::value* v, Field(o, key));
  if (v == nullptr) return 1;
  // 1.0 is an integer too, as in JSON Schema: a backend's serialiser may write one.
  double id = 0;
  if (v->is_int64()) {
    id = static_cast<double>(v->get_int64());
  } else if (v->is_uint64()) {
    return Invalid(field, "too large");
  } else if (v->is_double() && std::trunc(v->get_double()) == v->get_double()) {
    id = v->get_double();  // may be infinite ("1e999"): too large below
  } else {
    return Invalid(field, "expected an integer");
  }
  if (id < 0) return Invalid(field, "must not be negative");
  if (id > kMaxDiskGroupId) return Invalid(field, "too large");
  return id == 0 ? 1 : static_cast<int>(id);
}

Status ValidateUrl(const std::string& url, std::string_view field) {
  if (url.empty()) return Invalid(field, "missing");
  if (url.size() > kMaxUrlBytes) return Invalid(field, "longer than 8192 bytes");
  if (HasControl(url) || url.find(' ') != std::string::npos) {
    return Invalid(field, "contains spaces or control characters");
  }
  std::string lower = Lower(url.substr(0, 8));
  if (!lower.starts_with("http://") && !lower.starts_with("https://")) {
    return Invalid(field, "scheme must be http or https");
  }
  // libcurl reads "https:///x" as the host "x"; RFC 3986 says the authority is empty.
  size_t authority = url.find("://") + 3;
  if (authority == url.size() ||
      std::string_view("/?#").find(url[authority]) != std::string_view::npos) {
    return Invalid(field, "no host");
  }
  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> u(curl_url(), curl_url_cleanup);
  if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
    return Invalid(field, "not a valid URL");
  }
  char* host = nullptr;
  bool has_host = curl_url_get(u.get(), CURLUPART_HOST, &host, 0) == CURLUE_OK && host && *host;
  curl_free(host);
  if (!has_host) return Invalid(field, "no host");
  return Status::Ok();
}

Result<ImageType> ParseImageType(const std::optional<std::string>& type) {
  std::string t = type ? Lower(*type) : "";
  if (t == "qcow2") return ImageType::kQcow2;
  if (t == "raw") return ImageType::kRaw;
  if (t == "ova") return ImageType::kOva;
  return Status::Error(Code::kInvalid, "image type " + (type ? Quote(*type) : "missing"),
                       std::string(msg::kBadFormat));
}

Result<std::optional<Checksum>> ParseChecksum(const std::optional<std::string>& sum,
                                              const std::optional<std::string>& type,
                                              std::string_view sum_field) {
  bool has_sum = sum && !sum->empty();
  bool has_type = type && !type->empty();
  if (!has_sum && !has_type) return std::optional<Checksum>();
  if (has_sum != has_type) {
    return Status::Error(Code::kInvalid, "checksum and its type must come together",
                         std::string(msg::kChecksumPair));
  }
  static constexpr std::array kAlgos = {HashAlgo::kMd5, HashAlgo::kSha1, HashAlgo::kSha256,
                                        HashAlgo::kSha512};
  std::string t = Lower(*type);
  auto it =
      std::find_if(kAlgos.begin(), kAlgos.end(), [&](HashAlgo a) { return HashAlgoName(a) == t; });
  if (it == kAlgos.end()) {
    return Status::Error(Code::kInvalid, "checksum type " + Quote(*type),
                         std::string(msg::kBadChecksumType));
  }
  Checksum c{*it, Lower(*sum)};
  bool hex = std::all_of(c.hex.begin(), c.hex.end(),
                         [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); });
  if (!hex || c.hex.size() != HashHexLength(c.algo)) {
    return Invalid(sum_field, "expected " + std::to_string(HashHexLength(c.algo)) +
                                  " hex digits for " + std::string(HashAlgoName(c.algo)));
  }
  return std::optional<Checksum>(std::move(c));
}

bool IsToken(std::string_view name) {
  // RFC 7230 tchar.
  static constexpr std::string_view kExtra = "!#$%&'*+-.^_`|~";
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kExtra.find(c) != std::string_view::npos;
  });
}

// Headers the download itself must control: a manifest's Range or If-Range would break resuming,
// Accept-Encoding would let the server send compressed bytes that are not the image, and the
// framing headers are curl's.
bool IsReservedHeader(std::string_view name) {
  static constexpr std::array<std::string_view, 7> kReserved = {
      "range",          "if-range",          "accept-encoding", "host",
      "content-length", "transfer-encoding", "connection"};
  std::string lower = Lower(std::string(name));
  return std::find(kReserved.begin(), kReserved.end(), lower) != kReserved.end();
}

Status AddHeader(Manifest& m, std::string name, std::string value, const std::string& field) {
  if (!IsToken(name)) return Invalid(field, "not a valid header name");
  if (IsReservedHeader(name)) return Invalid(field, name + " is set by the agent itself");
  if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
    return Invalid(field, "header value contains CR, LF or NUL");
  }
  if (m.headers.size() >= kMaxHeaders) return Invalid(field, "more than 64 headers");
  m.headers.push_back({std::move(name), std::move(value)});
  return Status::Ok();
}

Status SetBootOrder(Manifest& m, const std::optional<std::string>& policy, std::string_view field) {
  if (!policy || policy->empty()) return Status::Ok();
  Result<BootOrderPolicy> parsed = ParseBootOrderPolicy(*policy);
  if (!parsed.ok()) return Invalid(field, "must be first, after-network, bootnext or none");
  m.efi_boot_order = *parsed;
  return Status::Ok();
}

// writeMode and verifyWritten (ours, docs/manifest.md): how this job writes, over the agent's
// --write-mode and --verify-written. `prefix` is "" (v1) or "customizations." (v3).
Status SetWriteOptions(Manifest& m, const json::object& o, const std::string& prefix) {
  BYOI_ASSIGN_OR_RETURN(auto mode, GetString(o, "writeMode", prefix + "writeMode"));
  if (mode && !mode->empty()) {
    std::optional<WriteMode> parsed = ParseWriteMode(*mode);
    if (!parsed) return Invalid(prefix + "writeMode", "must be auto, ram or stream");
    m.write_mode = parsed;
  }
  BYOI_ASSIGN_OR_RETURN(m.verify_written, GetBool(o, "verifyWritten", prefix + "verifyWritten"));
  return Status::Ok();
}

// A magnet link for the swarm (BEP 9): at most 8192 bytes, no spaces or control characters, and an
// exact topic `xt=urn:btih:` of 40 hex or 32 base32 digits (the v1 info hash the swarm is
// joined by).
Status ValidateMagnet(const std::string& link, std::string_view field) {
  if (link.size() > kMaxUrlBytes) return Invalid(field, "longer than 8192 bytes");
  if (HasControl(link) || link.find(' ') != std::string::npos) {
    return Invalid(field, "contains spaces or control characters");
  }
  const std::string lower = Lower(link);
  size_t at = lower.find("xt=urn:btih:");
  if (at == std::string::npos || (lower[at - 1] != '?' && lower[at - 1] != '&')) {
    return Invalid(field, "a magnet link needs xt=urn:btih:");
  }
  at += std::string_view("xt=urn:btih:").size();
  const size_t end = std::min(lower.find('&', at), lower.size());
  const std::string hash = lower.substr(at, end - at);
  const bool hex =
      hash.size() == 40 && hash.find_first_not_of("0123456789abcdef") == std::string::npos;
  const bool base32 =
      hash.size() == 32 &&
      hash.find_first_not_of("abcdefghijklmnopqrstuvwxyz234567") == std::string::npos;
  if (!hex && !base32) return Invalid(field, "the btih must be 40 hex or 32 base32 digits");
  return Status::Ok();
}

// torrent (ours, docs/manifest.md): the image's .torrent (an http or https URL) or a magnet link;
// the swarm downloads the image, the manifest's URL being its web seed. `prefix` as for
// SetWriteOptions.
Status SetTorrent(Manifest& m, const json::object& o, const std::string& prefix) {
  const std::string field = prefix + "torrent";
  BYOI_ASSIGN_OR_RETURN(auto torrent, GetString(o, "torrent", field));
  if (!torrent || torrent->empty()) return Status::Ok();
  const std::string lower = Lower(torrent->substr(0, 8));
  if (lower.starts_with("magnet:")) {
    BYOI_RETURN_IF_ERROR(ValidateMagnet(*torrent, field));
  } else if (lower.starts_with("http://") || lower.starts_with("https://")) {
    BYOI_RETURN_IF_ERROR(ValidateUrl(*torrent, field));
  } else {
    return Invalid(field, "must be an http or https URL or a magnet link");
  }
  m.torrent = *torrent;
  return Status::Ok();
}

// REQUIRES: !path.empty() (an empty path means "not given").
Status ValidateEfiPath(const std::string& path, std::string_view field) {
  if (path.size() > kMaxEfiPathBytes) return Invalid(field, "longer than 512 bytes");
  if (HasControl(path)) return Invalid(field, "contains control characters");
  size_t start = 0;
  std::string_view last;
  while (start <= path.size()) {
    size_t end = path.find_first_of("\\/", start);
    if (end == std::string::npos) end = path.size();
    last = std::string_view(path.data() + start, end - start);
    if (last == "..") return Invalid(field, "must not contain '..'");
    start = end + 1;
  }
  // The path names the loader file itself, not its directory.
  if (last.empty() || last == ".") return Invalid(field, "no file name");
  return Status::Ok();
}

Status SetHostname(ConfigDriveSpec& cd, const std::optional<std::string>& hostname,
                   std::string_view field) {
  if (!hostname || hostname->empty()) return Status::Ok();
  if (!IsValidHostname(*hostname)) return Invalid(field, "not a valid RFC 1123 host name");
  cd.hostname = *hostname;
  return Status::Ok();
}

Status SetSshKey(ConfigDriveSpec& cd, const std::optional<std::string>& key,
                 std::string_view field) {
  if (!key || key->empty()) return Status::Ok();
  if (key->size() > kMaxSshKeyBytes) return Invalid(field, "longer than 16384 bytes");
  if (key->find_first_of(std::string_view("\r\0", 2)) != std::string::npos) {
    return Invalid(field, "contains CR or NUL");
  }
  cd.ssh_key = *key;
  return Status::Ok();
}

void SetUserData(ConfigDriveSpec& cd, const std::optional<std::string>& data) {
  if (!data || data->empty()) return;
  if (auto decoded = DecodeUserData(*data)) {
    cd.user_data = std::move(decoded->first);
    cd.user_data_source = decoded->second;
  } else {
    cd.user_data = *data;
    cd.user_data_source = UserDataSource::kText;
  }
}

// The metadata keys added so far, as views into the parsed body. A 1 MiB body holds some 80,000
// keys, so a duplicate is looked up in a set (a scan of the keys so far took 11 s); an ordered one,
// because the sender could choose keys that collide in a hash set.
using KeySet = std::set<std::string_view>;

// REQUIRES: `key` views the parsed body, which outlives `seen`.
Status AddMetadata(ConfigDriveSpec& cd, KeySet& seen, std::string_view key, std::string value,
                   const std::string& field) {
  if (key.empty()) return Invalid(field, "empty key");
  if (!seen.insert(key).second) return Invalid(field, "duplicate key");
  cd.metadata.emplace_back(std::string(key), std::move(value));
  return Status::Ok();
}

// v1 `configdrive` object, or the flat form where the same keys sit at the top level.
Status ParseV1ConfigDrive(const json::object& o, std::string_view prefix, ConfigDriveSpec& cd) {
  auto name = [&](std::string_view key) { return std::string(prefix) + std::string(key); };
  BYOI_ASSIGN_OR_RETURN(auto hostname, GetString(o, "hostname", name("hostname")));
  BYOI_RETURN_IF_ERROR(SetHostname(cd, hostname, name("hostname")));
  BYOI_ASSIGN_OR_RETURN(auto key, GetString(o, "sshKey", name("sshKey")));
  BYOI_RETURN_IF_ERROR(SetSshKey(cd, key, name("sshKey")));
  BYOI_ASSIGN_OR_RETURN(auto user_data, GetString(o, "userData", name("userData")));
  SetUserData(cd, user_data);
  BYOI_ASSIGN_OR_RETURN(const json::array* metas,
                        GetArray(o, "userMetadatas", name("userMetadatas")));
  if (metas != nullptr) {
    KeySet seen;
    for (size_t i = 0; i < metas->size(); ++i) {
      std::string field = name("userMetadatas") + "[" + std::to_string(i) + "]";
      const json::value& item = (*metas)[i];
      if (!item.is_object()) return Invalid(field, "expected an object with key and value");
      BYOI_ASSIGN_OR_RETURN(auto k, GetString(item.get_object(), "key", field + ".key"));
      BYOI_ASSIGN_OR_RETURN(auto v, GetString(item.get_object(), "value", field + ".value"));
      if (!k) return Invalid(field + ".key", "missing");
      std::string_view key_in_body = item.get_object().at("key").get_string();
      BYOI_RETURN_IF_ERROR(AddMetadata(cd, seen, key_in_body, v.value_or(""), field + ".key"));
    }
  }
  return Status::Ok();
}

Result<Manifest> ParseV1(const json::object& o) {
  Manifest m;
  m.shape = Manifest::Shape::kV1;
  BYOI_ASSIGN_OR_RETURN(auto url, GetString(o, "URL", "URL"));
  BYOI_RETURN_IF_ERROR(ValidateUrl(url.value_or(""), "URL"));
  m.url = *url;
  BYOI_ASSIGN_OR_RETURN(auto type, GetString(o, "type", "type"));
  BYOI_ASSIGN_OR_RETURN(m.type, ParseImageType(type));
  BYOI_ASSIGN_OR_RETURN(auto sum, GetString(o, "checkSum", "checkSum"));
  BYOI_ASSIGN_OR_RETURN(auto sum_type, GetString(o, "checkSumType", "checkSumType"));
  BYOI_ASSIGN_OR_RETURN(m.checksum, ParseChecksum(sum, sum_type, "checkSum"));
  BYOI_ASSIGN_OR_RETURN(auto description, GetString(o, "description", "description"));
  m.description = description.value_or("");
  BYOI_ASSIGN_OR_RETURN(m.disk_group_id, GetDiskGroup(o, "diskGroupId", "diskGroupId"));
  BYOI_ASSIGN_OR_RETURN(const json::array* headers, GetArray(o, "httpHeader", "httpHeader"));
  if (headers != nullptr) {
    for (size_t i = 0; i < headers->size(); ++i) {
      std::string field = "httpHeader[" + std::to_string(i) + "]";
      const json::value& item = (*headers)[i];
      if (!item.is_object()) return Invalid(field, "expected an object with key and value");
      BYOI_ASSIGN_OR_RETURN(auto k, GetString(item.get_object(), "key", field + ".key"));
      BYOI_ASSIGN_OR_RETURN(auto v, GetString(item.get_object(), "value", field + ".value"));
      if (!k) return Invalid(field + ".key", "missing");
      BYOI_RETURN_IF_ERROR(AddHeader(m, *k, v.value_or(""), field));
    }
  }
  BYOI_ASSIGN_OR_RETURN(auto efi, GetString(o, "efiBootloaderPath", "efiBootloaderPath"));
  if (efi && !efi->empty()) {
    BYOI_RETURN_IF_ERROR(ValidateEfiPath(*efi, "efiBootloaderPath"));
    m.efi_bootloader_path = *efi;
  }
  BYOI_ASSIGN_OR_RETURN(auto order, GetString(o, "efiBootOrder", "efiBootOrder"));
  BYOI_RETURN_IF_ERROR(SetBootOrder(m, order, "efiBootOrder"));
  BYOI_RETURN_IF_ERROR(SetWriteOptions(m, o, ""));
  BYOI_RETURN_IF_ERROR(SetTorrent(m, o, ""));
  BYOI_ASSIGN_OR_RETURN(const json::object* cd, GetObject(o, "configdrive", "configdrive"));
  if (cd != nullptr) {
    BYOI_ASSIGN_OR_RETURN(auto enable, GetBool(*cd, "enable", "configdrive.enable"));
    m.config_drive.enabled = enable.value_or(false);
    BYOI_RETURN_IF_ERROR(ParseV1ConfigDrive(*cd, "configdrive.", m.config_drive));
  } else {
    // The oldest flat form: the config drive is wanted when any of its fields is given.
    BYOI_RETURN_IF_ERROR(ParseV1ConfigDrive(o, "", m.config_drive));
    const ConfigDriveSpec& c = m.config_drive;
    m.config_drive.enabled =
        !c.hostname.empty() || !c.ssh_key.empty() || c.user_data || !c.metadata.empty();
  }
  return m;
}

Result<Manifest> ParseV3(const json::object& o) {
  Manifest m;
  m.shape = Manifest::Shape::kV3;
  BYOI_ASSIGN_OR_RETURN(auto os, GetString(o, "operatingSystem", "operatingSystem"));
  if (os && *os != "byoi_64") return Invalid("operatingSystem", "expected byoi_64");
  BYOI_ASSIGN_OR_RETURN(const json::object* c, GetObject(o, "customizations", "customizations"));
  if (c == nullptr) return Invalid("customizations", "missing");
  BYOI_ASSIGN_OR_RETURN(auto url, GetString(*c, "imageURL", "customizations.imageURL"));
  BYOI_RETURN_IF_ERROR(ValidateUrl(url.value_or(""), "customizations.imageURL"));
  m.url = *url;
  BYOI_ASSIGN_OR_RETURN(auto type, GetString(*c, "imageType", "customizations.imageType"));
  BYOI_ASSIGN_OR_RETURN(m.type, ParseImageType(type));
  BYOI_ASSIGN_OR_RETURN(auto sum, GetString(*c, "imageCheckSum", "customizations.imageCheckSum"));
  BYOI_ASSIGN_OR_RETURN(auto sum_type,
                        GetString(*c, "imageCheckSumType", "customizations.imageCheckSumType"));
  BYOI_ASSIGN_OR_RETURN(m.checksum, ParseChecksum(sum, sum_type, "customizations.imageCheckSum"));
  BYOI_ASSIGN_OR_RETURN(const json::object* headers,
                        GetObject(*c, "httpHeaders", "customizations.httpHeaders"));
  if (headers != nullptr) {
    size_t index = 0;
    for (const auto& kv : *headers) {
      std::string field = KeyField("customizations.httpHeaders", kv.key(), index++);
      if (!kv.value().is_string()) return Invalid(field, "expected a string");
      BYOI_RETURN_IF_ERROR(
          AddHeader(m, std::string(kv.key()), std::string(kv.value().get_string()), field));
    }
  }
  BYOI_ASSIGN_OR_RETURN(auto efi,
                        GetString(*c, "efiBootloaderPath", "customizations.efiBootloaderPath"));
  if (efi && !efi->empty()) {
    BYOI_RETURN_IF_ERROR(ValidateEfiPath(*efi, "customizations.efiBootloaderPath"));
    m.efi_bootloader_path = *efi;
  }
  BYOI_ASSIGN_OR_RETURN(auto order, GetString(*c, "efiBootOrder", "customizations.efiBootOrder"));
  BYOI_RETURN_IF_ERROR(SetBootOrder(m, order, "customizations.efiBootOrder"));
  BYOI_RETURN_IF_ERROR(SetWriteOptions(m, *c, "customizations."));
  BYOI_RETURN_IF_ERROR(SetTorrent(m, *c, "customizations."));
  BYOI_ASSIGN_OR_RETURN(auto description,
                        GetString(*c, "description", "customizations.description"));
  m.description = description.value_or("");
  ConfigDriveSpec& cd = m.config_drive;
  BYOI_ASSIGN_OR_RETURN(auto hostname, GetString(*c, "hostname", "customizations.hostname"));
  BYOI_RETURN_IF_ERROR(SetHostname(cd, hostname, "customizations.hostname"));
  BYOI_ASSIGN_OR_RETURN(auto key, GetString(*c, "sshKey", "customizations.sshKey"));
  BYOI_RETURN_IF_ERROR(SetSshKey(cd, key, "customizations.sshKey"));
  BYOI_ASSIGN_OR_RETURN(auto user_data,
                        GetString(*c, "configDriveUserData", "customizations.configDriveUserData"));
  SetUserData(cd, user_data);
  BYOI_ASSIGN_OR_RETURN(const json::object* meta,
                        GetObject(*c, "configDriveMetadata", "customizations.configDriveMetadata"));
  if (meta != nullptr) {
    KeySet seen;
    size_t index = 0;
    for (const auto& kv : *meta) {
      std::string field = KeyField("customizations.configDriveMetadata", kv.key(), index++);
      if (!kv.value().is_string()) return Invalid(field, "expected a string");
      BYOI_RETURN_IF_ERROR(
          AddMetadata(cd, seen, kv.key(), std::string(kv.value().get_string()), field));
    }
  }
  cd.enabled = !cd.hostname.empty() || !cd.ssh_key.empty() || cd.user_data || !cd.metadata.empty();
  BYOI_ASSIGN_OR_RETURN(const json::array* storage, GetArray(o, "storage", "storage"));
  if (storage != nullptr && !storage->empty()) {
    if (storage->size() > 1) return Invalid("storage", "only one disk group can be given");
    if (!(*storage)[0].is_object()) return Invalid("storage[0]", "expected an object");
    BYOI_ASSIGN_OR_RETURN(m.disk_group_id, GetDiskGroup((*storage)[0].get_object(), "diskGroupId",
                                                        "storage[0].diskGroupId"));
  }
  return m;
}

// Strict RFC 4648 base64: standard alphabet, no white space, padding only where it must be and
// with zero bits below it. Anything else is not base64 for our purpose.
std::optional<std::string> StrictBase64Decode(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t pad = 0;
  if (in.back() == '=') pad = in[in.size() - 2] == '=' ? 2 : 1;
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    bool last = i + 4 == in.size();
    int v[4];
    for (int j = 0; j < 4; ++j) {
      char c = in[i + j];
      if (last && j >= 4 - static_cast<int>(pad)) {
        v[j] = 0;
        continue;
      }
      v[j] = value(c);
      if (v[j] < 0) return std::nullopt;
    }
    uint32_t n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(n >> 16));
    if (!last || pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (!last || pad < 1) out.push_back(static_cast<char>(n & 0xff));
    if (last && pad == 2 && (v[1] & 0x0f) != 0) return std::nullopt;
    if (last && pad == 1 && (v[2] & 0x03) != 0) return std::nullopt;
  }
  return out;
}

// Text: valid UTF-8 without control characters other than white space (HT LF VT FF CR). Random
// bytes decoded from a word that merely looks like base64 ("BBBB" -> 04 10 41) are rarely text by
// this definition, and user data that is meant as text never contains such controls.
bool IsUtf8Text(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if ((c < 0x20 && (c < 0x09 || c > 0x0d)) || c == 0x7f) return false;
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0)
      len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
      len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
      len = 4, cp = c & 0x07;
    else
      return false;
    if (i + len > s.size()) return false;
    for (int j = 1; j < len; ++j) {
      auto cc = static_cast<unsigned char>(s[i + j]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

bool IsValidHostname(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view label = name.substr(start, end - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
    start = end + 1;
  }
  return true;
}

std::optional<std::pair<std::string, UserDataSource>> DecodeUserData(std::string_view text) {
  auto decoded = StrictBase64Decode(text);
  if (!decoded) return std::nullopt;
  if (decoded->size() >= 3 && static_cast<unsigned char>((*decoded)[0]) == 0x1f &&
      static_cast<unsigned char>((*decoded)[1]) == 0x8b && (*decoded)[2] == 8) {
    return std::make_pair(std::move(*decoded), UserDataSource::kBase64Gzip);
  }
  if (IsUtf8Text(*decoded)) return std::make_pair(std::move(*decoded), UserDataSource::kBase64Text);
  return std::nullopt;
}

Status ValidateHttpUrl(const std::string& url, std::string_view field) {
  return ValidateUrl(url, field);
}

Result<Manifest> ParseManifest(std::string_view body) {
  if (body.size() > kMaxManifestBytes) return Invalid("body", "larger than 1 MiB");
  json::parse_options options;
  options.max_depth = 32;
  std::error_code ec;
  json::value root = json::parse(body, ec, json::storage_ptr(), options);
  if (ec == json::error::too_deep) return Invalid("body", "nested deeper than 32 levels");
  // The parser's own wording goes to the detail only: the message must not change with Boost.
  if (ec) {
    return Status::Error(Code::kInvalid, "body: not valid JSON: " + ec.message(),
                         msg::InvalidManifest("body", "not valid JSON"));
  }
  if (!root.is_object()) return Invalid("body", "expected a JSON object");
  const json::object& o = root.get_object();
  // A null member is an absent one, here as everywhere.
  auto given = [&](std::string_view key) {
    const json::value* v = o.if_contains(key);
    return v != nullptr && !v->is_null();
  };
  bool v3 = given("customizations") || given("operatingSystem") || given("storage");
  return v3 ? ParseV3(o) : ParseV1(o);
}

boost::json::object ManifestToJson(const Manifest& m) {
  json::object out;
  out["shape"] = m.shape == Manifest::Shape::kV1 ? "byoi-v1" : "reinstall-v3";
  out["url"] = msg::ShownUrl(m.url, msg::UrlSecrets::kMasked);
  out["type"] = ImageTypeName(m.type);
  if (m.checksum) {
    out["checkSumType"] = HashAlgoName(m.checksum->algo);
    out["checkSum"] = m.checksum->hex;
  } else {
    out["checkSumType"] = nullptr;
    out["checkSum"] = nullptr;
  }
  out["description"] = m.description;
  out["diskGroupId"] = m.disk_group_id;
  json::array headers;
  for (const auto& h : m.headers)
    headers.push_back(json::object{{"name", h.name}, {"value", "***"}});
  out["httpHeaders"] = std::move(headers);
  out["efiBootloaderPath"] =
      m.efi_bootloader_path.empty() ? json::value(nullptr) : json::value(m.efi_bootloader_path);
  out["efiBootOrder"] =
      m.efi_boot_order ? json::value(BootOrderPolicyName(*m.efi_boot_order)) : json::value(nullptr);
  out["writeMode"] =
      m.write_mode ? json::value(WriteModeName(*m.write_mode)) : json::value(nullptr);
  out["verifyWritten"] = m.verify_written ? json::value(*m.verify_written) : json::value(nullptr);
  out["torrent"] = m.torrent.empty() ? json::value(nullptr)
                   : Lower(m.torrent.substr(0, 7)) == "magnet:"
                       ? json::value(m.torrent)
                       : json::value(msg::ShownUrl(m.torrent, msg::UrlSecrets::kMasked));
  const ConfigDriveSpec& cd = m.config_drive;
  json::object drive;
  drive["enabled"] = cd.enabled;
  drive["hostname"] = cd.hostname;
  drive["sshKey"] = cd.ssh_key;
  if (cd.user_data) {
    static constexpr const char* kSources[] = {"text", "base64 text", "base64 gzip"};
    drive["userData"] =
        json::object{{"bytes", cd.user_data->size()},
                     {"decodedFrom", kSources[static_cast<int>(cd.user_data_source)]}};
  } else {
    drive["userData"] = nullptr;
  }
  json::object meta;
  for (const auto& [k, v] : cd.metadata) meta[k] = v;
  drive["metadata"] = std::move(meta);
  out["configDrive"] = std::move(drive);
  return out;
}

}  // namespace byoi
