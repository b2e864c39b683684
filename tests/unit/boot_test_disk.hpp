// Test helpers for the boot stage: run tools without a shell, temporary directories, and disk
// images with a real EFI system partition (sgdisk/sfdisk, mkfs.fat --offset, mtools -i
// FILE@@OFFSET). Used by tests/unit/boot_*_test.cpp and tests/integration/efi_*_test.cpp.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace byoi::testing {

// Runs `argv` (searched in PATH, never through a shell) with stdin from `stdin_path`; stdout into
// *out when given, else discarded, stderr into *err when given, else discarded. Returns the exit
// status (-1 if it did not run or died by a signal).
inline int Run(const std::vector<std::string>& argv, std::string* out = nullptr,
               std::string* err = nullptr, const std::vector<std::string>& extra_env = {},
               const std::string& stdin_path = "/dev/null") {
  char out_tmpl[] = "/tmp/byoi-run-outXXXXXX";
  char err_tmpl[] = "/tmp/byoi-run-errXXXXXX";
  int out_fd = mkstemp(out_tmpl);
  int err_fd = mkstemp(err_tmpl);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdin_path.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings = extra_env;
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  env_strings.emplace_back("MTOOLS_SKIP_CHECK=1");
  std::vector<char*> env;
  for (std::string& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&fa);
  int status = -1;
  if (rc == 0) waitpid(pid, &status, 0);
  auto slurp = [](const char* path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  if (out) *out = slurp(out_tmpl);
  if (err) *err = slurp(err_tmpl);
  close(out_fd);
  close(err_fd);
  unlink(out_tmpl);
  unlink(err_tmpl);
  if (rc != 0 || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// Runs and fails the current test when the exit status is not 0.
inline void MustRun(const std::vector<std::string>& argv, std::string* out = nullptr) {
  std::string err;
  int rc = Run(argv, out, &err);
  std::string cmd;
  for (const auto& a : argv) cmd += a + " ";
  ASSERT_EQ(rc, 0) << cmd << "\n" << err;
}

class TempDir {
 public:
  // In RAM (/dev/shm) when there is one: disk images are sparse and tools fsync them.
  TempDir() {
    std::string tmpl = std::filesystem::is_directory("/dev/shm") ? "/dev/shm/byoi-test-XXXXXX"
                                                                 : "/tmp/byoi-test-XXXXXX";
    char* made = mkdtemp(tmpl.data());
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// "BOOTX64.CSV" as shim ships it: UTF-16LE with a byte order mark.
inline std::string Utf16LeWithBom(std::string_view ascii) {
  std::string out = "\xFF\xFE";
  for (char c : ascii) {
    out += c;
    out += '\0';
  }
  return out;
}

struct EspFile {
  std::string path;  // "EFI/debian/shimx64.efi"
  std::string content;
};

// Creates the directories and files on the FAT file system at byte `offset` of `target`.
inline void FillFat(const std::string& target, uint64_t offset, const std::vector<EspFile>& files) {
  std::string image = target + "@@" + std::to_string(offset);
  std::set<std::string> made;
  TempDir scratch;
  int n = 0;
  for (const EspFile& f : files) {
    size_t pos = 0;
    while ((pos = f.path.find('/', pos)) != std::string::npos) {
      std::string dir = f.path.substr(0, pos);
      if (made.insert(dir).second) MustRun({"mmd", "-i", image, "::/" + dir});
      ++pos;
    }
    std::string local = scratch / ("f" + std::to_string(n++));
    WriteAll(local, f.content);
    MustRun({"mcopy", "-o", "-i", image, local, "::/" + f.path});
  }
}

struct DiskSpec {
  bool mbr = false;
  uint64_t disk_mib = 64;
  uint64_t esp_mib = 40;        // starts at 1 MiB
  int fat_bits = 32;            // 12, 16, 32, or 0 for mkfs.fat's choice
  int sectors_per_cluster = 0;  // 0: 1 for FAT32, mkfs.fat's choice otherwise
  bool esp_type = true;         // false: the first partition is a Linux one
  bool format = true;           // mkfs.fat the first partition
  std::vector<EspFile> files;
};

// Partitions and fills `target` (a file or a block device of `sector_size`-byte sectors):
// partition 1 (the ESP, or a Linux one) at 1 MiB, partition 2 (Linux) after it up to the end.
inline void PartitionAndFormat(const std::string& target, const DiskSpec& spec,
                               uint32_t sector_size = 512) {
  // sfdisk, not sgdisk: sgdisk sleeps a second after every write, even to a file.
  TempDir scratch;
  uint64_t per_mib = (1u << 20) / sector_size;
  std::string start = std::to_string(per_mib);
  std::string esp_sectors = std::to_string(spec.esp_mib * per_mib);
  std::string script =
      spec.mbr ? "label: dos\nlabel-id: 0x1234abcd\nstart=" + start + ", size=" + esp_sectors +
                     ", type=" + (spec.esp_type ? "ef" : "83") + "\ntype=83\n"
               : "label: gpt\nstart=" + start + ", size=" + esp_sectors + ", type=" +
                     (spec.esp_type ? "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
                                    : "0FC63DAF-8483-4772-8E79-3D69D8477DE4") +
                     "\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n";
  WriteAll(scratch / "script", script);
  std::string err;
  ASSERT_EQ(Run({"sfdisk", "-q", "--no-reread", "--no-tell-kernel", target}, nullptr, &err, {},
                scratch / "script"),
            0)
      << err;
  if (!spec.format) return;
  // -I: a whole device with a partition table is what we mean to format at an offset.
  std::vector<std::string> mkfs = {"mkfs.fat", "-I", "-S", std::to_string(sector_size)};
  if (spec.fat_bits != 0) {
    mkfs.push_back("-F");
    mkfs.push_back(std::to_string(spec.fat_bits));
  }
  int per_cluster = spec.sectors_per_cluster != 0 ? spec.sectors_per_cluster
                    : spec.fat_bits == 32         ? 1  // enough clusters for FAT32 in 40 MiB
                                                  : 0;
  if (per_cluster != 0) {
    mkfs.push_back("-s");
    mkfs.push_back(std::to_string(per_cluster));
  }
  // --offset counts sectors of -S bytes; the size is in KiB.
  for (const std::string& a :
       {std::string("--offset"), start, target, std::to_string(spec.esp_mib * 1024)}) {
    mkfs.push_back(a);
  }
  MustRun(mkfs);
  FillFat(target, 1 << 20, spec.files);
}

// A disk image file with 512-byte sectors (see PartitionAndFormat).
inline void BuildDisk(const std::string& path, const DiskSpec& spec) {
  { std::ofstream(path, std::ios::binary | std::ios::trunc); }
  std::filesystem::resize_file(path, spec.disk_mib << 20);
  PartitionAndFormat(path, spec);
}

// Replaces, in the disk image `path`, the one UTF-16LE occurrence of `marker` (ASCII) by `name`
// (code units): how a test gives a FAT long name characters that mtools refuses to write, such as
// ESC. The long name's checksum covers the 8.3 name only, so the entry stays valid. Fails the test
// unless `marker` occurs exactly once and `name` is as long.
inline void ReplaceLongName(const std::string& path, std::string_view marker,
                            const std::u16string& name) {
  ASSERT_EQ(marker.size(), name.size());
  std::string image = ReadAll(path);
  std::string needle, replacement;
  for (char c : marker) needle += {c, '\0'};
  for (char16_t u : name) {
    replacement += static_cast<char>(u & 0xFF);
    replacement += static_cast<char>(u >> 8);
  }
  size_t at = image.find(needle);
  ASSERT_NE(at, std::string::npos) << marker;
  ASSERT_EQ(image.find(needle, at + 1), std::string::npos) << marker << " occurs twice";
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(replacement.data(), static_cast<std::streamsize>(replacement.size()));
  ASSERT_TRUE(f.good());
}

// A load option as firmware makes them for network boot (OVMF: PciRoot/Pci/MAC/IPv4 or IPv6,
// "UEFI PXEv4 (MAC:525400123456)"), written out by hand.
inline std::vector<uint8_t> PxeLoadOption(std::string_view description, bool ipv6 = false) {
  std::vector<uint8_t> dp = {0x02, 0x01, 0x0c, 0x00, 0xd0, 0x41, 0x03, 0x0a, 0,
                             0,    0,    0,    0x01, 0x01, 0x06, 0x00, 0x00, 0x03,  // Pci(3,0)
                             0x03, 0x0b, 0x25, 0x00};                               // MAC(…)
  dp.resize(dp.size() + 33, 0);
  uint16_t ip_len = ipv6 ? 60 : 27;
  dp.insert(dp.end(),
            {0x03, static_cast<uint8_t>(ipv6 ? 0x0d : 0x0c), static_cast<uint8_t>(ip_len), 0x00});
  dp.resize(dp.size() + ip_len - 4, 0);
  dp.insert(dp.end(), {0x7f, 0xff, 0x04, 0x00});
  std::vector<uint8_t> out = {0x01,
                              0x00,
                              0x00,
                              0x00,
                              static_cast<uint8_t>(dp.size() & 0xff),
                              static_cast<uint8_t>(dp.size() >> 8)};
  for (char c : description) out.insert(out.end(), {static_cast<uint8_t>(c), 0});
  out.insert(out.end(), {0, 0});
  out.insert(out.end(), dp.begin(), dp.end());
  return out;
}

// `sfdisk --json` of a disk, parsed.
inline boost::json::object SfdiskJson(const std::string& disk) {
  std::string out;
  EXPECT_EQ(Run({"sfdisk", "--json", disk}, &out), 0);
  return boost::json::parse(out).as_object().at("partitiontable").as_object();
}

}  // namespace byoi::testing
