// The manifest contract of docs/manifest.md and docs/status.md: both shapes, every validation rule
// and the exact message each failure produces, the user-data decoding rule in both directions, and
// the normalised JSON that `validate` prints.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <time.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/heap.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {
namespace {

namespace json = boost::json;
using namespace std::string_literals;

constexpr std::string_view kUrl = "https://example.net/debian-12.raw";

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// `base` with the members of the JSON object text `members` merged over it, recursively for
// objects; a member whose value is the string "<absent>" is removed.
void Merge(json::object& base, const json::object& members) {
  for (const auto& kv : members) {
    if (kv.value().is_string() && kv.value().get_string() == "<absent>") {
      base.erase(kv.key());
    } else if (kv.value().is_object() && base.contains(kv.key()) && base[kv.key()].is_object()) {
      Merge(base[kv.key()].get_object(), kv.value().get_object());
    } else {
      base[kv.key()] = kv.value();
    }
  }
}

// The smallest valid v1 manifest, changed by `members`.
std::string V1(std::string_view members = "{}") {
  json::object o{{"URL", kUrl}, {"type", "raw"}};
  Merge(o, json::parse(members).as_object());
  return json::serialize(o);
}

// The smallest valid v3 manifest, its customizations changed by `customizations` and the top
// level by `top`.
std::string V3(std::string_view customizations = "{}", std::string_view top = "{}") {
  json::object o{{"operatingSystem", "byoi_64"},
                 {"customizations", json::object{{"imageURL", kUrl}, {"imageType", "raw"}}}};
  Merge(o["customizations"].as_object(), json::parse(customizations).as_object());
  Merge(o, json::parse(top).as_object());
  return json::serialize(o);
}

Manifest MustParse(std::string_view body) {
  auto m = ParseManifest(body);
  EXPECT_TRUE(m.ok()) << m.status().ToString() << "\n  body: " << body.substr(0, 300);
  return m.ok() ? *m : Manifest();
}

// --- Both shapes -------------------------------------------------------------------------------

constexpr std::string_view kDesignV1 = R"({"URL": "https://example.net/debian-12.qcow2",
  "type": "qcow2",
  "checkSum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
  "checkSumType": "sha256",
  "description": "debian 12", "diskGroupId": 1,
  "httpHeader": [{"key": "Authorization", "value": "Basic bG9naW46cGFzc3dvcmQ="}],
  "configdrive": {"enable": true, "hostname": "web-1", "sshKey": "ssh-ed25519 AAAAC3 me@host",
                  "userData": "#cloud-config\npackages: [nginx]\n",
                  "userMetadatas": [{"key": "role", "value": "web"}, {"key": "env", "value": "prod"}]}})";

constexpr std::string_view kDesignV3 = R"({"operatingSystem": "byoi_64",
  "customizations": {"imageURL": "https://example.net/debian-12.raw", "imageType": "raw",
    "imageCheckSum": "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "imageCheckSumType": "sha512",
    "httpHeaders": {"Authorization": "Basic bG9naW46cGFzc3dvcmQ=", "X-Trace": "1"},
    "efiBootloaderPath": "\\efi\\debian\\grubx64.efi",
    "hostname": "web-1", "sshKey": "ssh-ed25519 AAAAC3 me@host",
    "configDriveUserData": "I2Nsb3VkLWNvbmZpZwo=", "configDriveMetadata": {"role": "web"}},
  "storage": [{"diskGroupId": 2}]})";

TEST(ManifestShapes, V1NestedConfigDrive) {
  Manifest m = MustParse(kDesignV1);
  EXPECT_EQ(m.shape, Manifest::Shape::kV1);
  EXPECT_EQ(m.url, "https://example.net/debian-12.qcow2");
  EXPECT_EQ(m.type, ImageType::kQcow2);
  ASSERT_TRUE(m.checksum);
  EXPECT_EQ(m.checksum->algo, HashAlgo::kSha256);
  EXPECT_EQ(m.checksum->hex, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
  EXPECT_EQ(m.description, "debian 12");
  EXPECT_EQ(m.disk_group_id, 1);
  ASSERT_EQ(m.headers.size(), 1u);
  EXPECT_EQ(m.headers[0].name, "Authorization");
  EXPECT_EQ(m.headers[0].value, "Basic bG9naW46cGFzc3dvcmQ=");
  EXPECT_EQ(m.efi_bootloader_path, "");
  const ConfigDriveSpec& cd = m.config_drive;
  EXPECT_TRUE(cd.enabled);
  EXPECT_EQ(cd.hostname, "web-1");
  EXPECT_EQ(cd.ssh_key, "ssh-ed25519 AAAAC3 me@host");
  EXPECT_EQ(cd.user_data, "#cloud-config\npackages: [nginx]\n");
  EXPECT_EQ(cd.user_data_source, UserDataSource::kText);
  using Meta = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(cd.metadata, (Meta{{"role", "web"}, {"env", "prod"}}));  // in the given order
}

TEST(ManifestShapes, V1OldestFlatForm) {
  Manifest m = MustParse(V1(R"({"hostname": "web-2", "sshKey": "ssh-rsa AAAAB3 a@b",
      "userData": "#!/bin/sh\necho hi\n", "userMetadatas": [{"key": "k", "value": "v"}]})"));
  EXPECT_EQ(m.shape, Manifest::Shape::kV1);
  EXPECT_TRUE(m.config_drive.enabled);
  EXPECT_EQ(m.config_drive.hostname, "web-2");
  EXPECT_EQ(m.config_drive.ssh_key, "ssh-rsa AAAAB3 a@b");
  EXPECT_EQ(m.config_drive.user_data, "#!/bin/sh\necho hi\n");
  ASSERT_EQ(m.config_drive.metadata.size(), 1u);
  EXPECT_EQ(m.config_drive.metadata[0], std::make_pair("k"s, "v"s));
}

TEST(ManifestShapes, V3Reinstall) {
  Manifest m = MustParse(kDesignV3);
  EXPECT_EQ(m.shape, Manifest::Shape::kV3);
  EXPECT_EQ(m.url, "https://example.net/debian-12.raw");
  EXPECT_EQ(m.type, ImageType::kRaw);
  ASSERT_TRUE(m.checksum);
  EXPECT_EQ(m.checksum->algo, HashAlgo::kSha512);
  EXPECT_EQ(m.checksum->hex.size(), 128u);
  EXPECT_EQ(m.disk_group_id, 2);
  ASSERT_EQ(m.headers.size(), 2u);
  EXPECT_EQ(m.headers[0].name, "Authorization");
  EXPECT_EQ(m.headers[1].name, "X-Trace");
  EXPECT_EQ(m.headers[1].value, "1");
  EXPECT_EQ(m.efi_bootloader_path, "\\efi\\debian\\grubx64.efi");
  const ConfigDriveSpec& cd = m.config_drive;
  EXPECT_TRUE(cd.enabled);
  EXPECT_EQ(cd.hostname, "web-1");
  EXPECT_EQ(cd.ssh_key, "ssh-ed25519 AAAAC3 me@host");
  EXPECT_EQ(cd.user_data, "#cloud-config\n");
  EXPECT_EQ(cd.user_data_source, UserDataSource::kBase64Text);
  ASSERT_EQ(cd.metadata.size(), 1u);
  EXPECT_EQ(cd.metadata[0], std::make_pair("role"s, "web"s));
}

TEST(ManifestShapes, MinimalBodiesHaveDefaults) {
  for (const std::string& body : {V1(), V3()}) {
    Manifest m = MustParse(body);
    EXPECT_EQ(m.type, ImageType::kRaw);
    EXPECT_FALSE(m.checksum);
    EXPECT_EQ(m.disk_group_id, 1);
    EXPECT_TRUE(m.headers.empty());
    EXPECT_EQ(m.efi_bootloader_path, "");
    EXPECT_FALSE(m.config_drive.enabled);
    EXPECT_FALSE(m.config_drive.user_data);
  }
}

TEST(ManifestShapes, ShapeChosenByNonNullV3Members) {
  // Any non-null v3 member makes the body v3 (then customizations is required)...
  EXPECT_EQ(MustParse(V3("{}", R"({"operatingSystem": "<absent>"})")).shape, Manifest::Shape::kV3);
  EXPECT_EQ(MustParse(V3("{}", R"({"storage": []})")).shape, Manifest::Shape::kV3);
  // ...a null one is absent, as everywhere.
  EXPECT_EQ(
      MustParse(V1(R"({"customizations": null, "operatingSystem": null, "storage": null})")).shape,
      Manifest::Shape::kV1);
  // v1 members in a v3 body are unknown members there, and ignored.
  EXPECT_EQ(MustParse(V3("{}", R"({"URL": "ftp://x", "type": "iso"})")).url, kUrl);
}

TEST(ManifestShapes, UnknownMembersIgnoredEverywhere) {
  Manifest m = MustParse(V1(R"({"future": {"a": [1, 2, {"b": null}]}, "Url": 3,
      "httpHeader": [{"key": "A", "value": "b", "secret": true}],
      "configdrive": {"enable": true, "vendorData": 7, "userMetadatas": [{"key": "k", "x": 1}]}})"));
  EXPECT_EQ(m.headers.size(), 1u);
  EXPECT_TRUE(m.config_drive.enabled);
  EXPECT_EQ(m.config_drive.metadata[0], std::make_pair("k"s, ""s));  // a missing value is ""
  Manifest m3 = MustParse(V3(R"({"partitioning": {"layout": []}, "language": "en"})",
                             R"({"storage": [{"diskGroupId": 3, "hardwareRaid": []}], "x": 1})"));
  EXPECT_EQ(m3.disk_group_id, 3);
}

// Every optional member given as null gives the same manifest as leaving it out.
TEST(ManifestShapes, NullIsAbsent) {
  struct Case {
    std::string with_null, without;
  };
  const Case cases[] = {
      {V1(R"({"checkSum": null, "checkSumType": null})"), V1()},
      {V1(R"({"description": null, "diskGroupId": null, "httpHeader": null})"), V1()},
      {V1(R"({"efiBootloaderPath": null, "configdrive": null})"), V1()},
      {V1(R"({"hostname": null, "sshKey": null, "userData": null, "userMetadatas": null})"), V1()},
      {V1(R"({"configdrive": {"enable": null, "hostname": null, "sshKey": null, "userData": null,
            "userMetadatas": null}})"),
       V1(R"({"configdrive": {}})")},
      {V1(R"({"httpHeader": [{"key": "A", "value": null}]})"),
       V1(R"({"httpHeader": [{"key": "A", "value": ""}]})")},
      {V1(R"({"configdrive": {"userMetadatas": [{"key": "k", "value": null}]}})"),
       V1(R"({"configdrive": {"userMetadatas": [{"key": "k"}]}})")},
      {V3(R"({"imageCheckSum": null, "imageCheckSumType": null, "httpHeaders": null,
            "efiBootloaderPath": null, "description": null, "hostname": null, "sshKey": null,
            "configDriveUserData": null, "configDriveMetadata": null})",
          R"({"operatingSystem": null, "storage": null})"),
       V3()},
      {V3("{}", R"({"storage": [{"diskGroupId": null}]})"), V3()},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(json::serialize(ManifestToJson(MustParse(c.with_null))),
              json::serialize(ManifestToJson(MustParse(c.without))))
        << c.with_null;
  }
}

// Empty strings for optional strings mean "not given" too.
TEST(ManifestShapes, EmptyOptionalStringsAreAbsent) {
  Manifest m = MustParse(V1(R"({"checkSum": "", "checkSumType": "", "efiBootloaderPath": "",
      "configdrive": {"enable": true, "hostname": "", "sshKey": "", "userData": ""}})"));
  EXPECT_FALSE(m.checksum);
  EXPECT_EQ(m.efi_bootloader_path, "");
  EXPECT_EQ(m.config_drive.hostname, "");
  EXPECT_EQ(m.config_drive.ssh_key, "");
  EXPECT_FALSE(m.config_drive.user_data);
}

// --- Every failure and its exact message ---------------------------------------------------------

struct Bad {
  std::string body;
  std::string message;
};

void ExpectAll(const std::vector<Bad>& cases) {
  for (const Bad& c : cases) {
    auto m = ParseManifest(c.body);
    if (m.ok()) {
      ADD_FAILURE() << "accepted: " << c.body.substr(0, 300);
      continue;
    }
    EXPECT_EQ(m.status().code(), Code::kInvalid);
    EXPECT_EQ(m.status().message(), c.message) << c.body.substr(0, 300);
    EXPECT_FALSE(m.status().detail().empty());
  }
}

TEST(ManifestErrors, Body) {
  std::string deep_ok = V1(R"({"x": 0})");
  std::string deep_bad = deep_ok;
  // The manifest object is level 1; 31 more arrays reach the limit of 32, one more passes it.
  std::string nest31 = std::string(31, '[') + std::string(31, ']');
  std::string nest32 = std::string(32, '[') + std::string(32, ']');
  deep_ok.replace(deep_ok.find("\"x\":0") + 4, 1, nest31);
  deep_bad.replace(deep_bad.find("\"x\":0") + 4, 1, nest32);
  MustParse(deep_ok);
  ExpectAll({
      {"", "Invalid manifest: body: not valid JSON"},
      {"{", "Invalid manifest: body: not valid JSON"},
      {"URL=https://x", "Invalid manifest: body: not valid JSON"},
      {V1() + " {}", "Invalid manifest: body: not valid JSON"},
      {V1() + ",", "Invalid manifest: body: not valid JSON"},
      {R"({"URL": "https://x/y", "type": "raw",})", "Invalid manifest: body: not valid JSON"},
      {R"({/* c */ "URL": "https://x/y", "type": "raw"})",
       "Invalid manifest: body: not valid JSON"},
      {"{'URL': 'https://x/y'}", "Invalid manifest: body: not valid JSON"},
      {"{\"URL\": \"https://x/\xff\", \"type\": \"raw\"}",
       "Invalid manifest: body: not valid JSON"},
      {R"({"URL": NaN})", "Invalid manifest: body: not valid JSON"},
      {"[]", "Invalid manifest: body: expected a JSON object"},
      {"[" + V1() + "]", "Invalid manifest: body: expected a JSON object"},
      {"\"https://x/y\"", "Invalid manifest: body: expected a JSON object"},
      {"null", "Invalid manifest: body: expected a JSON object"},
      {"42", "Invalid manifest: body: expected a JSON object"},
      {deep_bad, "Invalid manifest: body: nested deeper than 32 levels"},
  });
}

TEST(ManifestErrors, BodyOver1MiB) {
  std::string body = V1();
  body.insert(1, kMaxManifestBytes - body.size(), ' ');  // white space is valid JSON
  ASSERT_EQ(body.size(), kMaxManifestBytes);
  MustParse(body);
  body.insert(1, " ");
  ExpectAll({{body, "Invalid manifest: body: larger than 1 MiB"}});
  // Refused by size before parsing: not even JSON is looked at.
  ExpectAll(
      {{std::string(kMaxManifestBytes + 1, 'x'), "Invalid manifest: body: larger than 1 MiB"}});
}

TEST(ManifestErrors, Url) {
  std::string long_url = "https://example.net/" + std::string(8192, 'a');
  std::string max_url = long_url.substr(0, 8192);
  EXPECT_EQ(MustParse(V1(R"({"URL": ")" + max_url + "\"}")).url, max_url);
  ExpectAll({
      {V1(R"({"URL": "<absent>"})"), "Invalid manifest: URL: missing"},
      {V1(R"({"URL": null})"), "Invalid manifest: URL: missing"},
      {V1(R"({"URL": ""})"), "Invalid manifest: URL: missing"},
      {V1(R"({"URL": "ftp://example.net/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "file:///srv/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "example.net/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "//example.net/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "httpx://example.net/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "http:/example.net/x.raw"})"),
       "Invalid manifest: URL: scheme must be http or https"},
      {V1(R"({"URL": "https://exa mple.net/x.raw"})"),
       "Invalid manifest: URL: contains spaces or control characters"},
      {V1(R"({"URL": "https://example.net/x.raw\r\nX-Injected: 1"})"),
       "Invalid manifest: URL: contains spaces or control characters"},
      {V1(R"({"URL": "https://example.net/x\u0000.raw"})"),
       "Invalid manifest: URL: contains spaces or control characters"},
      {V1(R"({"URL": "https://example.net:99999/x.raw"})"),
       "Invalid manifest: URL: not a valid URL"},
      {V1(R"({"URL": "https://"})"), "Invalid manifest: URL: no host"},
      {V1(R"({"URL": "https:///debian-12.raw"})"), "Invalid manifest: URL: no host"},
      {V1(R"({"URL": "http://?x=1"})"), "Invalid manifest: URL: no host"},
      {V1(R"({"URL": "http://#x"})"), "Invalid manifest: URL: no host"},
      {V1(R"({"URL": "http://user:pw@/x.raw"})"), "Invalid manifest: URL: not a valid URL"},
      {V1(R"({"URL": ")" + long_url.substr(0, 8193) + "\"}"),
       "Invalid manifest: URL: longer than 8192 bytes"},
      {V3(R"({"imageURL": "<absent>"})"), "Invalid manifest: customizations.imageURL: missing"},
      {V3(R"({"imageURL": "ftp://example.net/x.raw"})"),
       "Invalid manifest: customizations.imageURL: scheme must be http or https"},
  });
}

TEST(ManifestUrl, SchemesAndForms) {
  for (const char* url : {"http://example.net/x.raw", "https://example.net/x.raw",
                          "HTTPS://EXAMPLE.NET/X.RAW", "http://127.0.0.1:8080/x?sig=a%2Fb&e=1#f",
                          "http://[::1]:8080/img", "https://user:pa%40ss@example.net/x.raw"}) {
    EXPECT_EQ(MustParse(V1(R"({"URL": ")"s + url + "\"}")).url, url);  // kept as given
  }
}

TEST(ManifestUrl, UserinfoIsMaskedWhenPrinted) {
  Manifest m = MustParse(V1(R"({"URL": "https://login:s3cret@example.net/a/b.raw?x=1"})"));
  EXPECT_EQ(m.url, "https://login:s3cret@example.net/a/b.raw?x=1");  // used as given to download
  std::string printed = json::serialize(ManifestToJson(m));
  EXPECT_EQ(ManifestToJson(m).at("url").as_string(), "https://***@example.net/a/b.raw?***");
  EXPECT_EQ(printed.find("s3cret"), std::string::npos);
  EXPECT_EQ(printed.find("login"), std::string::npos);
  Manifest plain = MustParse(V1());
  EXPECT_EQ(ManifestToJson(plain).at("url").as_string(), kUrl);
}

TEST(ManifestErrors, ImageType) {
  EXPECT_EQ(MustParse(V1(R"({"type": "QCOW2"})")).type, ImageType::kQcow2);
  EXPECT_EQ(MustParse(V1(R"({"type": "Raw"})")).type, ImageType::kRaw);
  EXPECT_EQ(MustParse(V3(R"({"imageType": "qcow2"})")).type, ImageType::kQcow2);
  const std::string kMsg = "Bad format image, expected: qcow2, raw, ova.";
  ExpectAll({
      {V1(R"({"type": "<absent>"})"), kMsg},
      {V1(R"({"type": null})"), kMsg},
      {V1(R"({"type": ""})"), kMsg},
      {V1(R"({"type": "vmdk"})"), kMsg},
      {V1(R"({"type": "qcow"})"), kMsg},
      {V1(R"({"type": " raw"})"), kMsg},
      {V1(R"({"type": "raw\u0000"})"), kMsg},
      {V3(R"({"imageType": "iso"})"), kMsg},
      {V3(R"({"imageType": "<absent>"})"), kMsg},
  });
}

TEST(ManifestChecksum, EveryAlgorithmAndLength) {
  struct Algo {
    const char* name;
    HashAlgo algo;
    size_t digits;
  };
  for (const Algo& a :
       {Algo{"md5", HashAlgo::kMd5, 32}, Algo{"sha1", HashAlgo::kSha1, 40},
        Algo{"sha256", HashAlgo::kSha256, 64}, Algo{"sha512", HashAlgo::kSha512, 128}}) {
    EXPECT_EQ(HashHexLength(a.algo), a.digits);
    EXPECT_EQ(HashAlgoName(a.algo), a.name);
    std::string hex;
    for (size_t i = 0; i < a.digits; ++i) hex += "0123456789abcdef"[i % 16];
    Manifest m =
        MustParse(V1(R"({"checkSum": ")" + hex + R"(", "checkSumType": ")" + a.name + "\"}"));
    ASSERT_TRUE(m.checksum);
    EXPECT_EQ(m.checksum->algo, a.algo);
    EXPECT_EQ(m.checksum->hex, hex);
    // Upper-case digits and type are normalised to lower case.
    std::string upper_hex = hex, upper_name = a.name;
    for (char& c : upper_hex) c = static_cast<char>(std::toupper(c));
    for (char& c : upper_name) c = static_cast<char>(std::toupper(c));
    m = MustParse(V3(R"({"imageCheckSum": ")" + upper_hex + R"(", "imageCheckSumType": ")" +
                     upper_name + "\"}"));
    ASSERT_TRUE(m.checksum);
    EXPECT_EQ(m.checksum->algo, a.algo);
    EXPECT_EQ(m.checksum->hex, hex);
    const std::string msg = "Invalid manifest: checkSum: expected " + std::to_string(a.digits) +
                            " hex digits for " + a.name;
    std::string not_hex = hex;
    not_hex[a.digits / 2] = 'g';
    std::string with_prefix = "0x" + hex.substr(2);
    auto body = [&](const std::string& sum) {
      return V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": ")" + a.name + "\"}");
    };
    ExpectAll({
        {body(hex.substr(1)), msg},
        {body(hex + "0"), msg},
        {body(hex + hex), msg},
        {body("0"), msg},
        {body(not_hex), msg},
        {body(with_prefix), msg},
        {body(" " + hex.substr(1)), msg},
        {body(hex.substr(1) + "\\n"), msg},
        {V3(R"({"imageCheckSum": ")" + hex.substr(1) + R"(", "imageCheckSumType": ")" + a.name +
            "\"}"),
         "Invalid manifest: customizations.imageCheckSum: expected " + std::to_string(a.digits) +
             " hex digits for " + a.name},
    });
  }
}

TEST(ManifestChecksum, PairRuleAndUnknownType) {
  const std::string kPair = "Please provide checkSum AND checkSumType or none of them";
  const std::string kType = "Bad checkSumType, expected: md5, sha1, sha256, sha512.";
  const std::string sum = std::string(64, 'a');
  ExpectAll({
      {V1(R"({"checkSum": ")" + sum + "\"}"), kPair},
      {V1(R"({"checkSumType": "sha256"})"), kPair},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": ""})"), kPair},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": null})"), kPair},
      {V1(R"({"checkSum": "", "checkSumType": "sha256"})"), kPair},
      {V1(R"({"checkSumType": "crc32"})"), kPair},  // the pair rule comes first
      {V3(R"({"imageCheckSum": ")" + sum + "\"}"), kPair},
      {V3(R"({"imageCheckSumType": "md5"})"), kPair},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": "crc32"})"), kType},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": "sha-256"})"), kType},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": "sha384"})"), kType},
      {V1(R"({"checkSum": ")" + sum + R"(", "checkSumType": "sha256 "})"), kType},
      {V3(R"({"imageCheckSum": ")" + sum + R"(", "imageCheckSumType": "xxh64"})"), kType},
  });
  // The type is checked before the digits: a bad type wins over a bad checksum.
  ExpectAll({{V1(R"({"checkSum": "zz", "checkSumType": "crc32"})"), kType}});
}

TEST(ManifestErrors, HeadersV1) {
  Manifest m = MustParse(V1(R"({"httpHeader": [{"key": "Authorization", "value": "Basic x"},
      {"key": "!#$%&'*+-.^_`|~09azAZ", "value": "v\twith tab and \u00e9"}, {"key": "Empty", "value": ""},
      {"key": "Authorization", "value": "twice is allowed"}]})"));
  ASSERT_EQ(m.headers.size(), 4u);
  EXPECT_EQ(m.headers[1].name, "!#$%&'*+-.^_`|~09azAZ");
  EXPECT_EQ(m.headers[1].value, "v\twith tab and \xc3\xa9");
  EXPECT_EQ(m.headers[2].value, "");
  auto headers = [](int n) {
    json::array a;
    for (int i = 0; i < n; ++i)
      a.push_back(json::object{{"key", "X-H" + std::to_string(i)}, {"value", "v"}});
    return json::serialize(a);
  };
  std::string many = headers(65), max = headers(64);
  EXPECT_EQ(MustParse(V1(R"({"httpHeader": )" + max + "}")).headers.size(), 64u);
  ExpectAll({
      {V1(R"({"httpHeader": {"key": "A", "value": "b"}})"),
       "Invalid manifest: httpHeader: expected an array"},
      {V1(R"({"httpHeader": "Authorization: x"})"),
       "Invalid manifest: httpHeader: expected an array"},
      {V1(R"({"httpHeader": ["Authorization: x"]})"),
       "Invalid manifest: httpHeader[0]: expected an object with key and value"},
      {V1(R"({"httpHeader": [{"key": "A", "value": "b"}, null]})"),
       "Invalid manifest: httpHeader[1]: expected an object with key and value"},
      {V1(R"({"httpHeader": [{"value": "b"}]})"), "Invalid manifest: httpHeader[0].key: missing"},
      {V1(R"({"httpHeader": [{"key": null, "value": "b"}]})"),
       "Invalid manifest: httpHeader[0].key: missing"},
      {V1(R"({"httpHeader": [{"key": 1, "value": "b"}]})"),
       "Invalid manifest: httpHeader[0].key: expected a string"},
      {V1(R"({"httpHeader": [{"key": "A", "value": 1}]})"),
       "Invalid manifest: httpHeader[0].value: expected a string"},
      {V1(R"({"httpHeader": [{"key": "A", "value": ["b"]}]})"),
       "Invalid manifest: httpHeader[0].value: expected a string"},
      {V1(R"({"httpHeader": [{"key": "", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "X Token", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "Authorization:", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"x({"httpHeader": [{"key": "A(b)", "value": "b"}]})x"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "X\"Q", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "X-\u00e9", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "X\r\nY", "value": "b"}]})"),
       "Invalid manifest: httpHeader[0]: not a valid header name"},
      {V1(R"({"httpHeader": [{"key": "A", "value": "b"}, {"key": "B", "value": "x\ry"}]})"),
       "Invalid manifest: httpHeader[1]: header value contains CR, LF or NUL"},
      {V1(R"({"httpHeader": [{"key": "A", "value": "x\nX-Injected: 1"}]})"),
       "Invalid manifest: httpHeader[0]: header value contains CR, LF or NUL"},
      {V1(R"({"httpHeader": [{"key": "A", "value": "x\u0000y"}]})"),
       "Invalid manifest: httpHeader[0]: header value contains CR, LF or NUL"},
      {V1(R"({"httpHeader": )" + many + "}"),
       "Invalid manifest: httpHeader[64]: more than 64 headers"},
      // Headers the download controls itself (resume, encoding, framing).
      {V1(R"({"httpHeader": [{"key": "X-A", "value": "b"}, {"key": "Range", "value": "bytes=9-"}]})"),
       "Invalid manifest: httpHeader[1]: Range is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "if-range", "value": "x"}]})"),
       "Invalid manifest: httpHeader[0]: if-range is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "Accept-Encoding", "value": "gzip"}]})"),
       "Invalid manifest: httpHeader[0]: Accept-Encoding is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "HOST", "value": "evil"}]})"),
       "Invalid manifest: httpHeader[0]: HOST is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "Content-Length", "value": "0"}]})"),
       "Invalid manifest: httpHeader[0]: Content-Length is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "Transfer-Encoding", "value": "chunked"}]})"),
       "Invalid manifest: httpHeader[0]: Transfer-Encoding is set by the agent itself"},
      {V1(R"({"httpHeader": [{"key": "Connection", "value": "close"}]})"),
       "Invalid manifest: httpHeader[0]: Connection is set by the agent itself"},
  });
}

TEST(ManifestErrors, HeadersV3) {
  ExpectAll({
      {V3(R"({"httpHeaders": [{"key": "A", "value": "b"}]})"),
       "Invalid manifest: customizations.httpHeaders: expected an object"},
      {V3(R"({"httpHeaders": "A: b"})"),
       "Invalid manifest: customizations.httpHeaders: expected an object"},
      {V3(R"({"httpHeaders": {"X-A": 1}})"),
       "Invalid manifest: customizations.httpHeaders.X-A: expected a string"},
      {V3(R"({"httpHeaders": {"X-A": null}})"),
       "Invalid manifest: customizations.httpHeaders.X-A: expected a string"},
      {V3(R"({"httpHeaders": {"X-A": "b", "X-B": "c\nd"}})"),
       "Invalid manifest: customizations.httpHeaders.X-B: header value contains CR, LF or NUL"},
      {V3(R"({"httpHeaders": {"X-A": "b", "Range": "bytes=0-"}})"),
       "Invalid manifest: customizations.httpHeaders.Range: Range is set by the agent itself"},
      {V3(R"({"httpHeaders": {"X:A": "b"}})"),
       "Invalid manifest: customizations.httpHeaders.X:A: not a valid header name"},
      // A name that is not short printable ASCII is named by its position, never quoted.
      {V3(R"({"httpHeaders": {"X-A": "b", "Bad Name": "c"}})"),
       "Invalid manifest: customizations.httpHeaders[1]: not a valid header name"},
      {V3(R"({"httpHeaders": {"X\r\nInjected": "c"}})"),
       "Invalid manifest: customizations.httpHeaders[0]: not a valid header name"},
      {V3(R"({"httpHeaders": {"": "c"}})"),
       "Invalid manifest: customizations.httpHeaders[0]: not a valid header name"},
      {V3(R"({"httpHeaders": {")" + std::string(65, 'x') + R"(": 1}})"),
       "Invalid manifest: customizations.httpHeaders[0]: expected a string"},
  });
}

TEST(ManifestDiskGroup, Values) {
  struct Good {
    std::string body;
    int id;
  };
  const Good goods[] = {
      {V1(), 1},
      {V1(R"({"diskGroupId": null})"), 1},
      {V1(R"({"diskGroupId": 0})"), 1},
      {V1(R"({"diskGroupId": 1})"), 1},
      {V1(R"({"diskGroupId": 2})"), 2},
      {V1(R"({"diskGroupId": 1000000})"), 1000000},
      {V1(R"({"diskGroupId": 2.0})"), 2},  // an integer, as JSON Schema sees it
      {V1(R"({"diskGroupId": -0.0})"), 1},
      {V1(R"({"diskGroupId": 3e0})"), 3},
      {V3(), 1},
      {V3("{}", R"({"storage": []})"), 1},
      {V3("{}", R"({"storage": [{}]})"), 1},
      {V3("{}", R"({"storage": [{"diskGroupId": 0}]})"), 1},
      {V3("{}", R"({"storage": [{"diskGroupId": 4}]})"), 4},
  };
  for (const Good& g : goods) EXPECT_EQ(MustParse(g.body).disk_group_id, g.id) << g.body;
  ExpectAll({
      {V1(R"({"diskGroupId": -1})"), "Invalid manifest: diskGroupId: must not be negative"},
      {V1(R"({"diskGroupId": -9223372036854775809})"),
       "Invalid manifest: diskGroupId: must not be negative"},
      {V1(R"({"diskGroupId": 1.5})"), "Invalid manifest: diskGroupId: expected an integer"},
      {V1(R"({"diskGroupId": "1"})"), "Invalid manifest: diskGroupId: expected an integer"},
      {V1(R"({"diskGroupId": true})"), "Invalid manifest: diskGroupId: expected an integer"},
      {V1(R"({"diskGroupId": [1]})"), "Invalid manifest: diskGroupId: expected an integer"},
      {V1(R"({"diskGroupId": {}})"), "Invalid manifest: diskGroupId: expected an integer"},
      {V1(R"({"diskGroupId": 1000001})"), "Invalid manifest: diskGroupId: too large"},
      {V1(R"({"diskGroupId": 2147483648})"), "Invalid manifest: diskGroupId: too large"},
      {V1(R"({"diskGroupId": 18446744073709551615})"), "Invalid manifest: diskGroupId: too large"},
      {R"({"URL": "https://x/y", "type": "raw", "diskGroupId": 1e999})",
       "Invalid manifest: diskGroupId: too large"},
      {V3("{}", R"({"storage": {"diskGroupId": 1}})"),
       "Invalid manifest: storage: expected an array"},
      {V3("{}", R"({"storage": [{"diskGroupId": 1}, {"diskGroupId": 2}]})"),
       "Invalid manifest: storage: only one disk group can be given"},
      {V3("{}", R"({"storage": [1]})"), "Invalid manifest: storage[0]: expected an object"},
      {V3("{}", R"({"storage": [null]})"), "Invalid manifest: storage[0]: expected an object"},
      {V3("{}", R"({"storage": [{"diskGroupId": -2}]})"),
       "Invalid manifest: storage[0].diskGroupId: must not be negative"},
      {V3("{}", R"({"storage": [{"diskGroupId": "2"}]})"),
       "Invalid manifest: storage[0].diskGroupId: expected an integer"},
  });
}

TEST(ManifestHostname, Rfc1123) {
  const std::string l63(63, 'a'), l64(64, 'a');
  // 4 labels of 63 + 3 dots = 255; cut to exactly 253 and 254 characters.
  const std::string long_name = l63 + "." + l63 + "." + l63 + "." + l63;
  const std::string n253 = long_name.substr(0, 253), n254 = long_name.substr(0, 254);
  for (const std::string& ok : {"web-1"s, "a"s, "1"s, "123"s, "web1.example.net"s, "A-B.c-D"s,
                                "xn--bcher-kva.example"s, l63, l63 + "." + l63, n253}) {
    EXPECT_TRUE(IsValidHostname(ok)) << ok;
  }
  for (const std::string& bad :
       {""s, l64, l63 + "." + l64, n254, "-web"s, "web-"s, "web.-a"s, "a-.b"s, "web_1"s, "web 1"s,
        "web..net"s, ".web"s, "web."s, "w\xc3\xa9"s, "web/1"s, "web:80"s, "*.example"s, "web\n"s,
        "a\0b"s}) {
    EXPECT_FALSE(IsValidHostname(bad)) << bad;
  }
  EXPECT_EQ(
      MustParse(V1(R"({"configdrive": {"hostname": ")" + n253 + "\"}}")).config_drive.hostname,
      n253);
  const char* kBad = ": not a valid RFC 1123 host name";
  ExpectAll({
      {V1(R"({"configdrive": {"hostname": "web_1"}})"),
       "Invalid manifest: configdrive.hostname"s + kBad},
      {V1(R"({"configdrive": {"hostname": ")" + l64 + "\"}}"),
       "Invalid manifest: configdrive.hostname"s + kBad},
      {V1(R"({"configdrive": {"hostname": ")" + n254 + "\"}}"),
       "Invalid manifest: configdrive.hostname"s + kBad},
      {V1(R"({"configdrive": {"hostname": "-web"}})"),
       "Invalid manifest: configdrive.hostname"s + kBad},
      {V1(R"({"configdrive": {"hostname": "web-"}})"),
       "Invalid manifest: configdrive.hostname"s + kBad},
      {V1(R"({"hostname": "web.example.net."})"), "Invalid manifest: hostname"s + kBad},
      {V3(R"({"hostname": "web_1"})"), "Invalid manifest: customizations.hostname"s + kBad},
  });
}

TEST(ManifestEfiPath, Rules) {
  for (const char* ok : {"\\EFI\\debian\\grubx64.efi", "/EFI/debian/grubx64.efi",
                         "EFI/BOOT/BOOTX64.EFI", "\\EFI/mixed\\shimx64.efi", "\\EFI\\.\\x.efi",
                         "\\EFI\\..x\\a..b.efi", "\\EFI\\...\\x.efi", "\\EFI\\d\xc3\xa9\\x.efi"}) {
    EXPECT_EQ(
        MustParse(V1(json::serialize(json::object{{"efiBootloaderPath", ok}}))).efi_bootloader_path,
        ok);
    EXPECT_EQ(
        MustParse(V3(json::serialize(json::object{{"efiBootloaderPath", ok}}))).efi_bootloader_path,
        ok);
  }
  auto v1 = [](std::string path) {
    return V1(json::serialize(json::object{{"efiBootloaderPath", path}}));
  };
  auto v3 = [](std::string path) {
    return V3(json::serialize(json::object{{"efiBootloaderPath", path}}));
  };
  const std::string kDots = "Invalid manifest: efiBootloaderPath: must not contain '..'";
  const std::string kName = "Invalid manifest: efiBootloaderPath: no file name";
  ExpectAll({
      {v1("\\EFI\\..\\x.efi"), kDots},
      {v1("/EFI/../x.efi"), kDots},
      {v1("\\EFI/../x.efi"), kDots},
      {v1("..\\x.efi"), kDots},
      {v1("../x.efi"), kDots},
      {v1("\\EFI\\.."), kDots},
      {v1("/EFI/.."), kDots},
      {v1(".."), kDots},
      {v3("\\EFI\\..\\..\\x.efi"),
       "Invalid manifest: customizations.efiBootloaderPath: must not contain '..'"},
      {v1("\\EFI\\debian\\"), kName},
      {v1("/EFI/debian/"), kName},
      {v1("\\"), kName},
      {v1("/"), kName},
      {v1("."), kName},
      {v1("\\EFI\\."), kName},
      {v1("\\EFI\\x\x01.efi"), "Invalid manifest: efiBootloaderPath: contains control characters"},
      {v1("\\EFI\\x\n.efi"), "Invalid manifest: efiBootloaderPath: contains control characters"},
      {v1("\\EFI\\" + std::string(509, 'x')),
       "Invalid manifest: efiBootloaderPath: longer than 512 bytes"},
  });
  MustParse(v1("\\EFI\\" + std::string(507, 'x')));  // 512 bytes
}

TEST(ManifestWriteMode, BothShapesElseTheAgentsSetting) {
  const std::pair<const char*, WriteMode> modes[] = {
      {"auto", WriteMode::kAuto}, {"ram", WriteMode::kRam}, {"stream", WriteMode::kStream}};
  for (const auto& [text, mode] : modes) {
    Manifest v1 = MustParse(V1(json::serialize(json::object{{"writeMode", text}})));
    Manifest v3 = MustParse(V3(json::serialize(json::object{{"writeMode", text}})));
    EXPECT_EQ(v1.write_mode, mode);
    EXPECT_EQ(v3.write_mode, mode);
    EXPECT_EQ(json::value_to<std::string>(ManifestToJson(v1).at("writeMode")), text);
  }
  EXPECT_EQ(MustParse(V1()).write_mode, std::nullopt);
  EXPECT_EQ(MustParse(V3(R"({"writeMode": ""})")).write_mode, std::nullopt);
  EXPECT_EQ(MustParse(V1(R"({"verifyWritten": true})")).verify_written, true);
  EXPECT_EQ(MustParse(V3(R"({"verifyWritten": false})")).verify_written, false);
  EXPECT_EQ(MustParse(V1()).verify_written, std::nullopt);
  ExpectAll({
      {V1(R"({"writeMode": "disk"})"), "Invalid manifest: writeMode: must be auto, ram or stream"},
      {V3(R"({"writeMode": "RAM"})"),
       "Invalid manifest: customizations.writeMode: must be auto, ram or stream"},
      {V1(R"({"writeMode": 1})"), "Invalid manifest: writeMode: expected a string"},
      {V1(R"({"verifyWritten": "yes"})"),
       "Invalid manifest: verifyWritten: expected true or false"},
      {V3(R"({"verifyWritten": 1})"),
       "Invalid manifest: customizations.verifyWritten: expected true or false"},
  });
}

TEST(ManifestTorrent, UrlOrMagnetInBothShapes) {
  const std::string magnet = "magnet:?xt=urn:btih:b35b557089042a2f4767d346204671fb235aebd8&dn=x";
  const std::string base32 = "magnet:?dn=x&xt=urn:btih:WNNVK4EJAQVC6R3H2NDCARTR7MRVVPOY";
  EXPECT_EQ(MustParse(V1(R"({"torrent": "https://h.example/i.torrent"})")).torrent,
            "https://h.example/i.torrent");
  EXPECT_EQ(MustParse(V3(json::serialize(json::object{{"torrent", magnet}}))).torrent, magnet);
  EXPECT_EQ(MustParse(V1(json::serialize(json::object{{"torrent", base32}}))).torrent, base32);
  EXPECT_EQ(MustParse(V1()).torrent, "");
  EXPECT_EQ(MustParse(V1(R"({"torrent": ""})")).torrent, "");
  EXPECT_EQ(MustParse(V3(R"({"torrent": null})")).torrent, "");
  // The URL's secrets are never shown; a magnet link has none.
  EXPECT_EQ(ManifestToJson(MustParse(V1(R"({"torrent": "http://u:pw@h.example/i.torrent?s=1"})")))
                .at("torrent"),
            json::value("http://***@h.example/i.torrent?***"));
  EXPECT_EQ(ManifestToJson(MustParse(V3(json::serialize(json::object{{"torrent", magnet}}))))
                .at("torrent"),
            json::value(magnet));
  ExpectAll({
      {V1(R"({"torrent": "ftp://h.example/i.torrent"})"),
       "Invalid manifest: torrent: must be an http or https URL or a magnet link"},
      {V1(R"({"torrent": "/srv/i.torrent"})"),
       "Invalid manifest: torrent: must be an http or https URL or a magnet link"},
      {V3(R"({"torrent": 7})"), "Invalid manifest: customizations.torrent: expected a string"},
      {V1(R"({"torrent": "https:///i.torrent"})"), "Invalid manifest: torrent: no host"},
      {V1(R"({"torrent": "https://h.example/a b.torrent"})"),
       "Invalid manifest: torrent: contains spaces or control characters"},
      {V1(R"({"torrent": "magnet:?dn=image"})"),
       "Invalid manifest: torrent: a magnet link needs xt=urn:btih:"},
      {V1(R"({"torrent": "magnet:?dn=xt=urn:btih:b35b557089042a2f4767d346204671fb235aebd8"})"),
       "Invalid manifest: torrent: a magnet link needs xt=urn:btih:"},
      {V3(R"({"torrent": "magnet:?xt=urn:btih:b35b5570"})"),
       "Invalid manifest: customizations.torrent: the btih must be 40 hex or 32 base32 digits"},
      {V1(R"({"torrent": "magnet:?xt=urn:btih:g35b557089042a2f4767d346204671fb235aebd8"})"),
       "Invalid manifest: torrent: the btih must be 40 hex or 32 base32 digits"},
      {V1(R"({"torrent": "magnet:?xt=urn:btih:b35b557089042a2f4767d346204671fb235aebd8\u0001"})"),
       "Invalid manifest: torrent: contains spaces or control characters"},
      {V1(json::serialize(
           json::object{{"torrent", "magnet:?xt=urn:btih:" + std::string(8200, 'a')}})),
       "Invalid manifest: torrent: longer than 8192 bytes"},
  });
}

TEST(ManifestEfiBootOrder, EveryPolicyInBothShapesElseTheAgentsSetting) {
  const std::pair<const char*, BootOrderPolicy> policies[] = {
      {"first", BootOrderPolicy::kFirst},
      {"after-network", BootOrderPolicy::kAfterNetwork},
      {"bootnext", BootOrderPolicy::kBootNext},
      {"none", BootOrderPolicy::kNone}};
  for (const auto& [text, policy] : policies) {
    EXPECT_EQ(MustParse(V1(json::serialize(json::object{{"efiBootOrder", text}}))).efi_boot_order,
              policy);
    EXPECT_EQ(MustParse(V3(json::serialize(json::object{{"efiBootOrder", text}}))).efi_boot_order,
              policy);
  }
  EXPECT_EQ(MustParse(V1()).efi_boot_order, std::nullopt);
  EXPECT_EQ(MustParse(V1(R"({"efiBootOrder": null})")).efi_boot_order, std::nullopt);
  EXPECT_EQ(MustParse(V3(R"({"efiBootOrder": ""})")).efi_boot_order, std::nullopt);
  ExpectAll({
      {V1(R"({"efiBootOrder": "last"})"),
       "Invalid manifest: efiBootOrder: must be first, after-network, bootnext or none"},
      {V1(R"({"efiBootOrder": "FIRST"})"),
       "Invalid manifest: efiBootOrder: must be first, after-network, bootnext or none"},
      {V1(R"({"efiBootOrder": 1})"), "Invalid manifest: efiBootOrder: expected a string"},
      {V3(R"({"efiBootOrder": "next"})"),
       "Invalid manifest: customizations.efiBootOrder: must be first, after-network, bootnext or "
       "none"},
  });
}

TEST(ManifestErrors, SshKey) {
  Manifest m =
      MustParse(V1(R"({"configdrive": {"sshKey": "ssh-ed25519 A a@b\nssh-rsa B c@d\n"}})"));
  EXPECT_EQ(m.config_drive.ssh_key,
            "ssh-ed25519 A a@b\nssh-rsa B c@d\n");  // several keys, one a line
  ExpectAll({
      {V1(R"({"configdrive": {"sshKey": "ssh-ed25519 A\r\n"}})"),
       "Invalid manifest: configdrive.sshKey: contains CR or NUL"},
      {V1(R"({"sshKey": "ssh-ed25519 A\u0000"})"), "Invalid manifest: sshKey: contains CR or NUL"},
      {V3(json::serialize(json::object{{"sshKey", std::string(16385, 'k')}})),
       "Invalid manifest: customizations.sshKey: longer than 16384 bytes"},
  });
  MustParse(V3(json::serialize(json::object{{"sshKey", std::string(16384, 'k')}})));
}

TEST(ManifestErrors, Metadata) {
  ExpectAll({
      {V1(R"({"configdrive": {"userMetadatas": {"role": "web"}}})"),
       "Invalid manifest: configdrive.userMetadatas: expected an array"},
      {V1(R"({"configdrive": {"userMetadatas": ["role=web"]}})"),
       "Invalid manifest: configdrive.userMetadatas[0]: expected an object with key and value"},
      {V1(R"({"configdrive": {"userMetadatas": [{"value": "web"}]}})"),
       "Invalid manifest: configdrive.userMetadatas[0].key: missing"},
      {V1(R"({"configdrive": {"userMetadatas": [{"key": "", "value": "web"}]}})"),
       "Invalid manifest: configdrive.userMetadatas[0].key: empty key"},
      {V1(R"({"configdrive": {"userMetadatas": [{"key": 1, "value": "web"}]}})"),
       "Invalid manifest: configdrive.userMetadatas[0].key: expected a string"},
      {V1(R"({"configdrive": {"userMetadatas": [{"key": "role", "value": 1}]}})"),
       "Invalid manifest: configdrive.userMetadatas[0].value: expected a string"},
      {V1(R"({"configdrive": {"userMetadatas": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"},
          {"key": "a", "value": "3"}]}})"),
       "Invalid manifest: configdrive.userMetadatas[2].key: duplicate key"},
      {V1(R"({"userMetadatas": [{"key": "a", "value": "1"}, {"key": "a", "value": "1"}]})"),
       "Invalid manifest: userMetadatas[1].key: duplicate key"},
      {V3(R"({"configDriveMetadata": [{"key": "a", "value": "1"}]})"),
       "Invalid manifest: customizations.configDriveMetadata: expected an object"},
      {V3(R"({"configDriveMetadata": {"role": 1}})"),
       "Invalid manifest: customizations.configDriveMetadata.role: expected a string"},
      {V3(R"({"configDriveMetadata": {"a": "1", "": "2"}})"),
       "Invalid manifest: customizations.configDriveMetadata[1]: empty key"},
      {V3(R"({"configDriveMetadata": {"long key with spaces": {}}})"),
       "Invalid manifest: customizations.configDriveMetadata[0]: expected a string"},
  });
  // Keys are case-sensitive; "Role" and "role" are two keys.
  EXPECT_EQ(MustParse(V1(R"({"configdrive": {"userMetadatas": [{"key": "role", "value": "a"},
      {"key": "Role", "value": "b"}]}})"))
                .config_drive.metadata.size(),
            2u);
}

// A JSON object cannot carry a key twice after parsing: like Python's json (which the schema test
// uses), the last value wins. This pins that behaviour for the v3 metadata and headers and for
// the top level.
TEST(ManifestShapes, DuplicateJsonKeysLastWins) {
  Manifest m = MustParse(R"({"operatingSystem": "byoi_64", "customizations": {
      "imageURL": "https://a.example/1.raw", "imageType": "raw",
      "configDriveMetadata": {"role": "db", "env": "x", "role": "web"},
      "httpHeaders": {"X-A": "1", "X-A": "2"}, "imageURL": "https://b.example/2.raw"}})");
  EXPECT_EQ(m.url, "https://b.example/2.raw");
  ASSERT_EQ(m.config_drive.metadata.size(), 2u);
  std::map<std::string, std::string> meta(m.config_drive.metadata.begin(),
                                          m.config_drive.metadata.end());
  EXPECT_EQ(meta["role"], "web");
  ASSERT_EQ(m.headers.size(), 1u);
  EXPECT_EQ(m.headers[0].value, "2");
  EXPECT_EQ(
      MustParse(R"({"URL": "ftp://x/1", "type": "iso", "URL": "http://x/2", "type": "raw"})").url,
      "http://x/2");
}

// Every field given a JSON type it cannot have: "<field>: expected ...".
TEST(ManifestErrors, WrongJsonTypes) {
  struct Field {
    std::string path;  // how the message names it
    std::string kind;  // "string" "bool" "object" "array" "integer"
    std::function<std::string(const std::string& value)> body;
  };
  auto v1 = [](std::string key) {
    return [key](const std::string& v) { return V1("{\"" + key + "\": " + v + "}"); };
  };
  auto v1cd = [](std::string key) {
    return [key](const std::string& v) {
      return V1("{\"configdrive\": {\"" + key + "\": " + v + "}}");
    };
  };
  auto v3c = [](std::string key) {
    return [key](const std::string& v) { return V3("{\"" + key + "\": " + v + "}"); };
  };
  auto v3 = [](std::string key) {
    return [key](const std::string& v) { return V3("{}", "{\"" + key + "\": " + v + "}"); };
  };
  const std::vector<Field> fields = {
      {"URL", "string", v1("URL")},
      {"type", "string", v1("type")},
      {"checkSum", "string", v1("checkSum")},
      {"checkSumType", "string", v1("checkSumType")},
      {"description", "string", v1("description")},
      {"diskGroupId", "integer", v1("diskGroupId")},
      {"httpHeader", "array", v1("httpHeader")},
      {"httpHeader[0].key", "string",
       [](const std::string& v) {
         return V1(R"({"httpHeader": [{"key": )" + v + R"(, "value": "b"}]})");
       }},
      {"httpHeader[0].value", "string",
       [](const std::string& v) {
         return V1(R"({"httpHeader": [{"key": "A", "value": )" + v + "}]}");
       }},
      {"efiBootloaderPath", "string", v1("efiBootloaderPath")},
      {"configdrive", "object", v1("configdrive")},
      {"configdrive.enable", "bool", v1cd("enable")},
      {"configdrive.hostname", "string", v1cd("hostname")},
      {"configdrive.sshKey", "string", v1cd("sshKey")},
      {"configdrive.userData", "string", v1cd("userData")},
      {"configdrive.userMetadatas", "array", v1cd("userMetadatas")},
      {"configdrive.userMetadatas[0].key", "string",
       [](const std::string& v) {
         return V1(R"({"configdrive": {"userMetadatas": [{"key": )" + v + R"(, "value": "b"}]}})");
       }},
      {"configdrive.userMetadatas[0].value", "string",
       [](const std::string& v) {
         return V1(R"({"configdrive": {"userMetadatas": [{"key": "a", "value": )" + v + "}]}}");
       }},
      {"hostname", "string", v1("hostname")},
      {"sshKey", "string", v1("sshKey")},
      {"userData", "string", v1("userData")},
      {"userMetadatas", "array", v1("userMetadatas")},
      {"operatingSystem", "string", v3("operatingSystem")},
      {"customizations", "object", v3("customizations")},
      {"customizations.imageURL", "string", v3c("imageURL")},
      {"customizations.imageType", "string", v3c("imageType")},
      {"customizations.imageCheckSum", "string", v3c("imageCheckSum")},
      {"customizations.imageCheckSumType", "string", v3c("imageCheckSumType")},
      {"customizations.httpHeaders", "object", v3c("httpHeaders")},
      {"customizations.httpHeaders.X-A", "string",
       [](const std::string& v) { return V3(R"({"httpHeaders": {"X-A": )" + v + "}}"); }},
      {"customizations.efiBootloaderPath", "string", v3c("efiBootloaderPath")},
      {"customizations.description", "string", v3c("description")},
      {"customizations.hostname", "string", v3c("hostname")},
      {"customizations.sshKey", "string", v3c("sshKey")},
      {"customizations.configDriveUserData", "string", v3c("configDriveUserData")},
      {"customizations.configDriveMetadata", "object", v3c("configDriveMetadata")},
      {"customizations.configDriveMetadata.role", "string",
       [](const std::string& v) { return V3(R"({"configDriveMetadata": {"role": )" + v + "}}"); }},
      {"storage", "array", v3("storage")},
      {"storage[0]", "object",
       [](const std::string& v) { return V3("{}", R"({"storage": [)" + v + "]}"); }},
      {"storage[0].diskGroupId", "integer",
       [](const std::string& v) {
         return V3("{}", R"({"storage": [{"diskGroupId": )" + v + "}]}");
       }},
  };
  const std::map<std::string, std::string> expected = {
      {"string", "expected a string"},    {"bool", "expected true or false"},
      {"object", "expected an object"},   {"array", "expected an array"},
      {"integer", "expected an integer"},
  };
  const std::map<std::string, std::string> samples = {
      {"string", "\"s\""}, {"bool", "true"}, {"object", "{}"}, {"array", "[]"}, {"integer", "7"},
  };
  for (const Field& f : fields) {
    std::string reason = expected.at(f.kind);
    // Items of arrays and of header/metadata lists say what they hold.
    if (f.path == "storage[0]") reason = "expected an object";
    std::vector<Bad> cases;
    for (const auto& [kind, sample] : samples) {
      if (kind == f.kind) continue;
      if (f.kind == "integer" && kind == "bool") continue;  // covered below
      cases.push_back({f.body(sample), "Invalid manifest: " + f.path + ": " + reason});
    }
    cases.push_back({f.body(f.kind == "integer" ? "\"7\"" : "1.5"),
                     "Invalid manifest: " + f.path + ": " + reason});
    if (f.kind != "bool")
      cases.push_back({f.body("false"), "Invalid manifest: " + f.path + ": " + reason});
    SCOPED_TRACE(f.path);
    ExpectAll(cases);
  }
}

TEST(ManifestErrors, V3Specific) {
  ExpectAll({
      {V3("{}", R"({"operatingSystem": "debian12_64"})"),
       "Invalid manifest: operatingSystem: expected byoi_64"},
      {V3("{}", R"({"operatingSystem": "BYOI_64"})"),
       "Invalid manifest: operatingSystem: expected byoi_64"},
      {R"({"operatingSystem": "byoi_64"})", "Invalid manifest: customizations: missing"},
      {R"({"storage": [{"diskGroupId": 1}]})", "Invalid manifest: customizations: missing"},
      {R"({"operatingSystem": "byoi_64", "customizations": null})",
       "Invalid manifest: customizations: missing"},
      {R"({"customizations": {}})", "Invalid manifest: customizations.imageURL: missing"},
  });
  // operatingSystem may be left out: customizations alone make a v3 body.
  EXPECT_EQ(MustParse(V3("{}", R"({"operatingSystem": "<absent>"})")).shape, Manifest::Shape::kV3);
}

// --- When the config drive is written
// -------------------------------------------------------------

TEST(ManifestConfigDrive, V1EnableRules) {
  struct Case {
    std::string body;
    bool enabled;
  };
  const Case cases[] = {
      {V1(), false},
      {V1(R"({"configdrive": {}})"), false},
      {V1(R"({"configdrive": {"enable": false, "hostname": "web-1", "userData": "x"}})"), false},
      {V1(R"({"configdrive": {"enable": true}})"), true},
      {V1(R"({"configdrive": {"hostname": "web-1"}})"), false},  // only `enable` decides
      {V1(R"({"configdrive": {"enable": true, "hostname": "web-1"}})"), true},
      // The oldest flat form has no `enable`: any config-drive field asks for one.
      {V1(R"({"hostname": "web-1"})"), true},
      {V1(R"({"sshKey": "ssh-ed25519 A"})"), true},
      {V1(R"({"userData": "#cloud-config\n"})"), true},
      {V1(R"({"userMetadatas": [{"key": "a", "value": "b"}]})"), true},
      {V1(R"({"userMetadatas": []})"), false},
      {V1(R"({"hostname": "", "sshKey": "", "userData": ""})"), false},
      // A configdrive object wins over flat fields, which are then unknown members.
      {V1(R"({"configdrive": {"enable": false}, "hostname": "web-1"})"), false},
  };
  for (const Case& c : cases)
    EXPECT_EQ(MustParse(c.body).config_drive.enabled, c.enabled) << c.body;
  // The fields of a disabled drive are still validated and kept.
  Manifest m = MustParse(V1(R"({"configdrive": {"enable": false, "hostname": "web-1"}})"));
  EXPECT_EQ(m.config_drive.hostname, "web-1");
  ExpectAll({{V1(R"({"configdrive": {"enable": false, "hostname": "web_1"}})"),
              "Invalid manifest: configdrive.hostname: not a valid RFC 1123 host name"},
             {V1(R"({"configdrive": {"enable": "true"}})"),
              "Invalid manifest: configdrive.enable: expected true or false"},
             {V1(R"({"configdrive": {"enable": 1}})"),
              "Invalid manifest: configdrive.enable: expected true or false"}});
  // The flat fields next to a configdrive object are ignored, even when invalid.
  EXPECT_EQ(MustParse(V1(R"({"configdrive": {"enable": true}, "hostname": "web_1"})"))
                .config_drive.hostname,
            "");
}

TEST(ManifestConfigDrive, V3EnableRules) {
  struct Case {
    std::string customizations;
    bool enabled;
  };
  const Case cases[] = {
      {"{}", false},
      {R"({"hostname": "web-1"})", true},
      {R"({"sshKey": "ssh-ed25519 A"})", true},
      {R"({"configDriveUserData": "#cloud-config\n"})", true},
      {R"({"configDriveMetadata": {"role": "web"}})", true},
      {R"({"configDriveMetadata": {}})", false},
      {R"({"hostname": "", "sshKey": "", "configDriveUserData": ""})", false},
      {R"({"efiBootloaderPath": "\\EFI\\x.efi", "httpHeaders": {"A": "b"}})", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(MustParse(V3(c.customizations)).config_drive.enabled, c.enabled) << c.customizations;
  }
}

// --- User data: plain text, or strictly valid base64 of text or gzip --------------------------

// A gzip member of "#cloud-config\n" (mtime 0), so that its bytes are fixed.
const std::string kGzip(
    "\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x53\x4e\xce\xc9\x2f\x4d\xd1\x4d\xce\xcf\x4b\xcb\x4c"
    "\xe7\x02\x00\x05\x56\xb3\xb8\x0e\x00\x00\x00",
    34);

TEST(UserData, DecodesStrictBase64OfText) {
  const std::string texts[] = {
      "#cloud-config\npackages: [nginx]\n",
      "#!/bin/sh\necho ok\r\n",
      "f",
      "fo",
      "foo",
      "foob",                                       // every padding length
      "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80",  // 2-, 3- and 4-byte UTF-8
      "tab\tvt\vff\fcr\rlf\n",                      // white-space controls are text
      std::string(100000, 'x') + "\n",
  };
  for (const std::string& text : texts) {
    auto d = DecodeUserData(Base64(text));
    ASSERT_TRUE(d) << Base64(text).substr(0, 80);
    EXPECT_EQ(d->first, text);
    EXPECT_EQ(d->second, UserDataSource::kBase64Text);
  }
  // Pinned examples, independent of the encoder above.
  EXPECT_EQ(DecodeUserData("I2Nsb3VkLWNvbmZpZwo=")->first, "#cloud-config\n");
  EXPECT_EQ(DecodeUserData("Zg==")->first, "f");
  EXPECT_EQ(DecodeUserData("Zm8=")->first, "fo");
  EXPECT_EQ(DecodeUserData("Zm9v")->first, "foo");
  EXPECT_EQ(DecodeUserData("fn5+")->first, "~~~");  // the last two letters of the alphabet
  EXPECT_EQ(DecodeUserData("Pz8/")->first, "???");
}

TEST(UserData, DecodesStrictBase64OfGzip) {
  auto d = DecodeUserData(Base64(kGzip));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->first, kGzip);
  EXPECT_EQ(d->second, UserDataSource::kBase64Gzip);
  EXPECT_EQ(Base64(kGzip), "H4sIAAAAAAAC/1NOzskvTdFNzs9Ly0znAgAFVrO4DgAAAA==");
}

TEST(UserData, KeepsEverythingElseAsGiven) {
  const std::string kept[] = {
      // Plain text, including the usual user data forms.
      "#cloud-config\npackages: [nginx]\n",
      "#!/bin/bash\n",
      "",
      "x",
      // Words that merely look like base64: right alphabet and length, but the bytes they decode
      // to are not text (continuation bytes, NUL or other controls).
      "root",
      "abcd",
      "test",
      "AAAA",
      "ABCD",
      "BBBB",
      "hello123",
      "password",
      "true",
      "passw0rdpassw0rd",
      "rootroot",
      // Padding that is not canonical: non-zero pad bits, missing, extra or misplaced '='.
      "Zh==",
      "Zm9=",
      "Zg",
      "Zg=",
      "Zm8",
      "Zg===",
      "Z===",
      "====",
      "=Zg=",
      "Zg==Zg==",
      "Zm8=Zm9v",
      // White space or line breaks inside or around (as `base64` wraps and ends its output).
      "Zm9v\n",
      " Zm9v",
      "Zm9v Zm9v",
      "Zm9v\nZm9v",
      "Zm9v\r\nZm9v",
      "Zm9v\tYmFy",
      "I2Nsb3VkLWNvbmZpZwo=\n",
      // The URL-safe alphabet is not base64 here.
      "-_-_",
      "Zm9v_w==",
  };
  for (const std::string& text : kept) EXPECT_FALSE(DecodeUserData(text)) << text;
  // Base64 of bytes that are neither text nor gzip.
  const std::string binary[] = {
      "\xff\xfe\x00\x01"s, "\x00"s,         "abc\x00"s,
      "\x1b[1mbold"s,      "del\x7f"s,      "\xc0\xaf"s,
      "\xe0\x80\x80"s,     "\xed\xa0\x80"s, "\xf4\x90\x80\x80"s,
      "\xe2\x9c"s,         "\x80text"s,     "\xf8\x88\x80\x80\x80"s,
      "\x1f\x8b"s,         "\x1f\x8b\x09"s, "PK\x03\x04\x14\x00"s,
  };
  for (const std::string& bytes : binary) {
    EXPECT_FALSE(DecodeUserData(Base64(bytes))) << Base64(bytes);
  }
}

TEST(UserData, InManifests) {
  Manifest m =
      MustParse(V1(R"({"configdrive": {"enable": true, "userData": "I2Nsb3VkLWNvbmZpZwo="}})"));
  EXPECT_EQ(m.config_drive.user_data, "#cloud-config\n");
  EXPECT_EQ(m.config_drive.user_data_source, UserDataSource::kBase64Text);
  m = MustParse(
      V3(R"({"configDriveUserData": "H4sIAAAAAAAC/1NOzskvTdFNzs9Ly0znAgAFVrO4DgAAAA=="})"));
  EXPECT_EQ(m.config_drive.user_data, kGzip);
  EXPECT_EQ(m.config_drive.user_data_source, UserDataSource::kBase64Gzip);
  // Base64 of binary data is kept as the base64 text itself.
  m = MustParse(V1(R"({"userData": "//79AA=="})"));
  EXPECT_EQ(m.config_drive.user_data, "//79AA==");
  EXPECT_EQ(m.config_drive.user_data_source, UserDataSource::kText);
  m = MustParse(V1(R"({"userData": "root"})"));
  EXPECT_EQ(m.config_drive.user_data, "root");
  EXPECT_EQ(m.config_drive.user_data_source, UserDataSource::kText);
  // Any bytes JSON can carry are kept, NUL included.
  m = MustParse(V1(R"({"userData": "a\u0000b\u00ff"})"));
  EXPECT_EQ(m.config_drive.user_data, "a\0b\xc3\xbf"s);
}

// --- The normalised form that `validate` prints -----------------------------------------------

TEST(ManifestJson, DesignV1) {
  json::value expected = json::parse(R"({"shape": "byoi-v1",
    "url": "https://example.net/debian-12.qcow2", "type": "qcow2", "checkSumType": "sha256",
    "checkSum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "description": "debian 12", "diskGroupId": 1,
    "httpHeaders": [{"name": "Authorization", "value": "***"}], "efiBootloaderPath": null,
    "efiBootOrder": null, "writeMode": null, "verifyWritten": null, "torrent": null,
    "configDrive": {"enabled": true, "hostname": "web-1", "sshKey": "ssh-ed25519 AAAAC3 me@host",
      "userData": {"bytes": 32, "decodedFrom": "text"}, "metadata": {"role": "web", "env": "prod"}}})");
  json::object got = ManifestToJson(MustParse(kDesignV1));
  EXPECT_EQ(json::value(got), expected) << json::serialize(got);
  EXPECT_EQ(json::serialize(got).find("bG9naW46"), std::string::npos);  // no header value
}

TEST(ManifestJson, DesignV3) {
  json::value expected = json::parse(R"({"shape": "reinstall-v3",
    "url": "https://example.net/debian-12.raw", "type": "raw", "checkSumType": "sha512",
    "checkSum": "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "description": "", "diskGroupId": 2,
    "httpHeaders": [{"name": "Authorization", "value": "***"}, {"name": "X-Trace", "value": "***"}],
    "efiBootloaderPath": "\\efi\\debian\\grubx64.efi", "efiBootOrder": null,
    "writeMode": null, "verifyWritten": null, "torrent": null,
    "configDrive": {"enabled": true, "hostname": "web-1", "sshKey": "ssh-ed25519 AAAAC3 me@host",
      "userData": {"bytes": 14, "decodedFrom": "base64 text"}, "metadata": {"role": "web"}}})");
  json::object got = ManifestToJson(MustParse(kDesignV3));
  EXPECT_EQ(json::value(got), expected) << json::serialize(got);
}

TEST(ManifestJson, Minimal) {
  json::value expected = json::parse(R"({"shape": "byoi-v1",
    "url": "https://example.net/debian-12.raw", "type": "raw", "checkSumType": null,
    "checkSum": null, "description": "", "diskGroupId": 1, "httpHeaders": [],
    "efiBootloaderPath": null, "efiBootOrder": null, "writeMode": null, "verifyWritten": null, "torrent": null,
    "configDrive": {"enabled": false, "hostname": "", "sshKey": "",
      "userData": null, "metadata": {}}})");
  EXPECT_EQ(json::value(ManifestToJson(MustParse(V1()))), expected);
  json::object gz = ManifestToJson(MustParse(
      V3(R"({"configDriveUserData": "H4sIAAAAAAAC/1NOzskvTdFNzs9Ly0znAgAFVrO4DgAAAA=="})")));
  EXPECT_EQ(gz.at("configDrive").at("userData"),
            json::parse(R"({"bytes": 34, "decodedFrom": "base64 gzip"})"));
}

// The details carry the offending value quoted and cut short, never a megabyte of it.
TEST(ManifestErrors, DetailsAreBounded) {
  std::string huge(500000, 'q');
  for (const std::string& body : {V1(R"({"type": ")" + huge + "\"}"),
                                  V1(R"({"checkSum": "aa", "checkSumType": ")" + huge + "\"}"),
                                  V3(R"({"httpHeaders": {" )" + huge + R"(": "x"}})"),
                                  V3(R"({"configDriveMetadata": {")" + huge + R"(": 1}})")}) {
    auto m = ParseManifest(body);
    ASSERT_FALSE(m.ok());
    EXPECT_LT(m.status().message().size(), 200u) << m.status().message().substr(0, 200);
    EXPECT_LT(m.status().detail().size(), 200u) << m.status().detail().substr(0, 200);
  }
  auto m = ParseManifest(V1(R"({"type": "vm\ndk"})"));
  EXPECT_EQ(m.status().detail(), "image type 'vm?dk'");
  m = ParseManifest("{");
  EXPECT_TRUE(m.status().detail().starts_with("body: not valid JSON: ")) << m.status().detail();
}

TEST(ManifestNames, Enums) {
  EXPECT_EQ(ImageTypeName(ImageType::kQcow2), "qcow2");
  EXPECT_EQ(ImageTypeName(ImageType::kRaw), "raw");
}

// --- The examples in proto/examples, which tests/unit/test_proto.py also checks against the schema
// and the binary: here they run through the parser itself (and so under the sanitizers).

std::vector<std::filesystem::path> Files(const std::string& dir, std::string_view ext) {
  std::vector<std::filesystem::path> out;
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(BYOI_SOURCE_DIR) + "/" + dir)) {
    if (e.path().extension() == ext) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string Slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ManifestExamples, ValidOnesGiveTheirNormalisedForm) {
  auto files = Files("proto/examples/manifest/valid", ".json");
  ASSERT_GE(files.size(), 20u);
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    Manifest m = MustParse(Slurp(path));
    auto out = path;
    out.replace_extension(".out");
    EXPECT_EQ(json::value(ManifestToJson(m)), json::parse(Slurp(out)));
  }
}

TEST(ManifestExamples, InvalidOnesGiveTheirExactMessage) {
  auto files = Files("proto/examples/manifest/invalid", ".json");
  ASSERT_GE(files.size(), 50u);
  for (const auto& path : files) {
    auto expect = path;
    expect.replace_extension(".expect");
    std::string message = Slurp(expect);
    ASSERT_TRUE(message.ends_with("\n")) << expect;
    message.pop_back();
    ExpectAll({{Slurp(path), message}});
  }
}

// --- Cost ---------------------------------------------------------------------------------------

struct CostCase {
  std::string shape;
  std::string body;
  std::string outcome;  // "" when the body is valid, else the end of the error message
};

// The bodies that cost the validator most for their size, each just under `size` bytes (at most
// the 1 MiB limit): many members (metadata, headers, unknown keys; distinct or repeated), deep
// nesting, long strings.
std::vector<CostCase> WorstBodies(size_t size) {
  const size_t kBudget = size - 4096;  // room for the fixed members
  auto repeat = [&](const std::function<std::string(size_t)>& item, std::string_view sep) {
    std::string out;
    for (size_t i = 0; out.size() < kBudget; ++i) {
      if (i) out += sep;
      out += item(i);
    }
    return out;
  };
  auto key = [](size_t i) { return "k" + std::to_string(i); };
  const std::string url(kUrl);
  auto v3 = [&](const std::string& customizations, std::string_view storage = "[]") {
    return R"({"operatingSystem": "byoi_64", "storage": )" + std::string(storage) +
           R"(, "customizations": {"imageURL": ")" + url + R"(", "imageType": "raw", )" +
           customizations + "}}";
  };
  auto v1 = [&](const std::string& members) {
    return R"({"URL": ")" + url + R"(", "type": "raw", )" + members + "}";
  };
  const std::string metadata = R"("configDriveMetadata": {)" +
                               repeat([&](size_t i) { return "\"" + key(i) + "\":\"\""; }, ",") +
                               "}";
  const std::string user_metadatas =
      R"("configdrive": {"enable": true, "userMetadatas": [)" +
      repeat([&](size_t i) { return R"({"key":")" + key(i) + "\"}"; }, ",");
  const std::string longest(kBudget, 'a');
  return {
      {"v3 metadata, distinct keys", v3(metadata), ""},
      {"v3 metadata, distinct keys, then a bad storage", v3(metadata, R"([{"diskGroupId": -1}])"),
       "storage[0].diskGroupId: must not be negative"},
      {"v3 metadata, one key repeated",
       v3(R"("configDriveMetadata": {)" +
          repeat([](size_t) { return std::string(R"("a":"")"); }, ",") + "}"),
       ""},
      {"v1 userMetadatas, distinct keys", v1(user_metadatas + "]}"), ""},
      {"v1 userMetadatas, distinct keys, the last one a duplicate",
       v1(user_metadatas + R"(,{"key":"k0"}]})"), "].key: duplicate key"},
      {"v3 headers, distinct names",
       v3(R"("httpHeaders": {)" +
          repeat([&](size_t i) { return "\"X-" + key(i) + "\":\"v\""; }, ",") + "}"),
       "customizations.httpHeaders.X-k64: more than 64 headers"},
      {"v1 headers",
       v1(R"("httpHeader": [)" +
          repeat([&](size_t i) { return R"({"key":"X-)" + key(i) + R"(","value":"v"})"; }, ",") +
          "]"),
       "httpHeader[64]: more than 64 headers"},
      {"unknown top-level keys", v1(repeat([&](size_t i) { return "\"" + key(i) + "\":0"; }, ",")),
       ""},
      {"one unknown top-level key repeated",
       v1(repeat([](size_t) { return std::string(R"("x":0)"); }, ",")), ""},
      {"arrays nested 31 deep, many times",
       v1(R"("x": [)" +
          repeat([](size_t) { return std::string(30, '[') + std::string(30, ']'); }, ",") + "]"),
       ""},
      {"a long array of numbers",
       v1(R"("x": [)" + repeat([](size_t) { return std::string("0"); }, ",") + "]"), ""},
      {"a long description", v1(R"("description": ")" + longest + "\""), ""},
      {"a long hostname", v1(R"("configdrive": {"hostname": ")" + longest + "\"}"),
       "configdrive.hostname: not a valid RFC 1123 host name"},
      {"long user data, strict base64",
       v1(R"("configdrive": {"userData": ")" + std::string(kBudget / 4 * 4, 'Q') + "\"}"), ""},
      {"a long metadata value", v3(R"("configDriveMetadata": {"k": ")" + longest + "\"}"), ""},
      {"a long string of escapes",
       v1(R"("description": ")" + repeat([](size_t) { return std::string(R"(\u00e9)"); }, "") +
          "\""),
       ""},
  };
}

// The CPU time this thread has used: what the parser costs, whatever else the machine runs (a
// wall clock on a loaded 2-core machine triples the same work).
std::chrono::nanoseconds ThreadCpuTime() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Parses `c` once, checks the outcome the case expects and returns the CPU time it took.
std::chrono::nanoseconds ParseTime(const CostCase& c) {
  const auto start = ThreadCpuTime();
  Result<Manifest> m = ParseManifest(c.body);
  const auto took = ThreadCpuTime() - start;
  if (c.outcome.empty()) {
    EXPECT_TRUE(m.ok()) << c.shape << ": " << m.status().ToString();
  } else {
    EXPECT_TRUE(!m.ok() && m.status().message().ends_with(c.outcome))
        << c.shape << ": " << (m.ok() ? "valid" : m.status().message());
  }
  return took;
}

// Validation is linear in the body's size whatever its shape: sixteen times the body costs less
// than 48 times as much (a quadratic cost is 256 times), unless the whole body takes under 100 ms
// of CPU. The duplicate-key check this replaced took 11 s on the first shape; a 1 MiB body
// validates in 5-80 ms here, and a sanitized debug build runs the same code up to 40 times slower,
// so no one bound in milliseconds holds for every build. The slack over 16 is for caches: under
// ASan the 1 MiB body's nodes outgrow them and a linear pass costs up to twice as much per byte.
// The two sizes are parsed in turn and the best of five of each is kept, so a neighbour that
// loads the machine for a few seconds weighs on both (parsed one size after the other, a loaded
// CI machine once took 1019 ms for the 1 MiB body that takes 604 ms idle, against 126 ms for the
// quarter). Measured under the agent's heap policy: with glibc's defaults a long array grows into
// fresh mappings, whose page faults made the 1 MiB array of numbers cost 42 times the quarter one.
TEST(ManifestCost, AnyOneMiBBodyValidatesInLinearTime) {
  SetHeapPolicy();
  const std::vector<CostCase> full = WorstBodies(kMaxManifestBytes);
  const std::vector<CostCase> small = WorstBodies(kMaxManifestBytes / 16);
  ASSERT_EQ(full.size(), small.size());
  for (size_t i = 0; i < full.size(); ++i) {
    const CostCase& c = full[i];
    ASSERT_LE(c.body.size(), kMaxManifestBytes) << c.shape;
    ASSERT_GT(c.body.size(), kMaxManifestBytes - 8192) << c.shape;
    auto best = std::chrono::nanoseconds::max();
    auto best_small = best;
    for (int run = 0; run < 5; ++run) {
      best = std::min(best, ParseTime(c));
      best_small = std::min(best_small, ParseTime(small[i]));
    }
    if (best < std::chrono::milliseconds(100)) continue;
    EXPECT_LT(best, 48 * best_small)
        << c.shape << ": " << std::chrono::duration_cast<std::chrono::milliseconds>(best).count()
        << " ms for " << c.body.size() << " bytes, "
        << std::chrono::duration_cast<std::chrono::microseconds>(best_small).count() << " us for "
        << small[i].body.size();
  }
}

}  // namespace
}  // namespace byoi
