#include "agent/boot/fat_reader.hpp"

#include <array>
#include <cstring>

#include "agent/base/bytes.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/text.hpp"
#include "agent/base/utf16.hpp"

namespace byoi {
namespace {

constexpr size_t kDirEntryBytes = 32;
constexpr size_t kMaxDirBytes = 65536 * kDirEntryBytes;  // FAT's limit of entries per directory
constexpr uint8_t kAttrVolumeId = 0x08;
constexpr uint8_t kAttrDirectory = 0x10;
constexpr uint8_t kAttrLongName = 0x0F;
constexpr size_t kLongNameUnitsPerEntry = 13;
constexpr size_t kMaxLongNameEntries = 20;  // 255 characters
constexpr size_t kMaxPathComponents = 32;

Status Corrupt(std::string what) {
  return Status::Error(Code::kInvalid, "corrupt FAT file system: " + std::move(what));
}

bool IsPowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The checksum of an 8.3 name that every long-name entry of it repeats.
uint8_t ShortNameChecksum(const uint8_t* name11) {
  uint8_t sum = 0;
  for (int i = 0; i < 11; ++i)
    sum = static_cast<uint8_t>(((sum & 1) << 7) + (sum >> 1) + name11[i]);
  return sum;
}

std::string ShortName(const uint8_t* rec) {
  // Byte 12 (NTRes): 0x08 = base name in lower case, 0x10 = extension in lower case; Windows and
  // Linux write "shimx64.efi"-style names this way without a long-name entry.
  bool lower_base = rec[12] & 0x08;
  bool lower_ext = rec[12] & 0x10;
  auto convert = [](uint8_t c, bool lower) -> char {
    if (c >= 0x80) return '?';  // OEM code page: not needed for ESP paths
    if (lower && c >= 'A' && c <= 'Z') return static_cast<char>(c - 'A' + 'a');
    return static_cast<char>(c);
  };
  std::string base, ext;
  for (int i = 0; i < 8; ++i) {
    uint8_t c = (i == 0 && rec[0] == 0x05) ? 0xE5 : rec[i];  // 0x05 stands for a leading 0xE5
    base += convert(c, lower_base);
  }
  for (int i = 8; i < 11; ++i) ext += convert(rec[i], lower_ext);
  while (!base.empty() && base.back() == ' ') base.pop_back();
  while (!ext.empty() && ext.back() == ' ') ext.pop_back();
  return ext.empty() ? base : base + "." + ext;
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '\\' || path[i] == '/') {
      if (i > start) parts.push_back(path.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

}  // namespace

Result<FatReader> FatReader::Open(ReadAtFn read, uint64_t offset, uint64_t size) {
  if (size < 512) return Corrupt("partition of " + std::to_string(size) + " bytes");
  std::array<uint8_t, 512> bs{};
  BYOI_RETURN_IF_ERROR(read(offset, bs).Context("reading the FAT boot sector"));
  if (bs[510] != 0x55 || bs[511] != 0xAA) return Corrupt("no boot sector signature");

  FatReader r;
  r.read_ = std::move(read);
  r.offset_ = offset;
  r.size_ = size;
  r.bytes_per_sector_ = Le16(&bs[11]);
  uint32_t sectors_per_cluster = bs[13];
  uint32_t reserved = Le16(&bs[14]);
  uint32_t fats = bs[16];
  r.root_entries_ = Le16(&bs[17]);
  uint32_t total16 = Le16(&bs[19]);
  uint32_t fat_size16 = Le16(&bs[22]);
  uint32_t total32 = Le32(&bs[32]);
  uint32_t fat_size32 = Le32(&bs[36]);

  uint32_t bps = r.bytes_per_sector_;
  if (bps < 512 || bps > 4096 || !IsPowerOfTwo(bps)) {
    return Corrupt("bytes per sector " + std::to_string(bps));
  }
  if (!IsPowerOfTwo(sectors_per_cluster) || sectors_per_cluster > 128) {
    return Corrupt("sectors per cluster " + std::to_string(sectors_per_cluster));
  }
  if (reserved == 0 || fats == 0) return Corrupt("no reserved sectors or no FAT");
  uint64_t fat_sectors = fat_size16 != 0 ? fat_size16 : fat_size32;
  uint64_t total = total16 != 0 ? total16 : total32;
  if (fat_sectors == 0 || total == 0) return Corrupt("zero FAT size or sector count");
  if (total * bps > size) {
    return Corrupt("file system of " + std::to_string(total * bps) + " bytes in a partition of " +
                   std::to_string(size));
  }
  uint64_t root_sectors = (uint64_t{r.root_entries_} * kDirEntryBytes + bps - 1) / bps;
  uint64_t first_data = reserved + fats * fat_sectors + root_sectors;
  if (first_data >= total) return Corrupt("no data region");
  uint64_t clusters = (total - first_data) / sectors_per_cluster;
  if (clusters == 0 || clusters > 0x0FFFFFF5)
    return Corrupt("cluster count " + std::to_string(clusters));

  r.cluster_count_ = static_cast<uint32_t>(clusters);
  // FAT32 is what the BPB says (no 16-bit FAT size), as Linux decides: mkfs.fat makes small FAT32
  // file systems below the spec's 65525 clusters on request. FAT12 vs FAT16 by cluster count.
  if (fat_size16 == 0) {
    r.type_ = Type::kFat32;
  } else {
    r.type_ = clusters < 4085 ? Type::kFat12 : Type::kFat16;
  }
  r.cluster_bytes_ = bps * sectors_per_cluster;
  r.fat_offset_ = uint64_t{reserved} * bps;
  r.fat_bytes_ = fat_sectors * bps;
  r.root_offset_ = (reserved + fats * fat_sectors) * bps;
  r.data_offset_ = first_data * bps;

  // The first FAT must describe every cluster.
  uint64_t bits = r.type_ == Type::kFat12 ? 12 : r.type_ == Type::kFat16 ? 16 : 32;
  if ((clusters + 2) * bits > r.fat_bytes_ * 8) return Corrupt("FAT too small for its clusters");
  if (r.type_ == Type::kFat32) {
    if (r.root_entries_ != 0) return Corrupt("FAT32 with a fixed root directory");
    r.root_cluster_ = Le32(&bs[44]) & 0x0FFFFFFF;
    if (r.root_cluster_ < 2 || r.root_cluster_ >= clusters + 2) {
      return Corrupt("root cluster " + std::to_string(r.root_cluster_));
    }
  } else if (r.root_entries_ == 0) {
    return Corrupt("FAT12/16 without a root directory");
  }
  return r;
}

Status FatReader::ReadAt(uint64_t relative_offset, void* buf, size_t len) const {
  if (relative_offset > size_ || len > size_ - relative_offset) {
    return Corrupt("read of " + std::to_string(len) + " bytes at " +
                   std::to_string(relative_offset) + " outside the partition");
  }
  return read_(offset_ + relative_offset, {static_cast<uint8_t*>(buf), len});
}

uint64_t FatReader::ClusterOffset(uint32_t cluster) const {
  return data_offset_ + uint64_t{cluster - 2} * cluster_bytes_;
}

Result<std::optional<uint32_t>> FatReader::Next(uint32_t cluster) const {
  uint64_t at = 0;
  switch (type_) {
    case Type::kFat12:
      at = cluster + cluster / 2;
      break;
    case Type::kFat16:
      at = uint64_t{cluster} * 2;
      break;
    case Type::kFat32:
      at = uint64_t{cluster} * 4;
      break;
  }
  size_t width = type_ == Type::kFat32 ? 4 : 2;
  if (at + width > fat_bytes_) return Corrupt("FAT entry of cluster " + std::to_string(cluster));
  uint8_t raw[4] = {};
  BYOI_RETURN_IF_ERROR(ReadAt(fat_offset_ + at, raw, width));
  uint32_t v = 0;
  uint32_t end_of_chain = 0;
  switch (type_) {
    case Type::kFat12:
      v = Le16(raw);
      v = (cluster & 1) ? v >> 4 : v & 0x0FFF;
      end_of_chain = 0x0FF8;
      break;
    case Type::kFat16:
      v = Le16(raw);
      end_of_chain = 0xFFF8;
      break;
    case Type::kFat32:
      v = Le32(raw) & 0x0FFFFFFF;
      end_of_chain = 0x0FFFFFF8;
      break;
  }
  if (v >= end_of_chain) return std::optional<uint32_t>();
  if (v < 2 || v >= cluster_count_ + 2) {
    return Corrupt("cluster " + std::to_string(cluster) + " links to " + std::to_string(v));
  }
  return std::optional<uint32_t>(v);
}

Result<std::vector<uint8_t>> FatReader::ReadChain(uint32_t first, size_t limit,
                                                  bool stop_at_limit) const {
  std::vector<uint8_t> out;
  if (first < 2 || first >= cluster_count_ + 2) {
    return Corrupt("chain starting at cluster " + std::to_string(first));
  }
  std::optional<uint32_t> cluster = first;
  // A chain longer than the cluster count must loop.
  for (uint64_t steps = 0; cluster; ++steps) {
    if (stop_at_limit && out.size() >= limit) break;
    if (out.size() >= limit + uint64_t{1}) {
      return Status::Error(Code::kTooBig, "more than " + std::to_string(limit) + " bytes");
    }
    if (steps >= cluster_count_) return Corrupt("cluster chain loops");
    size_t at = out.size();
    out.resize(at + cluster_bytes_);
    BYOI_RETURN_IF_ERROR(ReadAt(ClusterOffset(*cluster), out.data() + at, cluster_bytes_));
    BYOI_ASSIGN_OR_RETURN(cluster, Next(*cluster));
  }
  return out;
}

Result<std::vector<FatReader::Entry>> FatReader::ReadDir(const Entry* dir) const {
  std::vector<uint8_t> raw;
  if (dir == nullptr && type_ != Type::kFat32) {
    raw.resize(size_t{root_entries_} * kDirEntryBytes);
    BYOI_RETURN_IF_ERROR(ReadAt(root_offset_, raw.data(), raw.size()));
  } else {
    if (dir != nullptr && !dir->directory) {
      return Status::Error(Code::kInternal, dir->name + " is not a directory");
    }
    uint32_t first = dir == nullptr ? root_cluster_ : dir->first_cluster;
    // On FAT12/16 a ".." entry with cluster 0 means the root; callers never pass one.
    BYOI_ASSIGN_OR_RETURN(raw, ReadChain(first, kMaxDirBytes, /*stop_at_limit=*/false));
  }

  std::vector<Entry> entries;
  std::array<char16_t, kMaxLongNameEntries * kLongNameUnitsPerEntry> lfn{};
  int lfn_expect = 0;  // the sequence number the next long-name entry must carry; 0 = none pending
  bool lfn_valid = false;
  uint8_t lfn_checksum = 0;
  size_t lfn_units = 0;
  for (size_t pos = 0; pos + kDirEntryBytes <= raw.size(); pos += kDirEntryBytes) {
    const uint8_t* rec = raw.data() + pos;
    if (rec[0] == 0x00) break;  // end of directory
    if (rec[0] == 0xE5) {       // deleted
      lfn_valid = false;
      continue;
    }
    uint8_t attr = rec[11];
    if ((attr & 0x3F) == kAttrLongName) {
      int seq = rec[0] & 0x1F;
      if (rec[0] & 0x40) {  // the last part of the name comes first
        lfn_valid = seq >= 1 && static_cast<size_t>(seq) <= kMaxLongNameEntries;
        lfn.fill(0xFFFF);
        lfn_checksum = rec[13];
        lfn_units = static_cast<size_t>(seq) * kLongNameUnitsPerEntry;
      } else if (!lfn_valid || seq != lfn_expect - 1 || rec[13] != lfn_checksum) {
        lfn_valid = false;
      }
      if (lfn_valid) {
        lfn_expect = seq;
        static constexpr int kUnitOffsets[kLongNameUnitsPerEntry] = {1,  3,  5,  7,  9,  14, 16,
                                                                     18, 20, 22, 24, 28, 30};
        for (size_t k = 0; k < kLongNameUnitsPerEntry; ++k) {
          lfn[(seq - 1) * kLongNameUnitsPerEntry + k] = Le16(rec + kUnitOffsets[k]);
        }
      }
      continue;
    }
    bool have_lfn = lfn_valid && lfn_expect == 1 && ShortNameChecksum(rec) == lfn_checksum;
    lfn_valid = false;
    if (attr & kAttrVolumeId) continue;

    Entry e;
    e.short_name = ShortName(rec);
    if (e.short_name == "." || e.short_name == "..") continue;
    e.name = e.short_name;
    if (have_lfn) {
      std::vector<uint8_t> bytes;
      for (size_t k = 0; k < lfn_units && lfn[k] != 0 && lfn[k] != 0xFFFF; ++k) {
        bytes.push_back(lfn[k] & 0xFF);
        bytes.push_back(lfn[k] >> 8);
      }
      if (!bytes.empty()) e.name = Utf16LeToUtf8(bytes);
    }
    e.directory = attr & kAttrDirectory;
    e.first_cluster = Le16(rec + 26);
    if (type_ == Type::kFat32) e.first_cluster |= static_cast<uint32_t>(Le16(rec + 20)) << 16;
    e.size = Le32(rec + 28);
    entries.push_back(std::move(e));
  }
  return entries;
}

Result<std::optional<FatReader::Found>> FatReader::Lookup(std::string_view path) const {
  std::vector<std::string_view> parts = SplitPath(path);
  if (parts.empty() || parts.size() > kMaxPathComponents) return std::optional<Found>();
  Found found;
  std::optional<Entry> current;  // nullopt = the root directory
  for (size_t i = 0; i < parts.size(); ++i) {
    if (current && !current->directory) return std::optional<Found>();
    BYOI_ASSIGN_OR_RETURN(std::vector<Entry> entries, ReadDir(current ? &*current : nullptr));
    const Entry* match = nullptr;
    for (const Entry& e : entries) {
      if (EqualsIgnoreCaseAscii(e.name, parts[i]) ||
          EqualsIgnoreCaseAscii(e.short_name, parts[i])) {
        match = &e;
        break;
      }
    }
    if (match == nullptr) return std::optional<Found>();
    found.path += '\\';
    found.path += match->name;
    current = *match;
  }
  found.entry = *current;
  return std::optional<Found>(std::move(found));
}

Result<std::vector<uint8_t>> FatReader::ReadFile(const Entry& file, size_t limit) const {
  if (file.directory) return Status::Error(Code::kInternal, file.name + " is a directory");
  if (file.size > limit) {
    return Status::Error(Code::kTooBig, file.name + " has " + std::to_string(file.size) +
                                            " bytes, more than " + std::to_string(limit));
  }
  if (file.size == 0) return std::vector<uint8_t>();
  BYOI_ASSIGN_OR_RETURN(std::vector<uint8_t> data,
                        ReadChain(file.first_cluster, file.size, /*stop_at_limit=*/true));
  if (data.size() < file.size) return Corrupt(file.name + ": cluster chain shorter than the file");
  data.resize(file.size);
  return data;
}

}  // namespace byoi
