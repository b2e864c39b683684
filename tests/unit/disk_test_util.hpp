// Helpers shared by the disk tests (unit tests on regular files, integration tests on loop
// devices): running the real tools (sgdisk, sfdisk, blkid, mtools) with an argv, scratch
// directories, and reading bytes back.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/boot/configdrive.hpp"

namespace byoi::testing {

inline const std::vector<std::string>& ToolEnv() {
  static const std::vector<std::string> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
                                               "MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null"};
  return env;
}

struct RunResult {
  bool ok = false;
  std::string out;
  std::string error;
};

inline RunResult Run(const std::vector<std::string>& argv) {
  RunResult r;
  Status s = RunProgram(argv, ToolEnv(), &r.out);
  r.ok = s.ok();
  r.error = s.ToString();
  return r;
}

// Runs a tool that must succeed; its output, or a test failure naming the command.
inline std::string MustRun(const std::vector<std::string>& argv) {
  RunResult r = Run(argv);
  if (!r.ok) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    ADD_FAILURE() << "command failed: " << cmd << "\n" << r.error;
  }
  return r.out;
}

class TempDir {
 public:
  explicit TempDir(const std::string& parent = "/dev/shm") {
    std::string tmpl = parent + "/byoi-disk-test-XXXXXX";
    if (mkdtemp(tmpl.data())) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void MakeFile(const std::string& path, uint64_t size) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid()) << path;
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
}

inline std::string ReadBytes(const std::string& path, uint64_t offset, size_t n) {
  std::string out(n, '\0');
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return {};
  Status s = PreadAll(fd.get(), {reinterpret_cast<uint8_t*>(out.data()), n}, offset);
  return s.ok() ? out : std::string();
}

// SHA-256 of a whole file or device, hex: "untouched" checks.
inline std::string HashFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return "unreadable";
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n <= 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
  }
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    static const char* d = "0123456789abcdef";
    hex += d[md[i] >> 4];
    hex += d[md[i] & 15];
  }
  return hex;
}

// Copies `src` (an image file) over the start of `dst` (a file or device), like dd conv=notrunc.
inline void CopyInto(const std::string& src, const std::string& dst) {
  UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(in.valid() && out.valid());
  std::vector<uint8_t> buf(1 << 20);
  uint64_t off = 0;
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    ASSERT_GE(n, 0);
    if (n == 0) break;
    ASSERT_TRUE(PwriteAll(out.get(), {buf.data(), static_cast<size_t>(n)}, off).ok());
    off += static_cast<uint64_t>(n);
  }
  ASSERT_EQ(::fsync(out.get()), 0);
}

// `blkid -p -O OFFSET -s TAG -o value PATH`: a tag of the file system at a byte offset.
inline std::string BlkidTag(const std::string& path, uint64_t offset, const std::string& tag) {
  RunResult r = Run({"blkid", "-p", "-O", std::to_string(offset), "-s", tag, "-o", "value", path});
  std::string v = r.out;
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

struct MbrEntry {
  uint8_t type;
  uint32_t start;  // sectors
  uint32_t size;   // sectors
  bool boot = false;
};

// Writes a classic MBR (no CHS, LBA only) with up to four primary entries to `path`.
inline void WriteMbr(const std::string& path, const std::vector<MbrEntry>& entries,
                     uint32_t disk_id = 0x12345678) {
  uint8_t mbr[512] = {};
  for (int i = 0; i < 4; ++i) mbr[440 + i] = static_cast<uint8_t>(disk_id >> (8 * i));
  for (size_t n = 0; n < entries.size() && n < 4; ++n) {
    uint8_t* e = mbr + 446 + 16 * n;
    e[0] = entries[n].boot ? 0x80 : 0;
    e[4] = entries[n].type;
    for (int i = 0; i < 4; ++i) {
      e[8 + i] = static_cast<uint8_t>(entries[n].start >> (8 * i));
      e[12 + i] = static_cast<uint8_t>(entries[n].size >> (8 * i));
    }
  }
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << path;
  ASSERT_TRUE(PwriteAll(fd.get(), mbr, 0).ok());
}

}  // namespace byoi::testing
