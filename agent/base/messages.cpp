#include "agent/base/messages.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace byoi::msg {

std::string InvalidManifest(std::string_view field, std::string_view reason) {
  return fmt::format("Invalid manifest: {}: {}", field, reason);
}

std::string DownloadFailed(std::string_view url) {
  return fmt::format("Could not download image located: {}.", ShownUrl(url));
}

std::string TooBigForMemory(std::string_view type) {
  return fmt::format("Could not download, {} image is too big to download in memory.", type);
}

std::string ChecksumMismatch(std::string_view type, std::string_view actual,
                             std::string_view expected) {
  return fmt::format("Bad {} for downloaded file, got: {} while expecting {}.", type, actual,
                     expected);
}

std::string OvaChecksumMismatch(std::string_view file, std::string_view type,
                                std::string_view actual, std::string_view expected) {
  return fmt::format("Bad {} for {} in the OVA, got: {} while expecting {}.", type, file, actual,
                     expected);
}

std::string FormatMismatch(std::string_view detected, std::string_view expected) {
  return fmt::format("image provided format is {} which does not match expected {} format",
                     detected, expected);
}

std::string NoPartitionTable(std::string_view contents) {
  return fmt::format(
      "image provided format is not of type raw because no partition table was found. It seems to "
      "contain: {}",
      contents);
}

std::string ImageLargerThanDisk(uint64_t image_bytes, std::string_view device,
                                uint64_t disk_bytes) {
  return fmt::format("image provided has a size of {} bytes which is larger than {} of {} bytes",
                     image_bytes, device, disk_bytes);
}

std::string NoDiskInGroup(int group) {
  return fmt::format("No disk found in disk group {}.", group);
}

std::string DiskInUse(std::string_view device, std::string_view reason) {
  return fmt::format("Disk {} is in use: {}.", device, reason);
}

std::string CantWrite(std::string_view type) {
  return fmt::format("Can't write {} on disk.", type);
}

std::string BootloaderNotFound(std::string_view path) {
  return fmt::format("EFI bootloader {} not found on the EFI system partition.", path);
}

std::string ShownUrl(std::string_view url, UrlSecrets secrets) {
  const bool masked = secrets == UrlSecrets::kMasked;
  size_t scheme_end = url.find("://");
  // A "://" after the first '/', '?' or '#' is inside the path or the query: no scheme then.
  if (scheme_end != std::string_view::npos && url.find_first_of("/?#") < scheme_end) {
    scheme_end = std::string_view::npos;
  }
  size_t authority = scheme_end == std::string_view::npos ? 0 : scheme_end + 3;
  size_t authority_end = std::min(url.find_first_of("/?#", authority), url.size());
  size_t query = std::min(url.find_first_of("?#", authority_end), url.size());
  std::string_view auth = url.substr(authority, authority_end - authority);
  size_t at = scheme_end == std::string_view::npos ? std::string_view::npos : auth.rfind('@');
  std::string out(url.substr(0, authority));
  if (at != std::string_view::npos) {
    if (masked) out += "***@";
    auth.remove_prefix(at + 1);
  }
  out += auth;
  out += url.substr(authority_end, query - authority_end);
  if (masked && query < url.size() && url[query] == '?' && query + 1 < url.size() &&
      url[query + 1] != '#') {
    out += "?***";
  }
  return out;
}

}  // namespace byoi::msg
