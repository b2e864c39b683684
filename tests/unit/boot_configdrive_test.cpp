// The config drive: its files, and the vfat it makes on an image file (checked with blkid,
// fsck.fat and mtools).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <set>

#include "agent/boot/configdrive.hpp"
#include "agent/disk/gpt.hpp"
#include "agent/disk/inventory.hpp"
#include "agent/disk/partition_add.hpp"
#include "tests/unit/disk_test_util.hpp"

namespace byoi {
namespace {

using testing::BlkidTag;
using ::testing::HasSubstr;
using testing::MakeFile;
using testing::MustRun;
using testing::TempDir;

constexpr uint64_t kMiB = 1 << 20;

ConfigDriveContent Sample() {
  ConfigDriveContent c;
  c.uuid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
  c.hostname = "web-1";
  c.ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbH me@host";
  c.meta = {{"role", "web"}, {"tier", "front"}};
  c.user_data = "#cloud-config\npackages: [nginx]\n";
  return c;
}

TEST(ConfigDrive, MetaDataHasEveryOpenStackField) {
  boost::json::value md = boost::json::parse(MetaDataJson(Sample()));
  boost::json::value expected = boost::json::parse(R"({
    "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "hostname": "web-1", "name": "web-1",
    "public_keys": {"default": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbH me@host"},
    "keys": [{"name": "default", "type": "ssh",
              "data": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbH me@host"}],
    "meta": {"role": "web", "tier": "front"},
    "launch_index": 0, "availability_zone": "", "devices": [], "project_id": ""})");
  EXPECT_EQ(md, expected);
}

TEST(ConfigDrive, MetaDataWithoutHostnameOrKey) {
  ConfigDriveContent c;
  c.uuid = "u";
  c.meta = {{"a", "1"}, {"a", "2"}};
  boost::json::value md = boost::json::parse(MetaDataJson(c));
  boost::json::value expected = boost::json::parse(R"({
    "uuid": "u", "public_keys": {}, "keys": [], "meta": {"a": "2"},
    "launch_index": 0, "availability_zone": "", "devices": [], "project_id": ""})");
  EXPECT_EQ(md, expected);
}

TEST(ConfigDrive, FilesAreTheSameInBothVersionTrees) {
  auto files = ConfigDriveFiles(Sample());
  std::vector<std::string> names;
  for (const auto& [n, data] : files) names.push_back(n);
  EXPECT_THAT(names,
              ::testing::ElementsAre(
                  "openstack/latest/meta_data.json", "openstack/latest/user_data",
                  "openstack/latest/vendor_data.json", "openstack/2012-08-10/meta_data.json",
                  "openstack/2012-08-10/user_data", "openstack/2012-08-10/vendor_data.json"));
  EXPECT_EQ(files[1].second, "#cloud-config\npackages: [nginx]\n");
  EXPECT_EQ(files[2].second, "{}");
  EXPECT_EQ(files[0].second, files[3].second);
  ConfigDriveContent no_user_data = Sample();
  no_user_data.user_data.reset();
  EXPECT_EQ(ConfigDriveFiles(no_user_data).size(), 4u);
}

TEST(ConfigDrive, UuidIsRandomVersion4) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    std::string u = NewUuid();
    EXPECT_THAT(u, ::testing::MatchesRegex(
                       "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
    seen.insert(u);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(ConfigDrive, ContentFromTheManifest) {
  ConfigDriveSpec m;
  m.enabled = true;
  m.hostname = "db-2";
  m.ssh_key = "ssh-rsa AAAA";
  m.user_data = std::string("\x1f\x8b\x08\x00", 4);
  m.metadata = {{"k", "v"}};
  ConfigDriveContent a = MakeConfigDriveContent(m);
  ConfigDriveContent b = MakeConfigDriveContent(m);
  EXPECT_NE(a.uuid, b.uuid);  // new per job
  EXPECT_EQ(a.hostname, "db-2");
  EXPECT_EQ(a.ssh_key, "ssh-rsa AAAA");
  EXPECT_EQ(*a.user_data, std::string("\x1f\x8b\x08\x00", 4));
  EXPECT_EQ(a.meta, m.metadata);
}

TEST(ConfigDrive, RunProgramReportsExitStatusAndOutput) {
  std::string out;
  EXPECT_TRUE(RunProgram({"echo", "hello"}, testing::ToolEnv(), &out).ok());
  EXPECT_EQ(out, "hello\n");
  Status s = RunProgram({"ls", "/nonexistent-dir"}, testing::ToolEnv());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_THAT(s.detail(), HasSubstr("ls failed (exit status 2): ls: cannot access"));
  Status missing = RunProgram({"/nonexistent/tool"}, testing::ToolEnv());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.detail(), "running /nonexistent/tool: No such file or directory");
}

class ConfigDriveFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    img_ = dir_ / "disk.img";
    MakeFile(img_, 20 * kMiB);
    MustRun({"sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", img_});
    ::truncate(img_.c_str(), 120 * kMiB);
    disk_ = *DescribeTarget(img_);
    ASSERT_TRUE(RelocateBackupGpt(disk_).ok());
    auto p = EnsureConfigDrivePartition(disk_);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    part_ = p->partition;
  }
  std::string Read(const std::string& name) {
    return MustRun(
        {"mtype", "-i", img_ + "@@" + std::to_string(part_.offset_bytes()), "::" + name});
  }

  TempDir dir_;
  std::string img_;
  Disk disk_;
  Partition part_;
};

TEST_F(ConfigDriveFileTest, WritesAVfatLabelledConfig2WithTheFiles) {
  ConfigDriveContent c = Sample();
  Status s = WriteConfigDrive(disk_, part_, c);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(BlkidTag(img_, part_.offset_bytes(), "TYPE"), "vfat");
  EXPECT_EQ(BlkidTag(img_, part_.offset_bytes(), "LABEL"), "config-2");
  EXPECT_EQ(Read("openstack/latest/meta_data.json"), MetaDataJson(c));
  EXPECT_EQ(Read("openstack/2012-08-10/meta_data.json"), MetaDataJson(c));
  EXPECT_EQ(Read("openstack/latest/user_data"), *c.user_data);
  EXPECT_EQ(Read("openstack/2012-08-10/vendor_data.json"), "{}");

  // fsck.fat has no offset option: check a copy of the partition.
  std::string part_copy = dir_ / "part.img";
  MakeFile(part_copy, 0);
  {
    std::string bytes = testing::ReadBytes(img_, part_.offset_bytes(), part_.size_bytes());
    UniqueFd fd(::open(part_copy.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(
        PwriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, 0)
            .ok());
  }
  MustRun({"fsck.fat", "-n", part_copy});
  // The rest of the table is untouched.
  EXPECT_THAT(MustRun({"sgdisk", "-v", img_}), HasSubstr("No problems found."));
}

TEST_F(ConfigDriveFileTest, BinaryUserDataIsStoredAsIs) {
  ConfigDriveContent c = Sample();
  std::string gz("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x00\xff\x00\x00", 14);
  c.user_data = gz;
  ASSERT_TRUE(WriteConfigDrive(disk_, part_, c).ok());
  EXPECT_EQ(Read("openstack/latest/user_data"), gz);
}

TEST_F(ConfigDriveFileTest, AFailingToolGivesTheCatalogueMessage) {
  ConfigDriveOptions options;
  options.mkfs_fat = "false";
  Status s = WriteConfigDrive(disk_, part_, Sample(), options);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "Could not create configdrive on disk.");
  EXPECT_THAT(s.detail(), HasSubstr("making the vfat file system: false failed (exit status 1)"));
  options.mkfs_fat = "mkfs.fat";
  options.mcopy = "/nonexistent/mcopy";
  s = WriteConfigDrive(disk_, part_, Sample(), options);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "Could not create configdrive on disk.");
  EXPECT_THAT(s.detail(), HasSubstr("running /nonexistent/mcopy: No such file or directory"));
}

TEST_F(ConfigDriveFileTest, ScratchFilesAreRemoved) {
  ConfigDriveOptions options;
  options.tmp_dir = dir_ / "scratch";
  std::filesystem::create_directory(options.tmp_dir);
  ASSERT_TRUE(WriteConfigDrive(disk_, part_, Sample(), options).ok());
  options.mcopy = "false";
  ASSERT_FALSE(WriteConfigDrive(disk_, part_, Sample(), options).ok());
  EXPECT_TRUE(std::filesystem::is_empty(options.tmp_dir));
}

TEST_F(ConfigDriveFileTest, ATinyPartitionIsRefused) {
  Partition tiny = part_;
  tiny.size_sectors = 100;
  Status s = WriteConfigDrive(disk_, tiny, Sample());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "Could not create configdrive on disk.");
}

}  // namespace
}  // namespace byoi
