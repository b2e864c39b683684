// The boot step end to end on real loop devices (512- and 4096-byte sectors): find the ESP and the
// loader, install the entry into a plain directory standing in for efivarfs, then decode every
// byte we wrote against the loop device's partition table as sfdisk reads it, and against what
// efibootmgr itself writes for the same partition and loader.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "agent/base/messages.hpp"
#include "agent/boot/boot_entry.hpp"
#include "agent/boot/efi_vars.hpp"
#include "agent/boot/esp.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::DiskSpec;
using testing::EspFile;
using testing::MustRun;
using testing::PxeLoadOption;
using testing::ReadAll;
using testing::Run;
using testing::TempDir;
using testing::Utf16LeWithBom;
using Bytes = std::vector<uint8_t>;

// A loop device over a file, detached on destruction.
class LoopDevice {
 public:
  LoopDevice(const std::string& file, uint32_t sector_size) {
    std::string out;
    int rc = Run({"losetup", "-f", "--show", "-b", std::to_string(sector_size), file}, &out);
    if (rc == 0 && !out.empty()) path_ = out.substr(0, out.find('\n'));
  }
  ~LoopDevice() {
    if (!path_.empty()) Run({"losetup", "-d", path_});
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// An independent reader of the little-endian fields, so the check does not reuse our parser.
class Cursor {
 public:
  explicit Cursor(const std::string& bytes) : b_(bytes) {}
  uint64_t Le(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b_.at(pos_ + i))) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string Raw(size_t n) {
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // A NUL-terminated UTF-16LE string of ASCII characters.
  std::string Ucs2() {
    std::string out;
    for (;;) {
      uint64_t c = Le(2);
      if (c == 0) return out;
      EXPECT_LT(c, 0x80u);
      out += static_cast<char>(c);
    }
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& b_;
  size_t pos_ = 0;
};

// GPT's on-disk form of a GUID written as text: the first three groups byte-swapped.
std::string GuidBytes(std::string text) {
  std::string hex;
  for (char c : text) {
    if (c != '-') hex += c;
  }
  std::string raw;
  for (size_t i = 0; i < 32; i += 2)
    raw += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return std::string{raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6]} +
         raw.substr(8);
}

std::string U16s(std::initializer_list<uint16_t> values) {
  std::string out;
  for (uint16_t v : values) {
    out += static_cast<char>(v & 0xff);
    out += static_cast<char>(v >> 8);
  }
  return out;
}

std::string VarFile(const TempDir& dir, const std::string& name) {
  return dir / (name + "-8be4df61-93ca-11d2-aa0d-00e098032b8c");
}

// Checks every byte of the Boot#### file against the partition table of `disk` (sfdisk).
void ExpectEntryBytes(const std::string& file, const std::string& disk, uint32_t sector_size,
                      const std::string& label, const std::string& loader) {
  std::string bytes = ReadAll(file);
  ASSERT_FALSE(bytes.empty()) << file;
  auto table = testing::SfdiskJson(disk);
  ASSERT_EQ(table.at("sectorsize").to_number<uint32_t>(), sector_size);
  const auto& p1 = table.at("partitions").as_array().at(0).as_object();
  Cursor c(bytes);
  EXPECT_EQ(c.Le(4), 0x7u) << "variable attributes NV|BS|RT";
  EXPECT_EQ(c.Le(4), 0x1u) << "LOAD_OPTION_ACTIVE";
  size_t file_node_len = 4 + 2 * (loader.size() + 1);
  EXPECT_EQ(c.Le(2), 42 + file_node_len + 4) << "FilePathListLength";
  EXPECT_EQ(c.Ucs2(), label);
  // HD(): media / hard drive, 42 bytes.
  EXPECT_EQ(c.Le(1), 0x04u);
  EXPECT_EQ(c.Le(1), 0x01u);
  EXPECT_EQ(c.Le(2), 42u);
  EXPECT_EQ(c.Le(4), 1u) << "partition number";
  EXPECT_EQ(c.Le(8), p1.at("start").to_number<uint64_t>()) << "start LBA";
  EXPECT_EQ(c.Le(8), p1.at("size").to_number<uint64_t>()) << "size in LBA";
  EXPECT_EQ(c.Raw(16), GuidBytes(std::string(p1.at("uuid").as_string()))) << "partition GUID";
  EXPECT_EQ(c.Le(1), 0x02u) << "GPT";
  EXPECT_EQ(c.Le(1), 0x02u) << "GUID signature";
  // File(): media / file path.
  EXPECT_EQ(c.Le(1), 0x04u);
  EXPECT_EQ(c.Le(1), 0x04u);
  EXPECT_EQ(c.Le(2), file_node_len);
  EXPECT_EQ(c.Ucs2(), loader);
  // End of the entire device path.
  EXPECT_EQ(c.Le(1), 0x7fu);
  EXPECT_EQ(c.Le(1), 0xffu);
  EXPECT_EQ(c.Le(2), 4u);
  EXPECT_EQ(c.pos(), bytes.size()) << "no optional data";
}

using NvramSetup = std::function<void(EfiVars&, const EspLocation&)>;

struct Scenario {
  const char* name;
  std::vector<EspFile> files;
  std::string wanted;       // efiBootloaderPath
  std::string description;  // the manifest's
  NvramSetup nvram;
  BootOrderPolicy policy;
  // Expected:
  std::string loader;  // "" = loader not found (message below)
  std::string label;
  uint16_t number;
  std::string boot_order;           // BootOrder file content after the attributes; "-" = absent
  std::string boot_next;            // "-" = absent
  std::vector<std::string> absent;  // variables that must be gone
  std::string message;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

const std::vector<EspFile> kShimLayout = {
    {"EFI/debian/BOOTX64.CSV",
     Utf16LeWithBom("shimx64.efi,debian,,This is the boot entry for debian\r\n")},
    {"EFI/debian/shimx64.efi", "shim"},
    {"EFI/debian/grubx64.efi", "grub"},
    {"EFI/debian/mmx64.efi", "mm"},
    {"EFI/BOOT/BOOTX64.EFI", "shim"},
    {"EFI/BOOT/fbx64.efi", "fb"}};
const std::vector<EspFile> kGrubLayout = {{"EFI/debian/grubx64.efi", "grub"}};

void Put(EfiVars& vars, const std::string& name, const Bytes& data) {
  ASSERT_TRUE(vars.Write(name, {kEfiBootVariableAttributes, data}).ok());
}
Bytes B(const std::string& s) { return Bytes(s.begin(), s.end()); }

void Fresh(EfiVars&, const EspLocation&) {}
void Pxe(EfiVars& vars, const EspLocation&) {
  Put(vars, "Boot0000", PxeLoadOption("UEFI PXEv4 (MAC:525400123456)"));
  Put(vars, "Boot0001", PxeLoadOption("UEFI PXEv6 (MAC:525400123456)", true));
  Put(vars, "BootOrder", B(U16s({0, 1})));
}
// Our entry from an earlier install of the same image (same partition GUID), in another case.
void Duplicate(EfiVars& vars, const EspLocation& esp) {
  Pxe(vars, esp);
  auto hd = HardDriveNodeFor(esp);
  Put(vars, "Boot0004", *EncodeLoadOption(*hd, "\\efi\\DEBIAN\\grubx64.EFI", "debian"));
  Put(vars, "BootOrder", B(U16s({0, 4, 1})));
}
// "debian" from an earlier install on another disk (or before this disk was rewritten).
void SameLabelOtherDisk(EfiVars& vars, const EspLocation& esp) {
  Pxe(vars, esp);
  EspLocation other = esp;
  other.partition_guid = "0a0b0c0d-1111-2222-3333-444455556666";
  auto hd = HardDriveNodeFor(other);
  Put(vars, "Boot0002", *EncodeLoadOption(*hd, "\\EFI\\debian\\shimx64.efi", "debian"));
  Put(vars, "BootOrder", B(U16s({2, 0, 1})));
}

std::vector<Scenario> Scenarios() {
  return {
      {"FreshNvramShimCsv",
       kShimLayout,
       "",
       "",
       Fresh,
       BootOrderPolicy::kFirst,
       "\\EFI\\debian\\shimx64.efi",
       "debian",
       0,
       U16s({0}),
       "-",
       {},
       ""},
      {"PxeEntriesPolicyFirst",
       kGrubLayout,
       "",
       "Debian 12",
       Pxe,
       BootOrderPolicy::kFirst,
       "\\EFI\\debian\\grubx64.efi",
       "Debian 12",
       2,
       U16s({2, 0, 1}),
       "-",
       {},
       ""},
      {"PxeEntriesPolicyAfterNetwork",
       kGrubLayout,
       "",
       "",
       Pxe,
       BootOrderPolicy::kAfterNetwork,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       2,
       U16s({0, 1, 2}),
       "-",
       {},
       ""},
      {"DuplicateEntryReused",
       kGrubLayout,
       "",
       "",
       Duplicate,
       BootOrderPolicy::kFirst,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       4,
       U16s({4, 0, 1}),
       "-",
       {},
       ""},
      {"SameLabelOnAnotherDiskReplaced",
       kShimLayout,
       "",
       "",
       SameLabelOtherDisk,
       BootOrderPolicy::kAfterNetwork,
       "\\EFI\\debian\\shimx64.efi",
       "debian",
       3,
       U16s({0, 1, 3}),
       "-",
       {"Boot0002"},
       ""},
      {"EfiBootloaderPathGiven",
       kShimLayout,
       "/efi/debian/GRUBX64.efi",
       "",
       Fresh,
       BootOrderPolicy::kFirst,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       0,
       U16s({0}),
       "-",
       {},
       ""},
      {"EfiBootloaderPathMissing",
       kGrubLayout,
       "\\EFI\\ubuntu\\shimx64.efi",
       "",
       Pxe,
       BootOrderPolicy::kFirst,
       "",
       "",
       0,
       "",
       "",
       {},
       "EFI bootloader \\EFI\\ubuntu\\shimx64.efi not found on the EFI system partition."},
      {"GrubOnly",
       kGrubLayout,
       "",
       "",
       Fresh,
       BootOrderPolicy::kFirst,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       0,
       U16s({0}),
       "-",
       {},
       ""},
      {"FallbackOnly",
       {{"EFI/BOOT/BOOTX64.EFI", "x"}},
       "",
       "",
       Fresh,
       BootOrderPolicy::kFirst,
       "\\EFI\\BOOT\\BOOTX64.EFI",
       "BYOI",
       0,
       U16s({0}),
       "-",
       {},
       ""},
      {"BootNextOnly",
       kGrubLayout,
       "",
       "",
       Pxe,
       BootOrderPolicy::kBootNext,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       2,
       U16s({0, 1}),
       U16s({2}),
       {},
       ""},
      {"PolicyNone",
       kGrubLayout,
       "",
       "",
       Pxe,
       BootOrderPolicy::kNone,
       "\\EFI\\debian\\grubx64.efi",
       "debian",
       0,
       U16s({0, 1}),
       "-",
       {"Boot0002"},
       ""},
  };
}

class EfiBootEntry : public ::testing::TestWithParam<std::tuple<Scenario, uint32_t>> {};

TEST_P(EfiBootEntry, WritesWhatFirmwareExpects) {
  const auto& [sc, sector_size] = GetParam();
  TempDir dir;
  std::string file = dir / "disk.img";
  { std::ofstream(file, std::ios::binary); }
  std::filesystem::resize_file(file, 64 << 20);
  LoopDevice loop(file, sector_size);
  ASSERT_FALSE(loop.path().empty()) << "losetup failed";
  DiskSpec spec;
  spec.files = sc.files;
  spec.fat_bits = sector_size == 512 ? 32 : 16;
  spec.sectors_per_cluster = 1;  // FAT32 needs more clusters than 40 MiB of 4 KiB
  testing::PartitionAndFormat(loop.path(), spec, sector_size);
  if (HasFatalFailure()) return;

  auto esp = FindEsp(loop.path());
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  EXPECT_EQ(esp->sector_size, sector_size);
  EXPECT_EQ(esp->offset_bytes(), 1u << 20);

  TempDir efivars;
  EfivarfsVars vars(efivars.path());
  sc.nvram(vars, *esp);
  auto before = std::filesystem::directory_iterator(efivars.path());
  size_t vars_before = std::distance(before, std::filesystem::directory_iterator());

  auto loader = FindBootLoader(loop.path(), *esp, sc.wanted);
  if (sc.loader.empty()) {
    ASSERT_FALSE(loader.ok());
    EXPECT_EQ(loader.status().message(), sc.message);
    return;
  }
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ(loader->path, sc.loader);
  std::string label = ChooseBootLabel(*loader, sc.description);
  EXPECT_EQ(label, sc.label);

  auto result = InstallBootEntry(vars, BootEntryRequest{*esp, loader->path, label}, sc.policy);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  for (const std::string& name : sc.absent) {
    EXPECT_FALSE(std::filesystem::exists(VarFile(efivars, name))) << name;
  }
  if (sc.policy == BootOrderPolicy::kNone) {
    auto after = std::filesystem::directory_iterator(efivars.path());
    EXPECT_EQ(std::distance(after, std::filesystem::directory_iterator()), vars_before);
    return;
  }
  EXPECT_EQ(result->number, sc.number);
  ExpectEntryBytes(VarFile(efivars, BootVariableName(sc.number)), loop.path(), sector_size,
                   sc.label, sc.loader);
  std::string attrs("\x07\x00\x00\x00", 4);
  EXPECT_EQ(ReadAll(VarFile(efivars, "BootOrder")),
            sc.boot_order == "-" ? "" : attrs + sc.boot_order);
  EXPECT_EQ(ReadAll(VarFile(efivars, "BootNext")), sc.boot_next == "-" ? "" : attrs + sc.boot_next);
}

INSTANTIATE_TEST_SUITE_P(Scenarios, EfiBootEntry,
                         ::testing::Combine(::testing::ValuesIn(Scenarios()),
                                            ::testing::Values(512u, 4096u)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param).name) + "_" +
                                  std::to_string(std::get<1>(info.param));
                         });

// efibootmgr, built on the same libefiboot, is what administrators use and what firmware has been
// booting for years: for the same partition and loader our variable must be identical.
class EfibootmgrOracle : public ::testing::TestWithParam<uint32_t> {};

TEST_P(EfibootmgrOracle, OurEntryIsByteForByteWhatEfibootmgrWrites) {
  uint32_t sector_size = GetParam();
  TempDir dir;
  std::string file = dir / "disk.img";
  { std::ofstream(file, std::ios::binary); }
  std::filesystem::resize_file(file, 64 << 20);
  LoopDevice loop(file, sector_size);
  ASSERT_FALSE(loop.path().empty());
  DiskSpec spec;
  spec.files = kGrubLayout;
  spec.fat_bits = sector_size == 512 ? 32 : 16;
  spec.sectors_per_cluster = 1;
  testing::PartitionAndFormat(loop.path(), spec, sector_size);
  if (HasFatalFailure()) return;

  TempDir ours, theirs;
  EfivarfsVars vars(ours.path());
  auto esp = FindEsp(loop.path());
  ASSERT_TRUE(esp.ok());
  auto loader = FindBootLoader(loop.path(), *esp, "");
  ASSERT_TRUE(loader.ok());
  auto r = InstallBootEntry(vars, {*esp, loader->path, "debian"}, BootOrderPolicy::kFirst);
  ASSERT_TRUE(r.ok()) << r.status().ToString();

  std::string out, err;
  int rc = testing::Run(
      {"efibootmgr", "-c", "-d", loop.path(), "-p", "1", "-l", loader->path, "-L", "debian"}, &out,
      &err, {"EFIVARFS_PATH=" + theirs.path() + "/"});
  ASSERT_EQ(rc, 0) << "efibootmgr (scripts/setup installs it): " << err;
  EXPECT_EQ(ReadAll(VarFile(ours, "Boot0000")), ReadAll(VarFile(theirs, "Boot0000")));
  EXPECT_EQ(ReadAll(VarFile(ours, "BootOrder")), ReadAll(VarFile(theirs, "BootOrder")));

  // And efibootmgr reads ours back as its own.
  out.clear();
  rc = testing::Run({"efibootmgr", "-v"}, &out, &err, {"EFIVARFS_PATH=" + ours.path() + "/"});
  ASSERT_EQ(rc, 0) << err;
  EXPECT_NE(out.find("Boot0000* debian\tHD(1,GPT," + esp->partition_guid), std::string::npos)
      << out;
  EXPECT_NE(out.find("/File(\\EFI\\debian\\grubx64.efi)"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(SectorSizes, EfibootmgrOracle, ::testing::Values(512u, 4096u));

// efivarfs marks variables immutable; a write or a delete clears the flag first.
TEST(EfiVarsImmutable, WriteAndDeleteClearTheImmutableFlag) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  ASSERT_TRUE(vars.Write("Boot0001", {7, {1, 2}}).ok());
  auto set_immutable = [&] {
    int fd = ::open(vars.PathOf("Boot0001").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    int flags = 0;
    ASSERT_EQ(ioctl(fd, FS_IOC_GETFLAGS, &flags), 0);
    flags |= FS_IMMUTABLE_FL;
    ASSERT_EQ(ioctl(fd, FS_IOC_SETFLAGS, &flags), 0);
    ::close(fd);
    ASSERT_LT(::open(vars.PathOf("Boot0001").c_str(), O_WRONLY), 0) << "flag not effective";
  };
  set_immutable();
  ASSERT_TRUE(vars.Write("Boot0001", {7, {3}}).ok());
  EXPECT_EQ(vars.Read("Boot0001")->data, (Bytes{3}));
  set_immutable();
  EXPECT_TRUE(vars.Delete("Boot0001").ok());
  EXPECT_FALSE(std::filesystem::exists(vars.PathOf("Boot0001")));
}

}  // namespace
}  // namespace byoi
