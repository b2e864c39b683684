// The job manifest: what to install and how (docs/manifest.md).
//
// Two shapes arrive from outside — OVHcloud's BYOI v1 body (with nested `configdrive`, or the
// oldest flat form) and the reinstall v3 body (`customizations` + `storage`) — and are normalised
// into one `Manifest`. Parsing is defensive: the body is untrusted, bounded to 1 MiB and 32 levels
// of nesting, every field is type-checked, and every failure carries the exact catalogue message of
// docs/status.md.
#pragma once

#include <boost/json/fwd.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/boot/boot_entry.hpp"     // BootOrderPolicy
#include "agent/boot/configdrive.hpp"    // ConfigDriveSpec
#include "agent/fetch/hasher.hpp"        // HashAlgo
#include "agent/fetch/http_headers.hpp"  // HttpHeader
#include "agent/image/format.hpp"        // ImageType
#include "agent/job/job_options.hpp"     // WriteMode

namespace byoi {

inline constexpr size_t kMaxManifestBytes = 1 << 20;

struct Checksum {
  HashAlgo algo;
  std::string hex;  // lower case, HashHexLength(algo) digits
};

struct Manifest {
  enum class Shape { kV1, kV3 };
  Shape shape = Shape::kV1;
  std::string url;  // http or https, as given (may carry userinfo: a secret)
  ImageType type = ImageType::kRaw;
  std::optional<Checksum> checksum;
  std::string description;
  int disk_group_id = 1;  // >= 1; 0 or absent in the body means 1
  std::vector<HttpHeader> headers;
  std::string
      efi_bootloader_path;  // as given (backslashes or slashes, no ".."), empty if not given
  // efiBootOrder: first, after-network, bootnext or none (docs/boot.md); overrides the agent's
  // --efi-boot-order for this job. Unset if not given.
  std::optional<BootOrderPolicy> efi_boot_order;
  // writeMode and verifyWritten (docs/manifest.md): how this job writes, over the agent's
  // --write-mode and --verify-written. Unset if not given.
  std::optional<WriteMode> write_mode;
  std::optional<bool> verify_written;
  // torrent (ours, docs/manifest.md): the image's .torrent, an http(s) URL fetched like the
  // image (may carry userinfo: a secret), or a magnet link with a btih; empty if not given. The
  // image is then downloaded through the swarm, `url` being its web seed.
  std::string torrent;
  ConfigDriveSpec config_drive;
};

// Parses and validates a manifest body. On failure the Status has code kInvalid and `message` is
// the catalogue sentence (`Invalid manifest: <field>: <reason>` unless a more specific one
// applies); `detail` repeats the field and reason, with the offending value quoted and cut short.
// Normalisation: a null member is an absent one, and so is an empty string for the optional
// strings (checksum and type, hostname, sshKey, user data, efiBootloaderPath, efiBootOrder);
// unknown members are ignored; the body is v3 when it has a non-null `customizations`,
// `operatingSystem` or `storage`, v1 otherwise; diskGroupId 0 or absent is 1; checksum and types
// are lower-cased.
Result<Manifest> ParseManifest(std::string_view body);

// The normalised manifest as JSON, for `validate` and the logs: header values, URL credentials, the
// URL's query and user data are never included (header values, userinfo and query shown as "***",
// see msg::ShownUrl; user data by size and source only).
boost::json::object ManifestToJson(const Manifest& manifest);

// The user-data decoding rule, exposed for tests: returns the decoded bytes when `text` is strictly
// valid base64 (RFC 4648 alphabet, no white space, canonical padding with zero pad bits) whose
// decoding is gzip data (1f 8b 08) or UTF-8 text (no control characters but HT LF VT FF CR);
// nullopt when `text` is to be used as given.
std::optional<std::pair<std::string, UserDataSource>> DecodeUserData(std::string_view text);

// The image URL rule of docs/manifest.md (http or https, a host, at most 8192 bytes, no spaces
// or control characters); on failure `Invalid manifest: <field>: <reason>`, as for the URL member.
Status ValidateHttpUrl(const std::string& url, std::string_view field);

// RFC 1123 host name: labels of letters, digits and hyphens (not at either end), 1-63 characters
// each, 253 in all.
bool IsValidHostname(std::string_view name);

}  // namespace byoi
