#include "agent/image/ova_stream.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "agent/base/text.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Invalid;

namespace {

constexpr uint64_t kBlock = 512;
// A member's header with its extensions (a pax record set, a GNU long name): libarchive refuses
// larger ones too ("Special header too large").
constexpr uint64_t kMaxHeaderBytes = (1 << 20) + 2 * kBlock;

std::string Shown(std::string_view name) { return PrintableText(name, 256); }

bool EndsWithIgnoreCase(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         EqualsIgnoreCaseAscii(s.substr(s.size() - suffix.size()), suffix);
}

// A ustar number field: octal digits (leading blanks, then a NUL or a blank), or GNU's base-256
// form (high bit of the first byte set). nullopt when it is neither or does not fit 63 bits.
std::optional<uint64_t> TarNumber(std::span<const uint8_t> field) {
  uint64_t v = 0;
  if (field[0] & 0x80) {
    if (field[0] != 0x80) return std::nullopt;  // negative, or more than 63 bits
    for (size_t i = 1; i < field.size(); ++i) {
      if (v >> 55) return std::nullopt;
      v = (v << 8) | field[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < field.size() && field[i] == ' ') ++i;
  bool digits = false;
  for (; i < field.size() && field[i] >= '0' && field[i] <= '7'; ++i) {
    if (v >> 60) return std::nullopt;
    v = (v << 3) | (field[i] - '0');
    digits = true;
  }
  if (i < field.size() && field[i] != ' ' && field[i] != '\0') return std::nullopt;
  return digits ? std::optional<uint64_t>(v) : std::nullopt;
}

}  // namespace

OvaStreamReader::OvaStreamReader(VirtualDiskSink& sink, OvaStreamOptions options,
                                 HeaderFn on_header)
    : sink_(sink), options_(options), on_header_(std::move(on_header)) {}

OvaStreamReader::~OvaStreamReader() = default;

Status OvaStreamReader::Fail(Status s) {
  if (!s.ok() && error_.ok()) error_ = s;
  return s;
}

Status OvaStreamReader::Start(std::optional<uint64_t>) { return Status::Ok(); }

Status OvaStreamReader::Write(std::span<const uint8_t> bytes) {
  if (!error_.ok()) return error_;
  return Fail(Take(bytes));
}

Status OvaStreamReader::Take(std::span<const uint8_t>& bytes) {
  while (!bytes.empty()) {
    switch (phase_) {
      case Phase::kEnded:
        // After the end-of-archive block: the second one and the record's padding.
        pos_ += bytes.size();
        bytes = {};
        break;
      case Phase::kHeader: {
        const size_t n = std::min<size_t>(kBlock - block_.size(), bytes.size());
        block_.insert(block_.end(), bytes.begin(), bytes.begin() + n);
        bytes = bytes.subspan(n);
        pos_ += n;
        if (block_.size() == kBlock) BYOI_RETURN_IF_ERROR(EndHeaderBlock());
        break;
      }
      case Phase::kData: {
        if (data_left_ > 0) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(data_left_, bytes.size()));
          BYOI_RETURN_IF_ERROR(MemberData(bytes.first(n)));
          bytes = bytes.subspan(n);
          pos_ += n;
          data_left_ -= n;
          if (data_left_ == 0) BYOI_RETURN_IF_ERROR(EndMember());
          break;
        }
        const size_t n = static_cast<size_t>(std::min<uint64_t>(padding_, bytes.size()));
        bytes = bytes.subspan(n);
        pos_ += n;
        padding_ -= n;
        if (padding_ == 0) phase_ = Phase::kHeader;
        break;
      }
    }
  }
  return Status::Ok();
}

// One 512-byte block of a header: an extension's, a member's own, or the end of the archive.
Status OvaStreamReader::EndHeaderBlock() {
  std::vector<uint8_t> block = std::move(block_);
  block_.clear();
  if (extension_ > 0) {  // an extension's data (pax records, a long name)
    headers_.insert(headers_.end(), block.begin(), block.end());
    extension_ -= std::min(extension_, kBlock);
    return Status::Ok();
  }
  if (headers_.empty() &&
      std::all_of(block.begin(), block.end(), [](uint8_t b) { return b == 0; })) {
    phase_ = Phase::kEnded;
    return Status::Ok();
  }
  if (headers_.size() + kBlock > kMaxHeaderBytes) {
    return Invalid(
        fmt::format("the tar archive has a header of more than {} bytes", kMaxHeaderBytes));
  }
  headers_.insert(headers_.end(), block.begin(), block.end());
  const std::optional<uint64_t> size = TarNumber(std::span(block).subspan(124, 12));
  const char type = static_cast<char>(block[156]);
  if (size && (type == 'x' || type == 'g' || type == 'X' || type == 'L' || type == 'K')) {
    // Its data belongs to the header of the member that follows (libarchive reads them together).
    if (*size > kMaxHeaderBytes - headers_.size()) {
      return Invalid(
          fmt::format("the tar archive has a header of more than {} bytes", kMaxHeaderBytes));
    }
    extension_ = (*size + kBlock - 1) / kBlock * kBlock;
    return Status::Ok();
  }
  Result<std::optional<OvaTarHeader>> header = ReadOvaTarHeader(headers_, members_);
  headers_.clear();
  if (!header.ok()) return header.status();
  if (!*header) {  // a directory: no data
    data_left_ = 0;
    padding_ = size ? (*size + kBlock - 1) / kBlock * kBlock : 0;
    phase_ = padding_ > 0 ? Phase::kData : Phase::kHeader;
    return Status::Ok();
  }
  BYOI_RETURN_IF_ERROR(CheckNewOvaMember(members_, (*header)->name));
  return BeginMember(std::move((*header)->name), (*header)->size);
}

Status OvaStreamReader::BeginMember(std::string name, uint64_t size) {
  const size_t index = members_.size();
  if (index == 0) {
    if (!EndsWithIgnoreCase(name, ".ovf")) {
      return Invalid(
          fmt::format("the archive's first file is {}, not an .ovf descriptor", Shown(name)));
    }
    if (size > kMaxOvfBytes) {
      return Invalid(fmt::format("the descriptor {}: the descriptor has {} bytes, more than {}",
                                 Shown(name), size, kMaxOvfBytes));
    }
  }
  if (EndsWithIgnoreCase(name, ".mf") && !manifest_index_) {
    if (size > kMaxOvaManifestBytes) {
      return Invalid(fmt::format("the manifest {} has {} bytes, more than {}", Shown(name), size,
                                 kMaxOvaManifestBytes));
    }
    manifest_index_ = index;
  }
  // The algorithms the manifest gives this file, or, before the manifest, SHA1 and SHA256.
  std::vector<std::string> algos;
  if (manifest_index_ && *manifest_index_ < index) {
    for (const OvaManifestLine& line : manifest_lines_) {
      if (OvaMemberName(line.file) == name) algos.push_back(line.algo);
    }
  } else {
    algos = {"sha1", "sha256"};
  }
  BYOI_ASSIGN_OR_RETURN(hasher_, ManifestHasher::Create(algos));
  current_is_disk_ = !disk_name_.empty() && name == disk_name_;
  if (current_is_disk_) {
    VmdkStreamOptions o;
    o.memory_budget = options_.memory_budget;
    o.type = "ova";
    disk_ = std::make_unique<VmdkStreamReader>(sink_, o, on_header_);
    BYOI_RETURN_IF_ERROR(disk_->Start(size));
  }
  members_.push_back({std::move(name), pos_, size});
  digests_.emplace_back();
  data_left_ = size;
  padding_ = (kBlock - size % kBlock) % kBlock;
  phase_ = Phase::kData;
  if (size == 0) return EndMember();
  return Status::Ok();
}

Status OvaStreamReader::MemberData(std::span<const uint8_t> bytes) {
  hasher_->Update(bytes);
  const size_t index = members_.size() - 1;
  if (index == 0) descriptor_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (manifest_index_ == index) {
    manifest_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  if (current_is_disk_) {
    Status s = disk_->Write(bytes);
    if (!s.ok()) return s.Context("the disk " + Shown(disk_name_));
  }
  return Status::Ok();
}

Status OvaStreamReader::EndMember() {
  const size_t index = members_.size() - 1;
  const OvaMember& m = members_.back();
  BYOI_ASSIGN_OR_RETURN(digests_.back(), hasher_->Final());
  hasher_.reset();
  if (padding_ == 0) phase_ = Phase::kHeader;
  if (index == 0) {
    // The descriptor names the disk before any of it passes.
    Result<OvfDescriptor> ovf = ParseOvf(descriptor_);
    if (!ovf.ok()) return std::move(ovf).status().Context("the descriptor " + Shown(m.name));
    disk_name_ = std::string(OvaMemberName(ovf->files[ovf->install_file].href));
    ovf_ = std::move(*ovf);
  }
  if (manifest_index_ == index) {
    Result<std::vector<OvaManifestLine>> lines = ParseOvaManifest(manifest_);
    if (!lines.ok()) return std::move(lines).status().Context("the manifest " + Shown(m.name));
    manifest_lines_ = std::move(*lines);
  }
  return Status::Ok();
}

Result<uint64_t> OvaStreamReader::Finish() {
  if (!error_.ok()) return error_;
  Status s = [&]() -> Status {
    if (phase_ == Phase::kData && data_left_ > 0) {
      return Invalid(fmt::format("member {}: Truncated tar archive", Shown(members_.back().name)));
    }
    if (!block_.empty() || !headers_.empty()) {
      return Invalid(fmt::format(
          "{}: the archive ends inside a header",
          members_.empty() ? std::string("the tar archive, at its start")
                           : "the tar archive, after member " + Shown(members_.back().name)));
    }
    auto text = [this](size_t i) -> std::string_view {
      return i == 0 ? std::string_view(descriptor_) : std::string_view(manifest_);
    };
    BYOI_ASSIGN_OR_RETURN(info_, DescribeOva(members_, text));
    // The disk's own end (its tables, its footer) before the digests, as the RAM reader reads the
    // VMDK before it hashes.
    if (!disk_) return Status::Error(Code::kInternal, "the disk to install never came");
    Result<uint64_t> size = disk_->Finish();
    if (!size.ok()) return Status(size.status()).Context("the disk " + Shown(disk_name_));
    virtual_size_ = *size;
    for (const OvaDigest& d : info_.digests) {
      const OvaMember& m = members_[d.member];
      if (d.member == 0) {
        // The descriptor is held whole: any algorithm the manifest asks of it.
        const CancelToken never;
        BYOI_ASSIGN_OR_RETURN(
            std::string actual,
            HexDigest(
                d.algo,
                std::span(reinterpret_cast<const uint8_t*>(descriptor_.data()), descriptor_.size()),
                never));
        BYOI_RETURN_IF_ERROR(CompareOvaDigest(m, d, actual));
        continue;
      }
      const auto& computed = digests_[d.member];
      auto it = std::find_if(computed.begin(), computed.end(),
                             [&d](const auto& p) { return p.first == d.algo; });
      if (it == computed.end()) {
        return Status::Error(
            Code::kUnsupported,
            fmt::format("the manifest comes after {} and gives its {}: stream mode hashes the "
                        "files before the manifest with SHA1 and SHA256 only (ram mode checks it)",
                        Shown(m.name), d.algo));
      }
      BYOI_RETURN_IF_ERROR(CompareOvaDigest(m, d, it->second));
    }
    return Status::Ok();
  }();
  if (!s.ok()) return Fail(std::move(s));
  return virtual_size_;
}

}  // namespace byoi
