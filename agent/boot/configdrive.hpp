// The OpenStack config drive cloud-init reads at first boot (docs/pipeline.md step 5), written into
// the config-2 partition (agent/disk/partition_add.hpp).
//
// Format (what cloud-init's ConfigDriveReader, cloudinit/sources/helpers/openstack.py, reads): a
// vfat file system labelled "config-2" holding identical trees openstack/latest/ and
// openstack/2012-08-10/, each with
//   meta_data.json    {"uuid", "hostname", "name", "public_keys": {"default": key},
//                      "keys": [{"name": "default", "type": "ssh", "data": key}], "meta": {…},
//                      "launch_index": 0, "availability_zone": "", "devices": [], "project_id": ""}
//   user_data         the raw bytes, only when given (cloud-init handles gzip and MIME itself)
//   vendor_data.json  {}
// `uuid` becomes cloud-init's instance-id, so it is new for every job: cloud-init then treats the
// install as a new instance and runs its first-boot modules. No network_data.json: we cannot
// describe the network correctly from here, and cloud-init falls back to DHCP on the first NIC.
//
// The file system is made in a temporary file with mkfs.fat and filled with mcopy (both run with
// an argv, never a shell), then copied into the partition through our own fd: no tool ever opens
// the disk, so O_EXCL holds and 4096-byte sector disks get a FAT with 4096-byte sectors (the
// kernel cannot mount a FAT whose sectors are smaller than the disk's).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/base/subprocess.hpp"  // RunProgram
#include "agent/disk/disk.hpp"

namespace byoi {

// Where user data came from, after the decoding rule of docs/manifest.md.
enum class UserDataSource { kText, kBase64Text, kBase64Gzip };

// What the config drive holds, as the manifest gives it (docs/manifest.md).
struct ConfigDriveSpec {
  bool enabled = false;
  std::string hostname;                  // RFC 1123, may be empty
  std::string ssh_key;                   // may be empty
  std::optional<std::string> user_data;  // raw bytes for the config drive's user_data file
  UserDataSource user_data_source = UserDataSource::kText;
  std::vector<std::pair<std::string, std::string>> metadata;  // `meta` of meta_data.json, in order
};

struct ConfigDriveContent {
  std::string uuid;      // instance id, a random UUID per job
  std::string hostname;  // hostname and name; both left out when empty
  std::string ssh_key;   // public_keys/keys; empty maps and lists when empty
  std::vector<std::pair<std::string, std::string>> meta;  // later duplicates win
  std::optional<std::string> user_data;                   // raw bytes
};

// The content for a manifest's config drive, with a fresh random UUID.
ConfigDriveContent MakeConfigDriveContent(const ConfigDriveSpec& drive);

// A random (version 4) UUID, lower case, from getrandom(2).
std::string NewUuid();

// meta_data.json for `content`.
std::string MetaDataJson(const ConfigDriveContent& content);

// Every file of the drive: relative path ("openstack/latest/meta_data.json") and bytes.
std::vector<std::pair<std::string, std::string>> ConfigDriveFiles(
    const ConfigDriveContent& content);

struct ConfigDriveOptions {
  std::string tmp_dir;                // for the scratch tree and image; "" = $TMPDIR or /tmp
  std::string mkfs_fat = "mkfs.fat";  // found on PATH
  std::string mcopy = "mcopy";
};

// Formats `partition` of `disk` as vfat "config-2" (at most the first 64 MiB of it) with the files
// of `content`, syncs, and checks with libblkid that a vfat labelled config-2 is there.
// REQUIRES: no fd of ours on `disk` is open with O_EXCL.
// On failure: kIo with message msg::kConfigDrive and the tool's stderr in the detail; the
// partition may hold a partial file system; other partitions are untouched; scratch files are
// removed either way.
Status WriteConfigDrive(const Disk& disk, const Partition& partition,
                        const ConfigDriveContent& content, const ConfigDriveOptions& options = {});

}  // namespace byoi
