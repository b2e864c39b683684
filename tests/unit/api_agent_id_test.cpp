// The agent id: configured, else DMI product UUID, else the first permanent MAC (docs/backend.md).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "agent/api/agent_id.hpp"
#include "agent/base/fd.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;

class AgentIdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("byoi-sysfs-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "class/dmi/id");
  }
  void TearDown() override { fs::remove_all(root_); }
  void Put(const std::string& rel, const std::string& text) {
    fs::create_directories((root_ / rel).parent_path());
    ASSERT_TRUE(WriteFileAtomic((root_ / rel).string(), text).ok());
  }
  void Nic(const std::string& name, const std::string& mac, const std::string& assign, bool device,
           const std::string& type = "1") {
    Put("class/net/" + name + "/address", mac + "\n");
    Put("class/net/" + name + "/addr_assign_type", assign + "\n");
    Put("class/net/" + name + "/type", type + "\n");
    if (device) fs::create_directories(root_ / "class/net" / name / "device");
  }
  Result<std::string> Resolve(const std::string& configured = "") {
    return ResolveAgentId(configured, root_.string());
  }
  fs::path root_;
};

TEST_F(AgentIdTest, ConfiguredWins) {
  Put("class/dmi/id/product_uuid", "4C4C4544-0042-3510-8052-B4C04F4E3732\n");
  EXPECT_EQ(*Resolve("rack1-u12"), "rack1-u12");
}

TEST_F(AgentIdTest, DmiUuidInLowerCase) {
  Put("class/dmi/id/product_uuid", "4C4C4544-0042-3510-8052-B4C04F4E3732\n");
  Nic("eno1", "aa:bb:cc:dd:ee:01", "0", true);
  EXPECT_EQ(*Resolve(), "4c4c4544-0042-3510-8052-b4c04f4e3732");
}

TEST_F(AgentIdTest, PlaceholderUuidsFallBackToThePermanentMac) {
  Nic("lo", "00:00:00:00:00:00", "0", false, "772");
  Nic("bond0", "aa:bb:cc:dd:ee:99", "3", false);  // no device: virtual
  Nic("eno2", "AA:BB:CC:DD:EE:02", "0", true);
  Nic("eno1", "aa:bb:cc:dd:ee:03", "1", true);  // random address: not permanent
  Nic("eno3", "aa:bb:cc:dd:ee:04", "0", true);
  for (const char* uuid : {"00000000-0000-0000-0000-000000000000",
                           "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "Not Settable", ""}) {
    Put("class/dmi/id/product_uuid", std::string(uuid) + "\n");
    Result<std::string> id = Resolve();
    ASSERT_TRUE(id.ok()) << uuid;
    EXPECT_EQ(*id, "aa:bb:cc:dd:ee:02") << uuid;
  }
}

TEST_F(AgentIdTest, NothingUsableIsNotFound) {
  Nic("wg0", "aa:bb:cc:dd:ee:05", "0", false);
  Result<std::string> id = Resolve();
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace byoi
