// OVA appliances (docs/manifest.md, type "ova"): a tar archive (ustar or pax, as ovftool,
// VirtualBox's export and tar write them) holding an OVF descriptor (ovf.hpp), usually an `.mf`
// manifest of the files' digests, sometimes a `.cert`, and the disks as VMDK files (vmdk.hpp). The
// archive is read with libarchive over the bytes in RAM; members are never copied: each is a
// range of the archive, and the disk to install is read where it lies.
//
// Rules (DSP0243 §5.3 for the layout):
// - the descriptor is the archive's first file and its only `.ovf`; at most one `.mf` and one
//   `.cert`; directories are skipped; any other kind of member (a link, a device, a sparse file)
//   and two members of one name are refused; at most 4096 members, names of at most 1024 bytes
//   (a leading "./" is dropped), a descriptor and a manifest of at most 1 MiB each;
// - every file the descriptor's References list must be in the archive, with the size ovf:size
//   gives; the disk to install is chosen by ovf.hpp's rule;
// - the `.mf` holds lines `SHA1(name)= hex` (also SHA256 and SHA512; blanks around the
//   parentheses and `=` are accepted, as VirtualBox writes them); every file it names must be in
//   the archive, and VerifyOvaManifest checks every digest. The `.cert` signature is not checked
//   (no trust anchors in a rescue system). The job's own checkSum applies to the whole `.ova`.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"

namespace byoi {

struct OvaMember {
  std::string name;     // as in the archive, without a leading "./"
  uint64_t offset = 0;  // of its data in the archive
  uint64_t size = 0;
};

struct OvaDigest {
  size_t member = 0;     // index into OvaInfo::members
  std::string algo;      // "sha1", "sha256" or "sha512"
  std::string expected;  // lower-case hex
};

struct OvaInfo {
  std::vector<OvaMember> members;         // in archive order (directories left out)
  size_t descriptor = 0;                  // the `.ovf` (members[0])
  std::optional<size_t> manifest;         // the `.mf`
  std::optional<size_t> certificate;      // the `.cert`
  std::vector<OvaDigest> digests;         // the `.mf`'s lines, in its order
  std::string system;                     // the first VirtualSystem's ovf:id
  size_t disk = 0;                        // the member installed
  std::string disk_id;                    // its ovf:diskId
  std::string disk_format;                // its ovf:format URI
  std::optional<uint64_t> disk_capacity;  // bytes, as the descriptor gives it
  std::vector<size_t> disks;  // members of every disk of the DiskSection that has a file
};

// True when `bytes` starts with a tar header (ustar magic at 257) whose first file is named `*.ovf`
// (case-insensitive), as libarchive reads it within the first 64 KiB or, for a header libarchive
// refuses, as the header's name field gives it. Never fails.
bool LooksLikeOva(std::span<const uint8_t> bytes);

// A member's header as libarchive reads it.
struct OvaTarHeader {
  std::string name;  // without a leading "./"
  uint64_t size = 0;
};

// The header of the member after `before`, read by libarchive from `headers`: the member's header
// block and the pax or GNU extension blocks before it (stream mode reads the archive header by
// header). nullopt for a directory; kInvalid for a damaged header ("the tar archive, after member 2
// (a.mf): Damaged tar archive") or a member that is not a regular file.
Result<std::optional<OvaTarHeader>> ReadOvaTarHeader(std::span<const uint8_t> headers,
                                                     const std::vector<OvaMember>& before);

// The rules for one more member after `members`: kInvalid past 4096 members or for a second
// member of one name.
Status CheckNewOvaMember(const std::vector<OvaMember>& members, std::string_view name);

// `name` without a leading "./", as members and the descriptor's hrefs are compared.
std::string_view OvaMemberName(std::string_view name);

// Ok when `actual` is the digest `d` expects of `m`; kInvalid with msg::OvaChecksumMismatch
// otherwise.
Status CompareOvaDigest(const OvaMember& m, const OvaDigest& d, std::string_view actual);

// The text of member `i` (the descriptor, the manifest), where the caller holds it.
using OvaMemberText = std::function<std::string_view(size_t i)>;

// Checks an archive's members (in archive order, as listed by ReadOva or by stream mode's reader)
// and its descriptor and manifest by the rules above; the OvaInfo (whose `members` are `members`)
// or the error ReadOva gives. The descriptor's size is bounded by ParseOvf, the manifest's here.
Result<OvaInfo> DescribeOva(std::vector<OvaMember> members, const OvaMemberText& text);

struct OvaArchive {
  OvaInfo info;
  std::span<const uint8_t> disk;  // the disk to install, inside the bytes given to ReadOva
};

// Lists the archive's members and checks them, the descriptor and the manifest by the rules above
// (every digest is left to VerifyOvaManifest). kInvalid with the reason in detail ("the tar
// archive, after member 2 (disk1.vmdk): Damaged tar archive", "the descriptor names file
// disk2.vmdk (id file2), which is not in the archive"), kUnsupported for what ovf.hpp refuses and
// for digests other than SHA1, SHA256, SHA512. `archive` must outlive the result's `disk`.
Result<OvaArchive> ReadOva(std::span<const uint8_t> archive);

// Computes the digest of every file the manifest names (in `archive`, as ReadOva listed it) and
// compares it, checking `cancel` at least every 64 MiB. Ok when there is no manifest or every
// digest matches; kInvalid with msg::OvaChecksumMismatch naming the first file that differs;
// kCancelled; kInternal when OpenSSL cannot compute a digest.
Status VerifyOvaManifest(std::span<const uint8_t> archive, const OvaInfo& info,
                         const CancelToken& cancel);

}  // namespace byoi
