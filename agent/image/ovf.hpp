// The OVF descriptor of an OVA (DMTF DSP0243, OVF 1.x and 2.x): what files the package references,
// what disks it defines, and which disk to install. Read with libxml2 as XML with namespaces, never
// with string searches, and as untrusted input: at most 1 MiB, no network access, no DTD at all (a
// <!DOCTYPE> stops the parser before any entity is declared, so none is ever expanded), libxml2's
// default depth and size limits.
//
// The disk to install is the one the first VirtualSystem (depth first, also inside a
// VirtualSystemCollection) attaches first: the first Item (or OVF 2 StorageItem) of its first
// VirtualHardwareSection, in document order, whose rasd:/sasd:HostResource names a disk
// ("ovf:/disk/ID"; the older "/disk/ID" and "ovf://disk/ID" too) that has a file (a Disk without
// ovf:fileRef is a blank disk the hypervisor creates empty: nothing to install). ovftool and
// VirtualBox list a system's disks controller by controller, in port order.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

// At most this many bytes of descriptor are parsed.
inline constexpr uint64_t kMaxOvfBytes = 1 << 20;

struct OvfFile {                 // References/File
  std::string id;                // ovf:id
  std::string href;              // ovf:href: the file's name in the archive
  std::optional<uint64_t> size;  // ovf:size, when given
  std::string compression;       // ovf:compression ("" or "identity": none)
  bool chunked = false;          // ovf:chunkSize given: the file is split in pieces
};

struct OvfDisk {                     // DiskSection/Disk
  std::string id;                    // ovf:diskId
  std::string file_ref;              // ovf:fileRef ("" for a blank disk)
  std::string format;                // ovf:format, a URI naming the disk format
  std::optional<uint64_t> capacity;  // bytes (ovf:capacity × ovf:capacityAllocationUnits), when
                                     // both are plain numbers
};

struct OvfDescriptor {
  int version = 1;  // 1 or 2, from the envelope's namespace
  std::vector<OvfFile> files;
  std::vector<OvfDisk> disks;
  std::string system;            // the first VirtualSystem's ovf:id
  std::vector<size_t> attached;  // indexes into `disks`, in the order the system attaches them
  size_t install = 0;            // index into `disks` of the disk to install (see above)
  size_t install_file = 0;       // index into `files` of its file
};

// Parses and checks `xml`: kInvalid when it is larger than kMaxOvfBytes, not well-formed XML
// (libxml2's reason and line in detail), has a DTD, is not an OVF Envelope, holds no
// VirtualSystem, or is inconsistent (a HostResource naming a disk the DiskSection does not list, a
// disk naming a file References does not list, two files or disks with one id); kUnsupported when
// the disk to install is in a file that is compressed, chunked or outside the package (an href
// with a scheme or an absolute path), or when the first VirtualSystem attaches no disk with a file.
// Strings are as in the document (callers make them printable before showing them).
Result<OvfDescriptor> ParseOvf(std::string_view xml);

}  // namespace byoi
