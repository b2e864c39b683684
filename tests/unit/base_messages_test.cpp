// The catalogue of docs/status.md, pinned word for word: backends match on these sentences.
#include <gtest/gtest.h>

#include "agent/base/cancel.hpp"
#include "agent/base/messages.hpp"

namespace byoi {
namespace {

TEST(Messages, Constants) {
  EXPECT_EQ(msg::kBadFormat, "Bad format image, expected: qcow2, raw, ova.");
  EXPECT_EQ(msg::kBadChecksumType, "Bad checkSumType, expected: md5, sha1, sha256, sha512.");
  EXPECT_EQ(msg::kChecksumPair, "Please provide checkSum AND checkSumType or none of them");
  EXPECT_EQ(msg::kCancelled, "Deployment cancelled.");
  EXPECT_EQ(msg::kInterrupted, "Deployment interrupted: the agent restarted.");
  EXPECT_EQ(msg::kGptMove, "Can not move backup GPT data structures to the end of disk.");
  EXPECT_EQ(msg::kConfigDrive, "Could not create configdrive on disk.");
  EXPECT_EQ(msg::kBootEntry, "Could not set EFI boot entry.");
  EXPECT_EQ(std::string_view(kCancelledMessage), msg::kCancelled);
}

TEST(Messages, Formatted) {
  EXPECT_EQ(msg::InvalidManifest("URL", "missing"), "Invalid manifest: URL: missing");
  EXPECT_EQ(msg::DownloadFailed("https://u:p@example.net/x.raw"),
            "Could not download image located: https://example.net/x.raw.");
  EXPECT_EQ(msg::TooBigForMemory("qcow2"),
            "Could not download, qcow2 image is too big to download in memory.");
  EXPECT_EQ(msg::ChecksumMismatch("sha256", "ab", "cd"),
            "Bad sha256 for downloaded file, got: ab while expecting cd.");
  EXPECT_EQ(msg::FormatMismatch("qcow2", "raw"),
            "image provided format is qcow2 which does not match expected raw format");
  EXPECT_EQ(msg::NoPartitionTable("ext4 filesystem"),
            "image provided format is not of type raw because no partition table was found. It "
            "seems to contain: ext4 filesystem");
  EXPECT_EQ(msg::ImageLargerThanDisk(2000, "/dev/sda", 1000),
            "image provided has a size of 2000 bytes which is larger than /dev/sda of 1000 bytes");
  EXPECT_EQ(msg::NoDiskInGroup(2), "No disk found in disk group 2.");
  EXPECT_EQ(msg::DiskInUse("/dev/sda", "/dev/sda1 is mounted on /mnt"),
            "Disk /dev/sda is in use: /dev/sda1 is mounted on /mnt.");
  EXPECT_EQ(msg::CantWrite("raw"), "Can't write raw on disk.");
  EXPECT_EQ(msg::BootloaderNotFound("\\EFI\\debian\\grubx64.efi"),
            "EFI bootloader \\EFI\\debian\\grubx64.efi not found on the EFI system partition.");
}

TEST(Messages, DownloadFailedShowsNeitherUserinfoNorQuery) {
  // A presigned URL: its signature is as good as a password until it expires.
  EXPECT_EQ(msg::DownloadFailed("https://login:pw@bucket.s3.example.net:8443/img/x.qcow2?"
                                "X-Amz-Credential=AKIA&X-Amz-Signature=5ec7e7#part"),
            "Could not download image located: https://bucket.s3.example.net:8443/img/x.qcow2.");
}

TEST(Messages, ShownUrl) {
  struct Case {
    const char* in;
    const char* dropped;
    const char* masked;
  };
  const Case cases[] = {
      {"https://example.net/x", "https://example.net/x", "https://example.net/x"},
      {"https://user:pw@example.net/x", "https://example.net/x", "https://***@example.net/x"},
      {"https://user@example.net:8443/x?a=b@c", "https://example.net:8443/x",
       "https://***@example.net:8443/x?***"},
      {"http://u:p@ss@example.net/x", "http://example.net/x",  // the last '@' ends userinfo
       "http://***@example.net/x"},
      {"http://example.net/a@b", "http://example.net/a@b", "http://example.net/a@b"},
      {"http://example.net#frag@x", "http://example.net", "http://example.net"},
      {"http://u:p@[::1]:80/", "http://[::1]:80/", "http://***@[::1]:80/"},
      {"http://u:p@example.net", "http://example.net", "http://***@example.net"},
      {"https://h/x.raw?X-Amz-Signature=abc&X-Amz-Date=1", "https://h/x.raw",
       "https://h/x.raw?***"},
      {"https://h/x.raw?sig=abc#f", "https://h/x.raw", "https://h/x.raw?***"},
      {"https://h?token=abc", "https://h", "https://h?***"},
      {"https://u:p@h?token=abc", "https://h", "https://***@h?***"},
      {"https://h/x?", "https://h/x", "https://h/x"},
      {"https://h/x?#f", "https://h/x", "https://h/x"},
      // No scheme: a path and a query all the same; a "://" in a query is no scheme.
      {"x.raw?sig=abc", "x.raw", "x.raw?***"},
      {"/a?next=http://u:p@h/", "/a", "/a?***"},
      {"not a url", "not a url", "not a url"},
      {"", "", ""},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(msg::ShownUrl(c.in), c.dropped) << c.in;
    EXPECT_EQ(msg::ShownUrl(c.in, msg::UrlSecrets::kDropped), c.dropped) << c.in;
    EXPECT_EQ(msg::ShownUrl(c.in, msg::UrlSecrets::kMasked), c.masked) << c.in;
  }
}

}  // namespace
}  // namespace byoi
