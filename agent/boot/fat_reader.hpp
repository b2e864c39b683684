// A small read-only FAT12/16/32 reader, enough to look into an EFI system partition on the
// written disk without mounting it: list directories, resolve a path case-insensitively, read a
// small file (shim's BOOTX64.CSV, a systemd-boot entry).
//
// Format (Microsoft "FAT: General Overview of On-Disk Format", 1.03): a boot sector with the BIOS
// parameter block, `reserved` sectors, `fats` copies of the allocation table, the fixed root
// directory (FAT12/16 only), then the data clusters numbered from 2. FAT32 is marked by a zero
// 16-bit FAT size (Linux's rule; the spec's cluster-count rule disagrees only for small FAT32 made
// on purpose); FAT12 and FAT16 are told apart by the cluster count (< 4085 is FAT12). Directory
// entries are 32 bytes; long names (VFAT) precede their 8.3 entry in reverse order and carry a
// checksum of it.
//
// The partition is untrusted input: every sector and cluster is checked against the partition
// bounds, cluster chains are bounded by the cluster count (no loops), and directory and file reads
// have size limits. The reader never writes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/fd.hpp"  // ReadAtFn
#include "agent/base/status.hpp"

namespace byoi {

class FatReader {
 public:
  enum class Type { kFat12, kFat16, kFat32 };

  struct Entry {
    std::string name;        // the long name when there is a valid one, else `short_name`
    std::string short_name;  // "BOOTX64.EFI" (8.3, with the Windows NT lower-case flags applied)
    bool directory = false;
    uint32_t first_cluster = 0;
    uint32_t size = 0;  // bytes, files only
  };

  struct Found {
    Entry entry;
    std::string path;  // with the names as stored: "\EFI\debian\shimx64.efi"
  };

  // Reads the boot sector of the file system occupying [offset, offset + size) of what `read`
  // reads (a disk, an image's virtual disk). What `read` reads from must outlive the reader.
  // kInvalid when there is no FAT file system there or its geometry does not fit the range.
  static Result<FatReader> Open(ReadAtFn read, uint64_t offset, uint64_t size);

  // The entries of the root directory (`dir` == nullptr) or of the directory `dir`, in on-disk
  // order, without ".", "..", volume labels and deleted entries.
  Result<std::vector<Entry>> ReadDir(const Entry* dir) const;

  // Resolves a path ("\EFI\debian\shimx64.efi" or "EFI/debian/shimx64.efi"), each component
  // matched against the long or short name, ASCII case-insensitively. nullopt when a component
  // does not exist or a non-final component is not a directory.
  Result<std::optional<Found>> Lookup(std::string_view path) const;

  // The whole content of the file `file`; kTooBig when it is larger than `limit` bytes.
  Result<std::vector<uint8_t>> ReadFile(const Entry& file, size_t limit) const;

  Type type() const { return type_; }
  uint32_t cluster_count() const { return cluster_count_; }

 private:
  FatReader() = default;

  Status ReadAt(uint64_t relative_offset, void* buf, size_t len) const;
  // The FAT entry of `cluster`: the next cluster, or nullopt at the end of the chain.
  Result<std::optional<uint32_t>> Next(uint32_t cluster) const;
  // The clusters of the chain starting at `first`, concatenated. With `stop_at_limit` reading stops
  // once `limit` bytes are in (a file, whose size is known); otherwise a chain holding more than
  // `limit` bytes is kTooBig (a directory).
  Result<std::vector<uint8_t>> ReadChain(uint32_t first, size_t limit, bool stop_at_limit) const;
  uint64_t ClusterOffset(uint32_t cluster) const;

  ReadAtFn read_;
  uint64_t offset_ = 0;
  uint64_t size_ = 0;
  Type type_ = Type::kFat32;
  uint32_t bytes_per_sector_ = 0;
  uint32_t cluster_bytes_ = 0;
  uint64_t fat_offset_ = 0;  // bytes, relative to the partition
  uint64_t fat_bytes_ = 0;
  uint64_t root_offset_ = 0;  // FAT12/16 fixed root directory
  uint32_t root_entries_ = 0;
  uint32_t root_cluster_ = 0;  // FAT32
  uint64_t data_offset_ = 0;
  uint32_t cluster_count_ = 0;
};

}  // namespace byoi
