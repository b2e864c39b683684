#include "agent/image/ova.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/image/ova_manifest.hpp"
#include "agent/image/ovf.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Invalid;

namespace {

constexpr size_t kMaxMembers = 4096;
constexpr size_t kMaxNameBytes = 1024;
// LooksLikeOva reads the first header through libarchive in this much of the archive.
constexpr size_t kSniffBytes = 64 << 10;

std::string Shown(std::string_view name) { return PrintableText(name, 256); }

struct ArchiveFree {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveFree>;

// A tar reader over `bytes` (ustar, pax, GNU: libarchive's tar formats; no compression filter).
Result<ArchivePtr> OpenTar(std::span<const uint8_t> bytes) {
  ArchivePtr a(archive_read_new());
  if (a == nullptr) return Status::Error(Code::kInternal, "libarchive: cannot make a reader");
  if (archive_read_support_format_tar(a.get()) != ARCHIVE_OK ||
      archive_read_open_memory(a.get(), bytes.data(), bytes.size()) != ARCHIVE_OK) {
    return Invalid(fmt::format("the tar archive: {}", archive_error_string(a.get())));
  }
  return a;
}

bool EndsWithIgnoreCase(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         EqualsIgnoreCaseAscii(s.substr(s.size() - suffix.size()), suffix);
}

std::string_view WithoutDotSlash(std::string_view name) {
  while (name.substr(0, 2) == "./") name.remove_prefix(2);
  return name;
}

// Where the data of the member just read lies in `bytes`. libarchive reads a tar held in memory
// in place: its data blocks point into `bytes`, one after the other; anything else (a sparse
// member, a member cut by the end of the archive) is refused.
Result<OvaMember> LocateData(archive* a, std::span<const uint8_t> bytes, std::string name,
                             uint64_t size) {
  OvaMember m;
  m.name = std::move(name);
  m.size = size;
  const void* block = nullptr;
  size_t length = 0;
  la_int64_t offset = 0;
  uint64_t done = 0;
  int r;
  while ((r = archive_read_data_block(a, &block, &length, &offset)) == ARCHIVE_OK) {
    const auto* p = static_cast<const uint8_t*>(block);
    if (p < bytes.data() || p > bytes.data() + bytes.size() || length > bytes.size() ||
        static_cast<uint64_t>(p - bytes.data()) > bytes.size() - length) {
      return Status::Error(Code::kInternal, "libarchive did not read the member in place");
    }
    const uint64_t at = static_cast<uint64_t>(p - bytes.data());
    if (done == 0) m.offset = at;
    if (offset < 0 || static_cast<uint64_t>(offset) != done || at != m.offset + done) {
      return Invalid("its data is not stored in one piece (a sparse member?)");
    }
    done += length;
  }
  if (r != ARCHIVE_EOF) return Invalid(archive_error_string(a));
  if (done != size) {
    return Invalid(fmt::format("its data ends after {} of {} bytes", done, size));
  }
  return m;
}

// What libarchive read of a member's header: a directory (nullopt: skipped), or a regular file's
// name and size; a link, a device, a nameless member are refused. `where` names the place for a
// header that cannot be read.
Result<std::optional<OvaTarHeader>> EntryOf(archive* a, int r, archive_entry* entry,
                                            const std::string& where) {
  if (r != ARCHIVE_OK) {
    const char* why = archive_error_string(a);
    return Invalid(fmt::format("{}: {}", where, why != nullptr ? why : "unreadable header"));
  }
  const mode_t type = archive_entry_filetype(entry);
  if (type == AE_IFDIR) return std::optional<OvaTarHeader>();
  const char* raw_name = archive_entry_pathname(entry);
  std::string_view name = WithoutDotSlash(raw_name != nullptr ? raw_name : "");
  if (name.empty() || name.size() > kMaxNameBytes) {
    return Invalid(fmt::format("{}: a member name of {} bytes", where, name.size()));
  }
  if (type != AE_IFREG || archive_entry_hardlink(entry) != nullptr) {
    return Invalid(fmt::format("member {} is not a regular file", Shown(name)));
  }
  const la_int64_t size = archive_entry_size(entry);
  if (!archive_entry_size_is_set(entry) || size < 0) {
    return Invalid(fmt::format("member {} has no size", Shown(name)));
  }
  return std::optional<OvaTarHeader>(OvaTarHeader{std::string(name), static_cast<uint64_t>(size)});
}

std::string Where(const std::vector<OvaMember>& members) {
  return members.empty() ? std::string("the tar archive, at its start")
                         : fmt::format("the tar archive, after member {} ({})", members.size(),
                                       Shown(members.back().name));
}

// Every member of the archive, in order, checked by the rules of ova.hpp.
Result<std::vector<OvaMember>> ListMembers(std::span<const uint8_t> bytes) {
  BYOI_ASSIGN_OR_RETURN(ArchivePtr a, OpenTar(bytes));
  std::vector<OvaMember> members;
  for (;;) {
    archive_entry* entry = nullptr;
    const int r = archive_read_next_header(a.get(), &entry);
    if (r == ARCHIVE_EOF) break;
    BYOI_ASSIGN_OR_RETURN(std::optional<OvaTarHeader> header,
                          EntryOf(a.get(), r, entry, Where(members)));
    if (!header) continue;
    BYOI_RETURN_IF_ERROR(CheckNewOvaMember(members, header->name));
    Result<OvaMember> m = LocateData(a.get(), bytes, header->name, header->size);
    if (!m.ok()) return std::move(m).status().Context("member " + Shown(header->name));
    members.push_back(std::move(*m));
  }
  return members;
}

std::optional<size_t> FindMember(const std::vector<OvaMember>& members, std::string_view name) {
  name = WithoutDotSlash(name);
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i].name == name) return i;
  }
  return std::nullopt;
}

// The one member whose name ends with `suffix`, if any; two are refused.
Result<std::optional<size_t>> OnlyMember(const std::vector<OvaMember>& members,
                                         std::string_view suffix) {
  std::optional<size_t> found;
  for (size_t i = 0; i < members.size(); ++i) {
    if (!EndsWithIgnoreCase(members[i].name, suffix)) continue;
    if (found) {
      return Invalid(fmt::format("the archive holds two {} files: {} and {}", suffix,
                                 Shown(members[*found].name), Shown(members[i].name)));
    }
    found = i;
  }
  return found;
}

}  // namespace

Status CheckNewOvaMember(const std::vector<OvaMember>& members, std::string_view name) {
  if (members.size() == kMaxMembers) {
    return Invalid(fmt::format("the archive has more than {} members", kMaxMembers));
  }
  for (const OvaMember& m : members) {
    if (m.name == name) return Invalid(fmt::format("two members are named {}", Shown(name)));
  }
  return Status::Ok();
}

Result<std::optional<OvaTarHeader>> ReadOvaTarHeader(std::span<const uint8_t> headers,
                                                     const std::vector<OvaMember>& before) {
  Result<ArchivePtr> opened = OpenTar(headers);
  if (!opened.ok() && !before.empty()) {
    // A lone header libarchive cannot bid on is an unrecognised format to it; inside the whole
    // archive (the RAM reader) the same bytes are a damaged member: say what the RAM reader says.
    return Invalid(Where(before) + ": Damaged tar archive");
  }
  BYOI_ASSIGN_OR_RETURN(ArchivePtr a, std::move(opened));
  archive_entry* entry = nullptr;
  const int r = archive_read_next_header(a.get(), &entry);
  return EntryOf(a.get(), r, entry, Where(before));
}

Status CompareOvaDigest(const OvaMember& m, const OvaDigest& d, std::string_view actual) {
  if (actual == d.expected) return Status::Ok();
  return Status::Error(Code::kInvalid,
                       fmt::format("the {} of {} ({} bytes) differs from the manifest's", d.algo,
                                   Shown(m.name), m.size),
                       msg::OvaChecksumMismatch(Shown(m.name), d.algo, actual, d.expected));
}

std::string_view OvaMemberName(std::string_view name) { return WithoutDotSlash(name); }

bool LooksLikeOva(std::span<const uint8_t> bytes) {
  if (bytes.size() < 512 ||
      std::string_view(reinterpret_cast<const char*>(&bytes[257]), 5) != "ustar") {
    return false;
  }
  // The first header's name field as written: a header too damaged for libarchive still says
  // what the archive was meant to be (ReadOva then explains what is wrong with it).
  std::string_view field(reinterpret_cast<const char*>(bytes.data()), 100);
  if (EndsWithIgnoreCase(field.substr(0, field.find('\0')), ".ovf")) return true;
  // A pax or GNU long name, a leading directory: libarchive reads the first file's name.
  auto a = OpenTar(bytes.first(std::min(bytes.size(), kSniffBytes)));
  if (!a.ok()) return false;
  archive_entry* entry = nullptr;
  while (archive_read_next_header(a->get(), &entry) == ARCHIVE_OK) {
    if (archive_entry_filetype(entry) == AE_IFDIR) continue;
    const char* name = archive_entry_pathname(entry);
    return name != nullptr && EndsWithIgnoreCase(name, ".ovf");
  }
  return false;
}

Result<OvaInfo> DescribeOva(std::vector<OvaMember> members, const OvaMemberText& text) {
  OvaInfo info;
  if (members.empty() || !EndsWithIgnoreCase(members[0].name, ".ovf")) {
    return Invalid(members.empty() ? "the archive holds no file"
                                   : fmt::format("the archive's first file is {}, not an .ovf "
                                                 "descriptor",
                                                 Shown(members[0].name)));
  }
  BYOI_ASSIGN_OR_RETURN(std::optional<size_t> ovf, OnlyMember(members, ".ovf"));
  BYOI_ASSIGN_OR_RETURN(info.manifest, OnlyMember(members, ".mf"));
  BYOI_ASSIGN_OR_RETURN(info.certificate, OnlyMember(members, ".cert"));
  info.descriptor = *ovf;

  const OvaMember& descriptor = members[info.descriptor];
  Result<OvfDescriptor> parsed = ParseOvf(text(info.descriptor));
  if (!parsed.ok()) {
    return std::move(parsed).status().Context("the descriptor " + Shown(descriptor.name));
  }
  const OvfDescriptor& ovf_desc = *parsed;
  std::vector<size_t> file_members;
  for (const OvfFile& f : ovf_desc.files) {
    std::optional<size_t> m = FindMember(members, f.href);
    if (!m) {
      return Invalid(
          fmt::format("the descriptor names file {} (id {}), which is not in the archive",
                      Shown(f.href), Shown(f.id)));
    }
    if (f.size && *f.size != members[*m].size) {
      return Invalid(fmt::format("file {} has {} bytes, the descriptor says {}", Shown(f.href),
                                 members[*m].size, *f.size));
    }
    file_members.push_back(*m);
  }
  info.system = ovf_desc.system;
  const OvfDisk& disk = ovf_desc.disks[ovf_desc.install];
  info.disk = file_members[ovf_desc.install_file];
  info.disk_id = disk.id;
  info.disk_format = disk.format;
  info.disk_capacity = disk.capacity;
  for (const OvfDisk& d : ovf_desc.disks) {
    if (d.file_ref.empty()) continue;
    for (size_t i = 0; i < ovf_desc.files.size(); ++i) {
      if (ovf_desc.files[i].id == d.file_ref) info.disks.push_back(file_members[i]);
    }
  }

  if (info.manifest) {
    const OvaMember& mf = members[*info.manifest];
    if (mf.size > kMaxOvaManifestBytes) {
      return Invalid(fmt::format("the manifest {} has {} bytes, more than {}", Shown(mf.name),
                                 mf.size, kMaxOvaManifestBytes));
    }
    Result<std::vector<OvaManifestLine>> lines = ParseOvaManifest(text(*info.manifest));
    if (!lines.ok()) return std::move(lines).status().Context("the manifest " + Shown(mf.name));
    for (OvaManifestLine& line : *lines) {
      std::optional<size_t> m = FindMember(members, line.file);
      if (!m) {
        return Invalid(fmt::format("the manifest {} names file {}, which is not in the archive",
                                   Shown(mf.name), Shown(line.file)));
      }
      for (const OvaDigest& d : info.digests) {
        if (d.member == *m) {
          return Invalid(
              fmt::format("the manifest {} names file {} twice", Shown(mf.name), Shown(line.file)));
        }
      }
      info.digests.push_back({*m, std::move(line.algo), std::move(line.hex)});
    }
  }
  info.members = std::move(members);
  return info;
}

Result<OvaArchive> ReadOva(std::span<const uint8_t> bytes) {
  BYOI_ASSIGN_OR_RETURN(std::vector<OvaMember> members, ListMembers(bytes));
  // The descriptor and the manifest are read where they lie (DescribeOva bounds their sizes).
  auto text = [&bytes, &members](size_t i) {
    return std::string_view(reinterpret_cast<const char*>(bytes.data() + members[i].offset),
                            static_cast<size_t>(members[i].size));
  };
  OvaArchive out;
  BYOI_ASSIGN_OR_RETURN(out.info, DescribeOva(members, text));
  const OvaMember& chosen = out.info.members[out.info.disk];
  out.disk = bytes.subspan(chosen.offset, chosen.size);
  return out;
}

Status VerifyOvaManifest(std::span<const uint8_t> archive, const OvaInfo& info,
                         const CancelToken& cancel) {
  for (const OvaDigest& d : info.digests) {
    const OvaMember& m = info.members[d.member];
    BYOI_ASSIGN_OR_RETURN(std::string actual,
                          HexDigest(d.algo, archive.subspan(m.offset, m.size), cancel));
    BYOI_RETURN_IF_ERROR(CompareOvaDigest(m, d, actual));
  }
  return Status::Ok();
}

}  // namespace byoi
