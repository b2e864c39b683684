#include <gtest/gtest.h>

#include "agent/base/messages.hpp"
#include "agent/boot/esp.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::BuildDisk;
using testing::DiskSpec;
using testing::EspFile;
using testing::SfdiskJson;
using testing::TempDir;
using testing::Utf16LeWithBom;

std::string Lower(std::string s) {
  for (char& c : s) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
  return s;
}

TEST(FindEsp, GptEspMatchesThePartitionTable) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDisk(disk, DiskSpec{});
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto table = SfdiskJson(disk);
  const auto& p1 = table.at("partitions").as_array().at(0).as_object();
  EXPECT_EQ(esp->table, PartitionTableType::kGpt);
  EXPECT_EQ(esp->sector_size, 512u);
  EXPECT_EQ(esp->partition_number, 1u);
  EXPECT_EQ(esp->start_lba, p1.at("start").to_number<uint64_t>());
  EXPECT_EQ(esp->size_lba, p1.at("size").to_number<uint64_t>());
  EXPECT_EQ(esp->partition_guid, Lower(std::string(p1.at("uuid").as_string())));
  EXPECT_EQ(esp->offset_bytes(), 1u << 20);
}

TEST(FindEsp, MbrEspCarriesTheDiskSignature) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.mbr = true;
  spec.fat_bits = 16;
  BuildDisk(disk, spec);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  EXPECT_EQ(esp->table, PartitionTableType::kMbr);
  EXPECT_EQ(esp->mbr_signature, 0x1234abcdu);
  EXPECT_EQ(esp->partition_number, 1u);
  EXPECT_EQ(esp->start_lba, 2048u);
  EXPECT_EQ(esp->size_lba, spec.esp_mib * 2048);
  EXPECT_EQ(esp->partition_guid, "");
}

TEST(FindEsp, ADiskWithoutPartitionTableHasNoEsp) {
  TempDir dir;
  std::string disk = dir / "blank.img";
  testing::WriteAll(disk, std::string(1 << 20, '\0'));
  auto esp = FindEsp(disk);
  ASSERT_FALSE(esp.ok());
  EXPECT_EQ(esp.status().code(), Code::kNotFound);
  EXPECT_EQ(esp.status().message(), "");
}

TEST(FindEsp, LinuxPartitionsOnlyMeanNoEsp) {
  for (bool mbr : {false, true}) {
    TempDir dir;
    std::string disk = dir / "disk.img";
    DiskSpec spec;
    spec.mbr = mbr;
    spec.esp_type = false;
    BuildDisk(disk, spec);
    auto esp = FindEsp(disk);
    ASSERT_FALSE(esp.ok());
    EXPECT_EQ(esp.status().code(), Code::kNotFound) << esp.status().ToString();
    EXPECT_NE(esp.status().detail().find("no EFI system partition"), std::string::npos);
  }
}

TEST(FindEsp, AnUnformattedEspIsInvalid) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.format = false;
  BuildDisk(disk, spec);
  auto esp = FindEsp(disk);
  ASSERT_FALSE(esp.ok());
  EXPECT_EQ(esp.status().code(), Code::kInvalid);
  EXPECT_NE(esp.status().detail().find("not a FAT file system"), std::string::npos);
}

TEST(FindEsp, AMissingDiskIsAnIoError) {
  auto esp = FindEsp("/nonexistent/disk");
  ASSERT_FALSE(esp.ok());
  EXPECT_EQ(esp.status().code(), Code::kIo);
}

// One ESP layout and what the search must return.
struct LoaderCase {
  const char* name;
  std::vector<EspFile> files;
  std::string wanted;  // efiBootloaderPath
  std::string path;    // expected loader, "" when none is found
  std::string csv_label;
  std::string os_dir;
  std::string found_by;
  std::string missing_message;  // the catalogue message when none is found
};

const std::string kCsv = Utf16LeWithBom("shimx64.efi,debian,,This is the boot entry for debian\n");

std::vector<LoaderCase> LoaderCases() {
  return {
      {"ShimCsv",
       {{"EFI/debian/BOOTX64.CSV", kCsv},
        {"EFI/debian/shimx64.efi", "shim"},
        {"EFI/debian/grubx64.efi", "grub"},
        {"EFI/BOOT/BOOTX64.EFI", "shim"},
        {"EFI/BOOT/fbx64.efi", "fallback"}},
       "",
       "\\EFI\\debian\\shimx64.efi",
       "debian",
       "debian",
       "BOOTX64.CSV",
       ""},
      {"CsvNamingAMissingLoaderIsSkipped",
       {{"EFI/centos/BOOTX64.CSV", Utf16LeWithBom("nothere.efi,CentOS\n")},
        {"EFI/centos/shimx64.efi", "shim"}},
       "",
       "\\EFI\\centos\\shimx64.efi",
       "",
       "centos",
       "shim",
       ""},
      {"ShimWithoutCsv",
       {{"EFI/ubuntu/shimx64.efi", "shim"}, {"EFI/ubuntu/grubx64.efi", "grub"}},
       "",
       "\\EFI\\ubuntu\\shimx64.efi",
       "",
       "ubuntu",
       "shim",
       ""},
      {"GrubOnly",
       {{"EFI/debian/grubx64.efi", "grub"}},
       "",
       "\\EFI\\debian\\grubx64.efi",
       "",
       "debian",
       "grub",
       ""},
      {"GrubInEfiBootDoesNotBypassTheFallback",
       {{"EFI/BOOT/grubx64.efi", "grub"}, {"EFI/BOOT/BOOTX64.EFI", "shim"}},
       "",
       "\\EFI\\BOOT\\BOOTX64.EFI",
       "",
       "",
       "fallback",
       ""},
      {"SystemdBoot",
       {{"EFI/systemd/systemd-bootx64.efi", "sd"}, {"EFI/BOOT/BOOTX64.EFI", "sd"}},
       "",
       "\\EFI\\systemd\\systemd-bootx64.efi",
       "",
       "systemd",
       "systemd-boot",
       ""},
      {"FallbackOnly",
       {{"EFI/BOOT/BOOTX64.EFI", "x"}},
       "",
       "\\EFI\\BOOT\\BOOTX64.EFI",
       "",
       "",
       "fallback",
       ""},
      {"OsDirectoriesInNameOrder",
       {{"EFI/ubuntu/grubx64.efi", "u"}, {"EFI/Debian/grubx64.efi", "d"}},
       "",
       "\\EFI\\Debian\\grubx64.efi",
       "",
       "Debian",
       "grub",
       ""},
      {"NothingBootable",
       {{"EFI/debian/readme.txt", "x"}},
       "",
       "",
       "",
       "",
       "",
       "EFI bootloader \\EFI\\BOOT\\BOOTX64.EFI not found on the EFI system partition."},
      {"WantedPathAnyCaseAndSlashes",
       {{"EFI/debian/grubx64.efi", "grub"}, {"EFI/debian/shimx64.efi", "shim"}},
       "/efi/DEBIAN/GRUBX64.EFI",
       "\\EFI\\debian\\grubx64.efi",
       "",
       "debian",
       "efiBootloaderPath",
       ""},
      {"WantedPathMissing",
       {{"EFI/debian/shimx64.efi", "shim"}},
       "\\efi\\debian\\grubx64.efi",
       "",
       "",
       "",
       "",
       "EFI bootloader \\efi\\debian\\grubx64.efi not found on the EFI system partition."},
      {"WantedPathIsADirectory",
       {{"EFI/debian/shimx64.efi", "shim"}},
       "\\EFI\\debian",
       "",
       "",
       "",
       "",
       "EFI bootloader \\EFI\\debian not found on the EFI system partition."},
  };
}

class FindBootLoaderTest : public ::testing::TestWithParam<LoaderCase> {};

TEST_P(FindBootLoaderTest, FollowsTheSearchOrder) {
  const LoaderCase& c = GetParam();
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.files = c.files;
  BuildDisk(disk, spec);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto loader = FindBootLoader(disk, *esp, c.wanted);
  if (c.path.empty()) {
    ASSERT_FALSE(loader.ok());
    EXPECT_EQ(loader.status().code(), Code::kNotFound);
    EXPECT_EQ(loader.status().message(), c.missing_message);
    return;
  }
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ(loader->path, c.path);
  EXPECT_EQ(loader->csv_label, c.csv_label);
  EXPECT_EQ(loader->os_dir, c.os_dir);
  EXPECT_EQ(loader->found_by, c.found_by);
}

INSTANTIATE_TEST_SUITE_P(Layouts, FindBootLoaderTest, ::testing::ValuesIn(LoaderCases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(FindBootLoader, MbrEspWithFat12IsReadToo) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  spec.mbr = true;
  spec.esp_mib = 2;
  spec.fat_bits = 12;
  spec.files = {{"EFI/BOOT/BOOTX64.EFI", "x"}};
  BuildDisk(disk, spec);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto loader = FindBootLoader(disk, *esp, "");
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ(loader->path, "\\EFI\\BOOT\\BOOTX64.EFI");
}

TEST(FindBootLoader, ACorruptFileSystemIsInvalid) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDisk(disk, DiskSpec{});
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok());
  EspLocation shifted = *esp;
  shifted.start_lba += 1;  // no boot sector there
  auto loader = FindBootLoader(disk, shifted, "");
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), Code::kInvalid);
  EXPECT_EQ(loader.status().message(), "");
}

// Names read from the ESP go into NVRAM, the status and the console: a directory or file whose
// name is not printable ASCII is passed over, and said so (esp.hpp).
constexpr char kSkippedEsc[] =
    "skipped \\EFI\\e\\x1b[2Jbian on the EFI system partition: its name is not printable ASCII";

// An ESP whose \EFI\eXXXXbian (grubx64.efi inside) is stored as "e" ESC "[2Jbian" (the marker is
// within the first 5 characters, which one long-name field holds together).
void BuildDiskWithEscInADirectoryName(const std::string& disk, std::vector<EspFile> more = {}) {
  DiskSpec spec;
  spec.files = {{"EFI/eXXXXbian/grubx64.efi", "grub"}};
  spec.files.insert(spec.files.end(), more.begin(), more.end());
  BuildDisk(disk, spec);
  testing::ReplaceLongName(disk, "eXXXX", u"e\x1b[2J");
}

TEST(FindBootLoader, ADirectoryNamedWithAnEscapeSequenceIsSkipped) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDiskWithEscInADirectoryName(disk, {{"EFI/BOOT/BOOTX64.EFI", "shim"}});
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto loader = FindBootLoader(disk, *esp, "");
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ(loader->path, "\\EFI\\BOOT\\BOOTX64.EFI");
  EXPECT_EQ(loader->found_by, "fallback");
  EXPECT_EQ(loader->skipped, std::vector<std::string>{kSkippedEsc});
}

TEST(FindBootLoader, AC1ControlInADirectoryNameIsSkippedToo) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  DiskSpec spec;
  // U+009B (CSI on some terminals), written by mtools from UTF-8.
  spec.files = {{"EFI/de\xc2\x9b"
                 "bian/shimx64.efi",
                 "shim"},
                {"EFI/ubuntu/grubx64.efi", "grub"}};
  BuildDisk(disk, spec);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto loader = FindBootLoader(disk, *esp, "");
  ASSERT_TRUE(loader.ok()) << loader.status().ToString();
  EXPECT_EQ(loader->path, "\\EFI\\ubuntu\\grubx64.efi");
  EXPECT_EQ(loader->skipped,
            std::vector<std::string>{"skipped \\EFI\\de\\u009bbian on the EFI system partition: "
                                     "its name is not printable ASCII"});
}

TEST(FindBootLoader, WhenOnlyASkippedLoaderIsThereNoneIsFoundAndTheDetailSaysWhy) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDiskWithEscInADirectoryName(disk);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  auto loader = FindBootLoader(disk, *esp, "");
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), Code::kNotFound);
  EXPECT_EQ(loader.status().message(),
            "EFI bootloader \\EFI\\BOOT\\BOOTX64.EFI not found on the EFI system partition.");
  EXPECT_NE(loader.status().detail().find(std::string("; ") + kSkippedEsc), std::string::npos)
      << loader.status().detail();
  EXPECT_EQ(loader.status().detail().find('\x1b'), std::string::npos);
}

TEST(FindBootLoader, AWantedPathMatchingAFileStoredUnderAControlNameIsRefused) {
  TempDir dir;
  std::string disk = dir / "disk.img";
  BuildDiskWithEscInADirectoryName(disk);
  auto esp = FindEsp(disk);
  ASSERT_TRUE(esp.ok()) << esp.status().ToString();
  // A plain path (as the manifest allows) reaching the directory through its 8.3 name.
  auto loader = FindBootLoader(disk, *esp, "\\EFI\\EXXXXB~1\\grubx64.efi");
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), Code::kInvalid);
  EXPECT_EQ(loader.status().message(),
            "EFI bootloader \\EFI\\EXXXXB~1\\grubx64.efi not found on the EFI system partition.");
  EXPECT_EQ(loader.status().detail(),
            "skipped \\EFI\\e\\x1b[2Jbian\\grubx64.efi on the EFI system partition: its name is "
            "not printable ASCII of " +
                disk);
}

TEST(ShimCsv, ParsesTheFormsShimAndOthersWrite) {
  struct Case {
    std::string bytes;
    std::string loader, label;
  } cases[] = {
      {Utf16LeWithBom("shimx64.efi,debian,,This is the boot entry for debian\n"), "shimx64.efi",
       "debian"},
      {Utf16LeWithBom("shimx64.efi,Red Hat Enterprise Linux,,This is the boot entry\r\n"),
       "shimx64.efi", "Red Hat Enterprise Linux"},
      {Utf16LeWithBom("\n\n  grubx64.efi , ubuntu \n"), "grubx64.efi", "ubuntu"},
      {std::string("s\0h\0i\0m\0.\0e\0f\0i\0,\0x\0", 20), "shim.efi", "x"},  // no BOM
      {"shimx64.efi,plain utf8\n", "shimx64.efi", "plain utf8"},
      {"\xEF\xBB\xBFshimx64.efi,bom8\n", "shimx64.efi", "bom8"},
      {"loader-only.efi", "loader-only.efi", ""},
      {"", "", ""},
      {Utf16LeWithBom(""), "", ""},
      {Utf16LeWithBom("") + "A", "", ""},  // a lone trailing byte is no character
  };
  for (const Case& c : cases) {
    ShimCsvEntry e = ParseShimCsv(c.bytes);
    EXPECT_EQ(e.loader, c.loader) << c.bytes;
    EXPECT_EQ(e.label, c.label) << c.bytes;
  }
}

}  // namespace
}  // namespace byoi
