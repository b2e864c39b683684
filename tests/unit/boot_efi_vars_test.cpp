#include <gtest/gtest.h>

#include <filesystem>

#include "agent/boot/efi_vars.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

std::string FileOf(const TempDir& dir, const std::string& name) {
  return dir / (name + "-8be4df61-93ca-11d2-aa0d-00e098032b8c");
}

TEST(EfiVars, WriteIsAttributesThenDataInTheGlobalNamespace) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  ASSERT_TRUE(vars.Write("BootOrder", {kEfiBootVariableAttributes, {0x03, 0x00, 0x01, 0x00}}).ok());
  EXPECT_EQ(ReadAll(FileOf(dir, "BootOrder")), std::string("\x07\x00\x00\x00\x03\x00\x01\x00", 8));
  EXPECT_EQ(vars.PathOf("BootOrder"), FileOf(dir, "BootOrder"));
}

TEST(EfiVars, ReadReturnsWhatWasWritten) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  EfiVariable var{0x27, {1, 2, 3, 4, 5}};
  ASSERT_TRUE(vars.Write("Boot0001", var).ok());
  auto back = vars.Read("Boot0001");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, var);
}

TEST(EfiVars, WriteReplacesALongerVariable) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  ASSERT_TRUE(vars.Write("BootOrder", {7, std::vector<uint8_t>(100, 0xAA)}).ok());
  ASSERT_TRUE(vars.Write("BootOrder", {7, {0x05, 0x00}}).ok());
  EXPECT_EQ(ReadAll(FileOf(dir, "BootOrder")), std::string("\x07\x00\x00\x00\x05\x00", 6));
}

TEST(EfiVars, ReadOfAMissingVariableIsNotFound) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  auto r = vars.Read("BootNext");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

TEST(EfiVars, ReadOfAVariableShorterThanItsAttributesIsInvalid) {
  TempDir dir;
  WriteAll(FileOf(dir, "BootNext"), std::string("\x07\x00", 2));
  EfivarfsVars vars(dir.path());
  auto r = vars.Read("BootNext");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalid);
}

TEST(EfiVars, ReadOfAnOversizedVariableIsInvalid) {
  TempDir dir;
  WriteAll(FileOf(dir, "Boot0000"), std::string(kMaxEfiVariableBytes + 5, 'x'));
  EfivarfsVars vars(dir.path());
  auto r = vars.Read("Boot0000");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalid);
}

TEST(EfiVars, WriteOfAnOversizedVariableIsRefused) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  Status s = vars.Write("Boot0000", {7, std::vector<uint8_t>(kMaxEfiVariableBytes + 1)});
  EXPECT_EQ(s.code(), Code::kTooBig);
  EXPECT_FALSE(std::filesystem::exists(FileOf(dir, "Boot0000")));
}

TEST(EfiVars, DeleteRemovesAndToleratesAbsence) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  ASSERT_TRUE(vars.Write("Boot0002", {7, {1}}).ok());
  ASSERT_TRUE(vars.Delete("Boot0002").ok());
  EXPECT_FALSE(std::filesystem::exists(FileOf(dir, "Boot0002")));
  EXPECT_TRUE(vars.Delete("Boot0002").ok());
}

TEST(EfiVars, ListShowsOnlyValidNamesOfTheGlobalNamespace) {
  TempDir dir;
  WriteAll(FileOf(dir, "BootOrder"), std::string(6, '\0'));
  WriteAll(FileOf(dir, "Boot0001"), std::string(6, '\0'));
  WriteAll(dir / "SecureBoot-f0000000-0000-0000-0000-000000000000", "x");
  WriteAll(FileOf(dir, "we.ird"), "x");
  WriteAll(dir / "README", "x");
  EfivarfsVars vars(dir.path());
  auto names = vars.List();
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"Boot0001", "BootOrder"}));
}

TEST(EfiVars, NamesThatCouldEscapeTheDirectoryAreRefused) {
  TempDir dir;
  EfivarfsVars vars(dir.path());
  for (const char* name : {"", "../Boot0001", "Boot 1", "a/b", "Boot0001-x"}) {
    EXPECT_FALSE(vars.Write(name, {7, {1}}).ok()) << name;
    EXPECT_FALSE(vars.Read(name).ok()) << name;
    EXPECT_FALSE(vars.Delete(name).ok()) << name;
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(EfiVars, AMissingDirectoryIsAnIoError) {
  TempDir dir;
  EfivarfsVars vars(dir / "absent");
  auto names = vars.List();
  ASSERT_FALSE(names.ok());
  EXPECT_EQ(names.status().code(), Code::kIo);
  EXPECT_NE(names.status().detail().find("absent"), std::string::npos);
  EXPECT_FALSE(vars.Write("BootNext", {7, {0, 0}}).ok());
}

TEST(EfiVars, APlainDirectoryIsNotEfivarfs) {
  TempDir dir;
  EXPECT_FALSE(IsEfivarfs(dir.path()));
  EXPECT_FALSE(IsEfivarfs(dir / "absent"));
}

}  // namespace
}  // namespace byoi
