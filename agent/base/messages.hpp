// The catalogue of user-facing error messages (docs/status.md), in one place.
//
// These sentences are a contract: backends match on them, as on OVHcloud's BYOI API. Change one
// only together with docs/status.md and the tests that pin it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace byoi::msg {

inline constexpr std::string_view kBadFormat = "Bad format image, expected: qcow2, raw, ova.";
inline constexpr std::string_view kBadChecksumType =
    "Bad checkSumType, expected: md5, sha1, sha256, sha512.";
inline constexpr std::string_view kChecksumPair =
    "Please provide checkSum AND checkSumType or none of them";
inline constexpr std::string_view kCancelled = "Deployment cancelled.";
inline constexpr std::string_view kInterrupted = "Deployment interrupted: the agent restarted.";
inline constexpr std::string_view kGptMove =
    "Can not move backup GPT data structures to the end of disk.";
inline constexpr std::string_view kConfigDrive = "Could not create configdrive on disk.";
inline constexpr std::string_view kBootEntry = "Could not set EFI boot entry.";

std::string InvalidManifest(std::string_view field, std::string_view reason);
// `url` is shown as ShownUrl shows it: without userinfo, query or fragment.
std::string DownloadFailed(std::string_view url);
std::string TooBigForMemory(std::string_view type);
std::string ChecksumMismatch(std::string_view type, std::string_view actual,
                             std::string_view expected);
// A file of an OVA whose digest differs from the one its `.mf` manifest gives.
std::string OvaChecksumMismatch(std::string_view file, std::string_view type,
                                std::string_view actual, std::string_view expected);
std::string FormatMismatch(std::string_view detected, std::string_view expected);
std::string NoPartitionTable(std::string_view contents);
std::string ImageLargerThanDisk(uint64_t image_bytes, std::string_view device, uint64_t disk_bytes);
std::string NoDiskInGroup(int group);
std::string DiskInUse(std::string_view device, std::string_view reason);
std::string CantWrite(std::string_view type);
std::string BootloaderNotFound(std::string_view path);

// What a shown URL does with the parts that may hold a secret.
enum class UrlSecrets {
  kDropped,  // left out: status messages, details, logs, the console, the state file
  kMasked,   // each one present replaced by "***": a printed manifest says that they will be sent
};

// The one way a URL is shown anywhere outside the request itself. Scheme, host, port and path are
// kept as given; the userinfo (credentials), the query (where presigned URLs carry their
// signature: X-Amz-Signature, sig, token) and the fragment are never shown:
//   kDropped: "https://u:p@host:8443/a/b?sig=x#f" -> "https://host:8443/a/b"
//   kMasked:  "https://u:p@host:8443/a/b?sig=x#f" -> "https://***@host:8443/a/b?***"
// (the fragment is never sent, so never masked). Text without a scheme is a path and a query.
std::string ShownUrl(std::string_view url, UrlSecrets secrets = UrlSecrets::kDropped);

}  // namespace byoi::msg
