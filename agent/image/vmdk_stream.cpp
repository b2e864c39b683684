#include "agent/image/vmdk_stream.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "agent/base/bytes.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/image/refusal.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::InRange;
using image_refusal::Invalid;
using image_refusal::Unsupported;

namespace {

constexpr uint64_t kGrainMarkerBytes = 12;
// What a file that is not a sparse extent may show of itself before it is refused (a descriptor
// file's text, naming its extents).
constexpr uint64_t kVmdkDescriptorSniff = 64 << 10;

}  // namespace

VmdkStreamReader::VmdkStreamReader(VirtualDiskSink& sink, VmdkStreamOptions options,
                                   HeaderFn on_header)
    : sink_(sink), options_(std::move(options)), on_header_(std::move(on_header)) {}

VmdkStreamReader::~VmdkStreamReader() = default;

Status VmdkStreamReader::Fail(Status s) {
  if (!s.ok() && error_.ok()) error_ = s;
  return s;
}

Status VmdkStreamReader::TooBig() const {
  return Status::Error(Code::kTooBig,
                       fmt::format("the VMDK stream reader needs more than its budget of {} bytes",
                                   options_.memory_budget),
                       msg::TooBigForMemory(options_.type));
}

Status VmdkStreamReader::TruncatedBeforeGrains(uint64_t file_bytes) const {
  return Invalid(
      fmt::format("the file is truncated: its grains start at sector {}, past its end "
                  "({} bytes)",
                  h_.grain_offset, file_bytes));
}

Status VmdkStreamReader::Charge(uint64_t n) {
  if (n > options_.memory_budget || used_ > options_.memory_budget - n) return TooBig();
  used_ += n;
  peak_ = std::max(peak_, used_);
  return Status::Ok();
}

void VmdkStreamReader::Release(uint64_t n) { used_ -= std::min(used_, n); }

Status VmdkStreamReader::Start(std::optional<uint64_t> total) {
  total_ = total;
  return Status::Ok();
}

Status VmdkStreamReader::Write(std::span<const uint8_t> bytes) {
  if (!error_.ok()) return error_;
  return Fail(Take(bytes));
}

// The bytes after the ones taken so far, whatever phase the file is in.
Status VmdkStreamReader::Take(std::span<const uint8_t>& bytes) {
  auto gather = [&](std::vector<uint8_t>& into, uint64_t want) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(want - into.size(), bytes.size()));
    into.insert(into.end(), bytes.begin(), bytes.begin() + n);
    bytes = bytes.subspan(n);
    pos_ += n;
    return n;
  };
  while (!bytes.empty()) {
    if (!opened_) {
      // The header's sector; then, for a sparse extent, everything before its first grain, and
      // for anything else what the RAM reader needs to name its refusal (a descriptor's text).
      const uint64_t want = !header_read_ ? kVmdkSector
                            : sparse_     ? h_.grain_offset * kVmdkSector
                                          : kVmdkDescriptorSniff;
      BYOI_RETURN_IF_ERROR(Charge(gather(prefix_, want)));
      if (prefix_.size() < want) continue;
      if (!header_read_) {
        header_read_ = true;
        sparse_ = HasVmdkMagic(prefix_);
        if (!sparse_) continue;
        BYOI_ASSIGN_OR_RETURN(h_, DecodeVmdkHeader(prefix_));
        if (!h_.compressed()) {
          return Unsupported(
              "a monolithicSparse VMDK: its grains may come in any order, so stream mode cannot "
              "read it (ram mode can)");
        }
        if (h_.grain_offset == 0) return Invalid("the grains start at sector 0, in the header");
        // A file whose length is known (an OVA member, a Content-Length) is refused as the RAM
        // reader refuses it, before anything is held for it.
        if (total_ && h_.grain_offset > (*total_ + kVmdkSector - 1) / kVmdkSector) {
          return TruncatedBeforeGrains(*total_);
        }
        // Everything before the first grain is held: the budget bounds it (and the arithmetic).
        if (h_.grain_offset > options_.memory_budget / kVmdkSector) return TooBig();
        if (h_.grain_offset > 1) continue;
      }
      if (!sparse_) return ReadVmdk(prefix_).status();  // the RAM reader's refusal
      BYOI_RETURN_IF_ERROR(OpenPrefix());
      continue;
    }
    if (skip_ > 0) {
      const uint64_t n = std::min<uint64_t>(skip_, bytes.size());
      skip_ -= n;
      pos_ += n;
      bytes = bytes.subspan(n);
      continue;
    }
    switch (phase_) {
      case Phase::kEnded:
        // What follows the end-of-stream marker is not read (QEMU does not read it either).
        pos_ += bytes.size();
        bytes = {};
        break;
      case Phase::kMarker:
        // 12 bytes make a grain's marker; a metadata marker (size 0) is a whole sector.
        gather(marker_, marker_.size() < kGrainMarkerBytes ? kGrainMarkerBytes : kVmdkSector);
        if ((marker_.size() == kGrainMarkerBytes && Le32(&marker_[8]) != 0) ||
            marker_.size() == kVmdkSector) {
          BYOI_RETURN_IF_ERROR(EndMarker());
        }
        break;
      case Phase::kGrain:
      case Phase::kMetadata:
        gather(body_, body_needed_);
        if (body_.size() < body_needed_) break;
        BYOI_RETURN_IF_ERROR(phase_ == Phase::kGrain ? EndGrain() : EndMetadata());
        Release(body_.size());
        body_.clear();
        body_.shrink_to_fit();
        // The next marker starts on the next sector.
        skip_ = (kVmdkSector - pos_ % kVmdkSector) % kVmdkSector;
        marker_at_ = pos_ + skip_;
        phase_ = Phase::kMarker;
        break;
    }
  }
  return Status::Ok();
}

// A table at `sector` (`bytes` long) that is not before the first grain: outside the file (the
// RAM reader's words) when the file's length shows it, else a layout stream mode cannot read.
Status VmdkStreamReader::Beyond(const std::string& what, uint64_t sector, uint64_t bytes) const {
  if (total_ &&
      (sector > *total_ / kVmdkSector || !InRange(sector * kVmdkSector, bytes, *total_))) {
    return Invalid(what + " lies outside the file");
  }
  return Unsupported(what + " comes after the first grain: stream mode cannot read it");
}

Status VmdkStreamReader::OpenPrefix() {
  opened_ = true;
  BYOI_ASSIGN_OR_RETURN(VmdkDescriptor d, ReadEmbeddedDescriptor(prefix_, h_));
  info_.subformat = "streamOptimized";
  info_.create_type = PrintableText(d.create_type, 64);
  info_.version = h_.version;
  info_.flags = h_.flags;
  info_.virtual_size = h_.capacity * kVmdkSector;
  info_.grain_size = static_cast<uint32_t>(h_.grain_bytes());
  info_.gtes_per_gt = h_.gtes_per_gt;
  info_.footer = h_.gd_offset == kVmdkGdAtEnd;
  info_.unclean_shutdown = h_.unclean_shutdown;
  grain_bytes_ = h_.grain_bytes();
  grains_ = (info_.virtual_size + grain_bytes_ - 1) / grain_bytes_;
  const uint64_t coverage = grain_bytes_ * h_.gtes_per_gt;
  info_.gd_entries = (info_.virtual_size + coverage - 1) / coverage;
  // The directory is held at some point (here or behind its marker): the budget bounds it.
  if (info_.gd_entries > options_.memory_budget / 4) return TooBig();
  if (h_.gd_offset != kVmdkGdAtEnd && info_.virtual_size > 0) {
    // qemu-img's layout: the directory and its tables before the first grain, kept in prefix_.
    const std::string where = fmt::format("grain directory at {} ({} entries)",
                                          Hex(h_.gd_offset * kVmdkSector), info_.gd_entries);
    if (h_.gd_offset >= h_.grain_offset ||
        !InRange(h_.gd_offset * kVmdkSector, info_.gd_entries * 4, prefix_.size())) {
      return Beyond(where, h_.gd_offset, info_.gd_entries * 4);
    }
    std::vector<bool> seen_tables(h_.grain_offset);
    for (uint64_t i = 0; i < info_.gd_entries; ++i) {
      const uint64_t gt = Le32(&prefix_[h_.gd_offset * kVmdkSector + i * 4]);
      gd_.push_back(static_cast<uint32_t>(gt));
      if (gt == 0) continue;
      const std::string table =
          fmt::format("the grain table at {} (directory entry {})", Hex(gt * kVmdkSector), i);
      if (gt >= h_.grain_offset || !InRange(gt * kVmdkSector, h_.gtes_per_gt * 4, prefix_.size())) {
        return Beyond(table, gt, uint64_t{h_.gtes_per_gt} * 4);
      }
      if (seen_tables[gt]) return Invalid(table + " is referenced twice");
      seen_tables[gt] = true;
      ++info_.grain_tables;
    }
  }
  if (on_header_) BYOI_RETURN_IF_ERROR(on_header_(info_));
  if (h_.gd_offset == kVmdkGdAtEnd || info_.virtual_size == 0) {
    Release(prefix_.size());
    prefix_.clear();
    prefix_.shrink_to_fit();
  }
  marker_at_ = pos_;
  phase_ = Phase::kMarker;
  return Status::Ok();
}

Status VmdkStreamReader::EndMarker() {
  Result<VmdkMarker> m = DecodeVmdkMarker(marker_);
  if (!m.ok())
    return std::move(m).status().Context(fmt::format("the marker at {}", Hex(marker_at_)));
  current_ = *m;
  marker_.clear();
  const std::string where = fmt::format("the marker at {}", Hex(marker_at_));
  if (current_.type == VmdkMarkerType::kEndOfStream) {
    phase_ = Phase::kEnded;
    eos_at_ = marker_at_;
    eos_value_ = current_.value;
    return Status::Ok();
  }
  if (current_.type == VmdkMarkerType::kGrain) {
    BYOI_RETURN_IF_ERROR(CheckVmdkGrainSize(current_, marker_at_, grain_bytes_));
    body_needed_ = current_.size;
    phase_ = Phase::kGrain;
  } else {
    // A grain table, the directory or the footer: a few sectors, never more than the directory.
    const uint64_t most =
        std::max<uint64_t>({1, (info_.gd_entries * 4 + kVmdkSector - 1) / kVmdkSector,
                            (uint64_t{h_.gtes_per_gt} * 4 + kVmdkSector - 1) / kVmdkSector});
    if (current_.value == 0 || current_.value > most) {
      return Invalid(fmt::format("{}: metadata of {} sectors", where, current_.value));
    }
    body_needed_ = current_.value * kVmdkSector;
    phase_ = Phase::kMetadata;
  }
  return Charge(body_needed_);
}

Status VmdkStreamReader::EndGrain() {
  const uint64_t lba = current_.value;
  const std::string where = fmt::format("the grain marker at {}", Hex(marker_at_));
  if (lba % h_.granularity != 0 || lba / h_.granularity >= grains_) {
    return Invalid(
        fmt::format("{} names sector {}, not the start of a grain of the disk", where, lba));
  }
  const uint64_t grain = lba / h_.granularity;
  const uint64_t offset = grain * grain_bytes_;
  if (!seen_.empty() && seen_.back().grain >= grain) {
    return Invalid(fmt::format("{} names sector {}, not after the grain before it (sector {})",
                               where, lba, seen_.back().grain * h_.granularity));
  }
  if (marker_at_ / kVmdkSector > UINT32_MAX) {
    return Invalid(where + " lies past the 2 TiB a grain table can address");
  }
  const uint64_t length = std::min(grain_bytes_, info_.virtual_size - offset);
  Extent e;
  e.kind = Extent::Kind::kCompressed;
  e.offset = offset;
  e.length = length;
  e.data = body_.data();
  e.compressed_length = body_.size();
  e.cluster_size = static_cast<uint32_t>(grain_bytes_);
  e.cluster_min = length < grain_bytes_ ? static_cast<uint32_t>(length) : 0;
  e.compression = Compression::kZlib;
  if (grain_.size() != grain_bytes_) {
    BYOI_RETURN_IF_ERROR(Charge(grain_bytes_));
    grain_.resize(grain_bytes_);
  }
  BYOI_RETURN_IF_ERROR(inflater_.Decompress(e, grain_));
  BYOI_RETURN_IF_ERROR(Charge(sizeof(Seen)));
  seen_.push_back({grain, static_cast<uint32_t>(marker_at_ / kVmdkSector)});
  if (offset > written_) BYOI_RETURN_IF_ERROR(sink_.Zero(written_, offset - written_));
  BYOI_RETURN_IF_ERROR(sink_.Write(offset, std::span(grain_).first(length)));
  written_ = offset + length;
  info_.compressed_bytes += length;
  return Status::Ok();
}

Status VmdkStreamReader::EndMetadata() {
  // A file whose header gives the directory's offset is read through that directory (the RAM
  // reader's way): its metadata markers are passed over.
  if (h_.gd_offset != kVmdkGdAtEnd) return Status::Ok();
  const uint64_t data_sector = (marker_at_ + kVmdkSector) / kVmdkSector;
  switch (current_.type) {
    case VmdkMarkerType::kGrainTable: {
      if (body_.size() < uint64_t{h_.gtes_per_gt} * 4) {
        return Invalid(fmt::format("the grain table at {} is shorter than a table",
                                   Hex(data_sector * kVmdkSector)));
      }
      std::vector<uint8_t> entries(body_.begin(), body_.begin() + uint64_t{h_.gtes_per_gt} * 4);
      BYOI_RETURN_IF_ERROR(Charge(entries.size() + 64));
      gt_markers_[data_sector] = std::move(entries);
      break;
    }
    case VmdkMarkerType::kGrainDirectory:
      if (body_.size() < info_.gd_entries * 4) {
        return Invalid(fmt::format("the grain directory at {} holds fewer than {} entries",
                                   Hex(data_sector * kVmdkSector), info_.gd_entries));
      }
      BYOI_RETURN_IF_ERROR(Charge(info_.gd_entries * 4));
      gd_.assign(info_.gd_entries, 0);
      for (uint64_t i = 0; i < info_.gd_entries; ++i) gd_[i] = Le32(&body_[i * 4]);
      gd_sector_ = data_sector;
      break;
    case VmdkMarkerType::kFooter: {
      Result<VmdkHeader> f = DecodeVmdkHeader(body_);
      if (!f.ok()) {
        return std::move(f).status().Context(fmt::format("footer at {}", Hex(marker_at_)));
      }
      footer_ = *f;
      footer_at_ = marker_at_;
      footer_sectors_ = current_.value;
      break;
    }
    default:
      break;
  }
  return Status::Ok();
}

// The tables' view against the markers': every grain a marker gave is the one its table entry
// maps there, and every entry that maps a grain had its marker (what the RAM reader would read is
// what was written).
Status VmdkStreamReader::CheckTables() {
  if (info_.virtual_size == 0) return Status::Ok();
  // Where each table's entries are.
  std::function<const uint8_t*(uint64_t)> table_at;
  if (h_.gd_offset != kVmdkGdAtEnd) {
    table_at = [this](uint64_t i) { return prefix_.data() + uint64_t{gd_[i]} * kVmdkSector; };
  } else {
    if (!footer_) {
      return Invalid(
          "the file ended before its footer (the header puts the grain directory at "
          "the end)");
    }
    // The RAM reader reads the footer in the file's last three whole sectors: the footer marker,
    // its header, the end-of-stream marker; so must it be here.
    if (!eos_at_ || *eos_at_ != footer_at_ + 2 * kVmdkSector || footer_sectors_ != 1 ||
        eos_value_ != 0 || pos_ / kVmdkSector * kVmdkSector != *eos_at_ + kVmdkSector) {
      return Invalid(
          fmt::format("the footer at {} is not the file's last three sectors (its "
                      "marker, its header, the end-of-stream marker)",
                      Hex(footer_at_)));
    }
    const VmdkHeader& f = *footer_;
    if (f.version != h_.version || f.flags != h_.flags || f.capacity != h_.capacity ||
        f.granularity != h_.granularity || f.desc_offset != h_.desc_offset ||
        f.desc_size != h_.desc_size || f.gtes_per_gt != h_.gtes_per_gt ||
        f.grain_offset != h_.grain_offset || f.compress_algorithm != h_.compress_algorithm) {
      return Invalid("the footer's header does not repeat the first header");
    }
    if (f.gd_offset == kVmdkGdAtEnd || gd_.empty() || f.gd_offset != gd_sector_) {
      return Invalid(
          fmt::format("the footer puts the grain directory at {}, where no directory "
                      "marker put one",
                      Hex(f.gd_offset * kVmdkSector)));
    }
    std::map<uint32_t, uint64_t> referenced;  // table sector -> directory entry
    for (uint64_t i = 0; i < gd_.size(); ++i) {
      if (gd_[i] == 0) continue;
      if (!referenced.emplace(gd_[i], i).second) {
        return Invalid(fmt::format("the grain table at {} (directory entry {}) is referenced twice",
                                   Hex(uint64_t{gd_[i]} * kVmdkSector), i));
      }
      auto it = gt_markers_.find(gd_[i]);
      if (it == gt_markers_.end()) {
        return Invalid(
            fmt::format("directory entry {} points to {}, where no grain table marker "
                        "put one",
                        i, Hex(uint64_t{gd_[i]} * kVmdkSector)));
      }
      ++info_.grain_tables;
    }
    table_at = [this](uint64_t i) { return gt_markers_.at(gd_[i]).data(); };
  }
  auto next = seen_.begin();
  for (uint64_t i = 0; i < gd_.size(); ++i) {
    const uint64_t first = i * h_.gtes_per_gt;
    const uint64_t last = std::min(grains_, first + h_.gtes_per_gt);
    if (gd_[i] == 0) {
      // No table: nothing of it may have come.
      if (next != seen_.end() && next->grain < last) {
        return Invalid(fmt::format("the grain at sector {} came at {}, but no grain table maps it",
                                   next->grain * h_.granularity,
                                   Hex(uint64_t{next->sector} * kVmdkSector)));
      }
      info_.unallocated_bytes +=
          std::min(info_.virtual_size, last * grain_bytes_) - first * grain_bytes_;
      continue;
    }
    for (uint64_t g = first; g < last; ++g) {
      const uint32_t entry = Le32(table_at(i) + (g - first) * 4);
      const bool marked = next != seen_.end() && next->grain == g;
      const uint64_t length = std::min(grain_bytes_, info_.virtual_size - g * grain_bytes_);
      const std::string where = fmt::format("the grain at sector {}", g * h_.granularity);
      if (entry == 0 || (entry == 1 && h_.zero_grains())) {
        if (marked) {
          return Invalid(fmt::format("{} came at {}, but its table entry is {}", where,
                                     Hex(uint64_t{next->sector} * kVmdkSector), entry));
        }
        (entry == 0 ? info_.unallocated_bytes : info_.zero_bytes) += length;
        continue;
      }
      if (!marked || next->sector != entry) {
        return Invalid(fmt::format("{}: its table entry points to {}, {}", where,
                                   Hex(uint64_t{entry} * kVmdkSector),
                                   marked ? fmt::format("but its marker came at {}",
                                                        Hex(uint64_t{next->sector} * kVmdkSector))
                                          : std::string("where no grain marker came")));
      }
      ++next;
    }
  }
  return Status::Ok();
}

Result<uint64_t> VmdkStreamReader::Finish() {
  if (!error_.ok()) return error_;
  Status s = [&]() -> Status {
    if (!opened_) {
      if (!HasVmdkMagic(prefix_)) return ReadVmdk(prefix_).status();
      if (!header_read_) return DecodeVmdkHeader(prefix_).status();
      return TruncatedBeforeGrains(pos_);
    }
    if (phase_ == Phase::kGrain || phase_ == Phase::kMetadata ||
        (phase_ == Phase::kMarker && !marker_.empty())) {
      return Invalid(
          fmt::format("the file is truncated: it ends inside the marker at {}", Hex(marker_at_)));
    }
    BYOI_RETURN_IF_ERROR(CheckTables());
    if (written_ < info_.virtual_size) {
      BYOI_RETURN_IF_ERROR(sink_.Zero(written_, info_.virtual_size - written_));
    }
    return Status::Ok();
  }();
  if (!s.ok()) return Fail(std::move(s));
  return info_.virtual_size;
}

}  // namespace byoi
