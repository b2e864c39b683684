#include <fcntl.h>
#include <gtest/gtest.h>

#include <random>

#include "agent/base/fd.hpp"
#include "agent/boot/fat_reader.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::EspFile;
using testing::FillFat;
using testing::MustRun;
using testing::ReadAll;
using testing::TempDir;

std::string Pattern(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

const std::vector<EspFile>& SampleFiles() {
  static const std::vector<EspFile> files = {
      {"EFI/debian/shimx64.efi", Pattern(1000, 1)},
      {"EFI/debian/BOOTX64.CSV", "csv"},
      {"EFI/BOOT/BOOTX64.EFI", Pattern(5000, 2)},
      {"EFI/systemd/systemd-bootx64.efi", Pattern(70000, 3)},
      {"EFI/A Long Directory Name With Spaces/grubx64.efi", Pattern(10, 4)},
      {"big.bin", Pattern(300000, 5)},
      {"empty.txt", ""},
  };
  return files;
}

// A bare FAT file system (no partition table) in a file.
std::string MakeFat(const TempDir& dir, int bits, uint64_t kib) {
  std::string path = dir / ("fat" + std::to_string(bits));
  std::vector<std::string> argv = {"mkfs.fat", "-C", "-F", std::to_string(bits)};
  if (bits == 32) argv.insert(argv.end(), {"-s", "1"});
  argv.push_back(path);
  argv.push_back(std::to_string(kib));
  MustRun(argv);
  FillFat(path, 0, SampleFiles());
  return path;
}

struct Opened {
  UniqueFd fd;
  FatReader fat;
};

Opened OpenFat(const std::string& path, uint64_t size = 0) {
  auto fd = OpenFile(path, O_RDONLY);
  EXPECT_TRUE(fd.ok());
  if (size == 0) size = ReadAll(path).size();
  auto fat = FatReader::Open(ReadFromFd(fd->get()), 0, size);
  EXPECT_TRUE(fat.ok()) << fat.status().ToString();
  return Opened{std::move(*fd), std::move(*fat)};
}

std::string ToUpper(std::string s) {
  for (char& c : s) c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
  return s;
}

class FatReaderTypes : public ::testing::TestWithParam<std::pair<int, uint64_t>> {};

TEST_P(FatReaderTypes, FindsAndReadsEveryFileCaseInsensitively) {
  auto [bits, kib] = GetParam();
  TempDir dir;
  std::string image = MakeFat(dir, bits, kib);
  Opened o = OpenFat(image);
  EXPECT_EQ(o.fat.type(), bits == 12   ? FatReader::Type::kFat12
                          : bits == 16 ? FatReader::Type::kFat16
                                       : FatReader::Type::kFat32);
  for (const EspFile& f : SampleFiles()) {
    // Ask in another case and with backslashes: the stored names come back.
    std::string asked = "\\" + ToUpper(f.path);
    for (char& c : asked) c = c == '/' ? '\\' : c;
    auto found = o.fat.Lookup(asked);
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    ASSERT_TRUE(found->has_value()) << asked;
    std::string expected_path = "\\" + f.path;
    for (char& c : expected_path) c = c == '/' ? '\\' : c;
    EXPECT_EQ((*found)->path, expected_path);
    EXPECT_FALSE((*found)->entry.directory);
    auto data = o.fat.ReadFile((*found)->entry, 1 << 20);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    EXPECT_EQ(std::string(data->begin(), data->end()), f.content) << f.path;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, FatReaderTypes,
                         ::testing::Values(std::make_pair(12, 2048), std::make_pair(16, 16384),
                                           std::make_pair(32, 40960)));

TEST(FatReader, ListsDirectoriesWithoutDotEntries) {
  TempDir dir;
  Opened o = OpenFat(MakeFat(dir, 16, 16384));
  auto root = o.fat.ReadDir(nullptr);
  ASSERT_TRUE(root.ok());
  std::vector<std::string> names;
  for (const auto& e : *root) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"EFI", "big.bin", "empty.txt"}));
  auto efi = o.fat.Lookup("/efi");
  ASSERT_TRUE(efi.ok() && efi->has_value());
  EXPECT_TRUE((*efi)->entry.directory);
  auto sub = o.fat.ReadDir(&(*efi)->entry);
  ASSERT_TRUE(sub.ok());
  names.clear();
  for (const auto& e : *sub) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"debian", "BOOT", "systemd",
                                             "A Long Directory Name With Spaces"}));
}

TEST(FatReader, MissingPathsAreNotFoundNotErrors) {
  TempDir dir;
  Opened o = OpenFat(MakeFat(dir, 16, 16384));
  for (const char* path : {"\\EFI\\ubuntu\\shimx64.efi", "\\EFI\\debian\\shimx64.efi\\x",
                           "\\big.bin\\x", "\\nothing", "", "\\"}) {
    auto found = o.fat.Lookup(path);
    ASSERT_TRUE(found.ok()) << path << ": " << found.status().ToString();
    EXPECT_FALSE(found->has_value()) << path;
  }
}

TEST(FatReader, FilesLargerThanTheLimitAreRefused) {
  TempDir dir;
  Opened o = OpenFat(MakeFat(dir, 16, 16384));
  auto big = o.fat.Lookup("big.bin");
  ASSERT_TRUE(big.ok() && big->has_value());
  auto data = o.fat.ReadFile((*big)->entry, 1000);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kTooBig);
}

// Offsets of the BPB fields the corruption tests poke at.
uint16_t Le16At(const std::string& img, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(img[at]) | static_cast<uint8_t>(img[at + 1])
                                                                   << 8);
}

void Patch(const std::string& path, uint64_t at, std::string_view bytes) {
  auto fd = OpenFile(path, O_WRONLY);
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(
      PwriteAll(fd->get(), {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, at)
          .ok());
}

TEST(FatReader, CorruptBootSectorsAreInvalid) {
  TempDir dir;
  std::string image = MakeFat(dir, 16, 16384);
  std::string pristine = ReadAll(image);
  struct Case {
    const char* what;
    size_t at;
    std::string bytes;
  } cases[] = {
      {"no signature", 510, std::string("\0\0", 2)},
      {"zero bytes per sector", 11, std::string("\0\0", 2)},
      {"odd bytes per sector", 11, std::string("\x00\x03", 2)},
      {"zero sectors per cluster", 13, std::string("\0", 1)},
      {"three sectors per cluster", 13, std::string("\3", 1)},
      {"no reserved sectors", 14, std::string("\0\0", 2)},
      {"no FATs", 16, std::string("\0", 1)},
      {"no root entries on FAT16", 17, std::string("\0\0", 2)},
      {"zero FAT size", 22, std::string("\0\0", 2)},
      {"larger than the partition", 19, std::string("\xff\xff", 2)},
  };
  for (const Case& c : cases) {
    testing::WriteAll(image, pristine);
    Patch(image, c.at, c.bytes);
    if (std::string_view(c.what) == "larger than the partition") {
      // Moved into the 32-bit count, which wins when the 16-bit one is zero.
      Patch(image, 19, std::string("\0\0", 2));
      Patch(image, 32, std::string("\xff\xff\xff\x00", 4));
    }
    auto fd = OpenFile(image, O_RDONLY);
    ASSERT_TRUE(fd.ok());
    auto fat = FatReader::Open(ReadFromFd(fd->get()), 0, pristine.size());
    ASSERT_FALSE(fat.ok()) << c.what;
    EXPECT_EQ(fat.status().code(), Code::kInvalid) << c.what;
  }
  auto fd = OpenFile(image, O_RDONLY);
  EXPECT_FALSE(FatReader::Open(ReadFromFd(fd->get()), 0, 100).ok());
}

class FatChain : public ::testing::Test {
 protected:
  void SetUp() override {
    image_ = MakeFat(dir_, 16, 16384);
    std::string img = ReadAll(image_);
    fat_offset_ = uint64_t{Le16At(img, 14)} * Le16At(img, 11);
  }
  // Overwrites the FAT16 entry of `cluster` in both FATs' first copy.
  void SetEntry(uint32_t cluster, uint16_t value) {
    char b[2] = {static_cast<char>(value & 0xFF), static_cast<char>(value >> 8)};
    Patch(image_, fat_offset_ + 2 * cluster, std::string_view(b, 2));
  }
  FatReader::Entry Find(const std::string& path) {
    Opened o = OpenFat(image_);
    auto found = o.fat.Lookup(path);
    EXPECT_TRUE(found.ok() && found->has_value());
    return (*found)->entry;
  }
  TempDir dir_;
  std::string image_;
  uint64_t fat_offset_ = 0;
};

TEST_F(FatChain, ALinkOutsideTheClustersIsInvalid) {
  FatReader::Entry big = Find("big.bin");
  SetEntry(big.first_cluster, 0xFFF0);
  Opened o = OpenFat(image_);
  auto data = o.fat.ReadFile(big, 1 << 20);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), Code::kInvalid);
}

TEST_F(FatChain, AFreeClusterInAChainIsInvalid) {
  FatReader::Entry big = Find("big.bin");
  SetEntry(big.first_cluster, 0x0000);
  Opened o = OpenFat(image_);
  EXPECT_EQ(o.fat.ReadFile(big, 1 << 20).status().code(), Code::kInvalid);
}

TEST_F(FatChain, ALoopingDirectoryEndsWithAnError) {
  FatReader::Entry efi = Find("EFI");
  SetEntry(efi.first_cluster, static_cast<uint16_t>(efi.first_cluster));
  Opened o = OpenFat(image_);
  auto entries = o.fat.ReadDir(&efi);
  EXPECT_FALSE(entries.ok());
}

TEST_F(FatChain, AFileShorterThanItsSizeIsInvalid) {
  FatReader::Entry shim = Find("EFI/debian/shimx64.efi");
  shim.size = 50000;  // the chain holds one cluster
  Opened o = OpenFat(image_);
  EXPECT_EQ(o.fat.ReadFile(shim, 1 << 20).status().code(), Code::kInvalid);
}

// Random damage in the metadata area never crashes or hangs the reader.
TEST(FatReader, SurvivesRandomDamage) {
  TempDir dir;
  std::string image = MakeFat(dir, 12, 2048);
  std::string pristine = ReadAll(image);
  std::mt19937 rng(42);
  for (int round = 0; round < 200; ++round) {
    std::string damaged = pristine;
    for (int k = 0; k < 8; ++k) damaged[rng() % 16384] = static_cast<char>(rng());
    testing::WriteAll(image, damaged);
    auto fd = OpenFile(image, O_RDONLY);
    ASSERT_TRUE(fd.ok());
    auto fat = FatReader::Open(ReadFromFd(fd->get()), 0, damaged.size());
    if (!fat.ok()) continue;
    for (const EspFile& f : SampleFiles()) {
      auto found = fat->Lookup(f.path);
      if (found.ok() && found->has_value() && !(*found)->entry.directory) {
        (void)fat->ReadFile((*found)->entry, 1 << 20);
      }
    }
  }
}

}  // namespace
}  // namespace byoi
