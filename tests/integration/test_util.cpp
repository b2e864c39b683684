#include "tests/integration/test_util.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "agent/base/fd.hpp"
#include "agent/base/subprocess.hpp"

namespace byoi::testing {

std::string Output(const std::vector<std::string>& argv) {
  std::string out;
  if (!RunProgram(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}, &out).ok()) return {};
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(&v[i], &x, std::min<size_t>(8, n - i));
  }
  return v;
}

std::vector<uint8_t> ReadRange(const std::string& path, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> v(length);
  auto fd = OpenFile(path, O_RDONLY);
  EXPECT_TRUE(fd.ok()) << path;
  if (fd.ok()) {
    Status s = PreadAll(fd->get(), v, offset);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return v;
}

LoopDevice::LoopDevice(const std::string& file, uint32_t sector_size) {
  std::vector<std::string> argv = {"losetup", "-f", "--show"};
  if (sector_size != 512) argv.insert(argv.end(), {"-b", std::to_string(sector_size)});
  argv.push_back(file);
  // Another test may take the free device between -f and the attach: try again.
  for (int i = 0; i < 5 && path_.empty(); ++i) path_ = Output(argv);
  EXPECT_FALSE(path_.empty()) << "losetup " << file;
}

LoopDevice::~LoopDevice() {
  if (!path_.empty()) Output({"losetup", "-d", path_});
}

SmallTmpfs::SmallTmpfs(uint64_t size) {
  dir_ = (std::filesystem::temp_directory_path() / ("byoi-tmpfs-" + std::to_string(::getpid())))
             .string();
  std::filesystem::create_directories(dir_);
  mounted_ =
      ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + std::to_string(size)).c_str()) == 0;
  EXPECT_TRUE(mounted_) << "mount tmpfs on " << dir_ << ": " << std::strerror(errno);
}

SmallTmpfs::~SmallTmpfs() {
  if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string SmallTmpfs::path(const std::string& name) const { return dir_ + "/" + name; }

}  // namespace byoi::testing
