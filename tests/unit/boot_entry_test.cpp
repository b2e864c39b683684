#include "agent/boot/boot_entry.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "agent/base/messages.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::PxeLoadOption;
using testing::TempDir;
using Bytes = std::vector<uint8_t>;

constexpr char kGuid[] = "d7928937-db77-4ce7-912c-205c05ddd690";
constexpr char kOtherGuid[] = "11111111-2222-3333-4444-555555555555";
constexpr char kShim[] = "\\EFI\\debian\\shimx64.efi";

EspLocation Esp(const std::string& guid = kGuid) {
  EspLocation esp;
  esp.table = PartitionTableType::kGpt;
  esp.partition_number = 1;
  esp.start_lba = 2048;
  esp.size_lba = 81920;
  esp.partition_guid = guid;
  return esp;
}

BootEntryRequest Request(const std::string& label = "debian") {
  return BootEntryRequest{Esp(), kShim, label};
}

Bytes DiskOption(const std::string& guid, const std::string& path, const std::string& label,
                 uint32_t attrs = kLoadOptionActive) {
  EspLocation esp = Esp(guid);
  auto hd = HardDriveNodeFor(esp);
  EXPECT_TRUE(hd.ok());
  auto opt = EncodeLoadOption(*hd, path, label, attrs);
  EXPECT_TRUE(opt.ok()) << opt.status().ToString();
  return *opt;
}

Bytes U16s(std::initializer_list<uint16_t> values) {
  Bytes out;
  for (uint16_t v : values)
    out.insert(out.end(), {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)});
  return out;
}

class BootEntry : public ::testing::Test {
 protected:
  void Put(const std::string& name, const Bytes& data) {
    ASSERT_TRUE(vars_.Write(name, {kEfiBootVariableAttributes, data}).ok());
  }
  Bytes Get(const std::string& name) {
    auto v = vars_.Read(name);
    EXPECT_TRUE(v.ok()) << name << ": " << v.status().ToString();
    if (!v.ok()) return {};
    EXPECT_EQ(v->attributes, kEfiBootVariableAttributes) << name;
    return v->data;
  }
  bool Has(const std::string& name) { return vars_.Read(name).ok(); }
  // Every file of the directory with its content: to prove what changed and what did not.
  std::map<std::string, std::string> Snapshot() {
    std::map<std::string, std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      out[e.path().filename()] = testing::ReadAll(e.path());
    }
    return out;
  }
  BootEntryResult Install(BootOrderPolicy policy, const BootEntryRequest& request = Request()) {
    auto r = InstallBootEntry(vars_, request, policy);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : BootEntryResult{};
  }

  TempDir dir_;
  EfivarfsVars vars_{dir_.path()};
};

TEST_F(BootEntry, FreshNvramGetsBoot0000FirstInBootOrder) {
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(r.number, 0);
  EXPECT_FALSE(r.reused);
  EXPECT_TRUE(r.rewritten);
  EXPECT_EQ(Get("Boot0000"), DiskOption(kGuid, kShim, "debian"));
  EXPECT_EQ(Get("BootOrder"), U16s({0}));
  EXPECT_FALSE(Has("BootNext"));
  EXPECT_EQ(
      r.Summary(),
      "Boot0000 \"debian\" (new) HD(1,GPT,d7928937-db77-4ce7-912c-205c05ddd690,0x800,0x14000)/"
      "File(\\EFI\\debian\\shimx64.efi), BootOrder 0000");
}

TEST_F(BootEntry, PolicyFirstPutsItBeforeThePxeEntries) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4 (MAC:525400123456)"));
  Put("Boot0001", PxeLoadOption("UEFI PXEv6 (MAC:525400123456)", true));
  Put("BootOrder", U16s({0, 1}));
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(r.number, 2);
  EXPECT_EQ(Get("BootOrder"), U16s({2, 0, 1}));
  EXPECT_EQ(r.boot_order, (std::vector<uint16_t>{2, 0, 1}));
}

TEST_F(BootEntry, PolicyAfterNetworkPutsItAfterTheLastPxeEntry) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4 (MAC:525400123456)"));
  Put("Boot0001", PxeLoadOption("UEFI PXEv6 (MAC:525400123456)", true));
  Put("Boot0003", DiskOption(kOtherGuid, "\\EFI\\ubuntu\\shimx64.efi", "ubuntu"));
  Put("BootOrder", U16s({0, 1, 3}));
  BootEntryResult r = Install(BootOrderPolicy::kAfterNetwork);
  EXPECT_EQ(r.number, 2);
  EXPECT_EQ(Get("BootOrder"), U16s({0, 1, 2, 3}));
}

TEST_F(BootEntry, PolicyAfterNetworkKnowsNetworkEntriesByDescriptionToo) {
  // A vendor entry whose device path says nothing (just the end node), named for what it does.
  Bytes vendor = {0x01, 0, 0, 0, 0x04, 0x00};
  for (char c : std::string("Onboard Network Card"))
    vendor.insert(vendor.end(), {static_cast<uint8_t>(c), 0});
  vendor.insert(vendor.end(), {0, 0, 0x7f, 0xff, 0x04, 0x00});
  Put("Boot0007", vendor);
  Put("Boot0008", DiskOption(kOtherGuid, "\\EFI\\x\\grubx64.efi", "x"));
  Put("BootOrder", U16s({8, 7}));
  BootEntryResult r = Install(BootOrderPolicy::kAfterNetwork);
  EXPECT_EQ(r.number, 0);
  EXPECT_EQ(Get("BootOrder"), U16s({8, 7, 0}));
}

TEST_F(BootEntry, PolicyAfterNetworkWithoutNetworkEntriesIsFirst) {
  Put("Boot0001", DiskOption(kOtherGuid, "\\EFI\\x\\grubx64.efi", "x"));
  Put("BootOrder", U16s({1}));
  Install(BootOrderPolicy::kAfterNetwork);
  EXPECT_EQ(Get("BootOrder"), U16s({0, 1}));
}

TEST_F(BootEntry, AnIdenticalEntryIsReusedWithoutWriting) {
  Put("Boot0001", DiskOption(kOtherGuid, "\\EFI\\x\\grubx64.efi", "x"));
  Put("Boot0005", DiskOption(kGuid, kShim, "debian"));
  Put("BootOrder", U16s({5, 1}));
  auto before = Snapshot();
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(r.number, 5);
  EXPECT_TRUE(r.reused);
  EXPECT_FALSE(r.rewritten);
  EXPECT_EQ(Snapshot(), before);  // nothing to change: NVRAM is not written at all
}

TEST_F(BootEntry, AnEntryForTheSameLoaderInAnotherCaseIsReusedAndUpdated) {
  Put("Boot0004", DiskOption(kGuid, "/efi/DEBIAN/SHIMX64.EFI", "old name", 0));
  Put("BootOrder", U16s({4}));
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(r.number, 4);
  EXPECT_TRUE(r.reused);
  EXPECT_TRUE(r.rewritten);
  EXPECT_EQ(Get("Boot0004"), DiskOption(kGuid, kShim, "debian"));
  EXPECT_FALSE(Has("Boot0000"));
}

TEST_F(BootEntry, AnEntryWithTheSameLabelOnAnotherDiskIsReplaced) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4 (MAC:525400123456)"));
  Put("Boot0002", DiskOption(kOtherGuid, kShim, "debian"));
  Put("BootOrder", U16s({2, 0}));
  Put("BootNext", U16s({2}));
  BootEntryResult r = Install(BootOrderPolicy::kAfterNetwork);
  EXPECT_EQ(r.number, 1);
  EXPECT_EQ(r.removed, (std::vector<uint16_t>{2}));
  EXPECT_FALSE(Has("Boot0002"));
  EXPECT_FALSE(Has("BootNext"));  // it named the removed entry
  EXPECT_EQ(Get("BootOrder"), U16s({0, 1}));
  EXPECT_EQ(Get("Boot0001"), DiskOption(kGuid, kShim, "debian"));
}

TEST_F(BootEntry, NetworkEntriesAreNeverRemovedForTheirLabel) {
  Put("Boot0000", PxeLoadOption("debian"));
  Put("BootOrder", U16s({0}));
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_TRUE(r.removed.empty());
  EXPECT_TRUE(Has("Boot0000"));
  EXPECT_EQ(Get("BootOrder"), U16s({1, 0}));
}

TEST_F(BootEntry, PolicyBootNextSetsOnlyBootNext) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4 (MAC:525400123456)"));
  Put("BootOrder", U16s({0}));
  BootEntryResult r = Install(BootOrderPolicy::kBootNext);
  EXPECT_EQ(r.number, 1);
  EXPECT_EQ(Get("BootNext"), U16s({1}));
  EXPECT_EQ(Get("BootOrder"), U16s({0}));
  EXPECT_EQ(r.boot_next, std::optional<uint16_t>(1));
}

TEST_F(BootEntry, PolicyBootNextLeavesAReusedEntryInPlace) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("Boot0003", DiskOption(kGuid, kShim, "debian"));
  Put("BootOrder", U16s({0, 3}));
  Install(BootOrderPolicy::kBootNext);
  EXPECT_EQ(Get("BootOrder"), U16s({0, 3}));
  EXPECT_EQ(Get("BootNext"), U16s({3}));
}

TEST_F(BootEntry, PolicyBootNextWithoutBootOrderCreatesNone) {
  Install(BootOrderPolicy::kBootNext);
  EXPECT_FALSE(Has("BootOrder"));
  EXPECT_EQ(Get("BootNext"), U16s({0}));
}

TEST_F(BootEntry, PolicyNoneWritesNothing) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("BootOrder", U16s({0}));
  auto before = Snapshot();
  BootEntryResult r = Install(BootOrderPolicy::kNone);
  EXPECT_FALSE(r.written);
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(r.Summary(), "boot entries left unchanged (policy none)");
}

TEST_F(BootEntry, PolicyFirstDeletesAForeignBootNextAndAfterNetworkKeepsIt) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("BootOrder", U16s({0}));
  Put("BootNext", U16s({0}));
  Install(BootOrderPolicy::kAfterNetwork);
  EXPECT_EQ(Get("BootNext"), U16s({0}));
  Install(BootOrderPolicy::kFirst);
  EXPECT_FALSE(Has("BootNext"));
  EXPECT_EQ(Get("BootOrder"), U16s({1, 0}));
}

TEST_F(BootEntry, NumbersNamedByBootOrderOrUnreadableCountAsUsed) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("Boot0002", {0xde, 0xad});   // not a load option: left alone, never reused
  Put("BootOrder", U16s({0, 1}));  // Boot0001 is hidden from Linux (boot-service only)
  Put("BootNext", U16s({3}));
  BootEntryResult r = Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(r.number, 4);
  EXPECT_EQ(Get("Boot0002"), (Bytes{0xde, 0xad}));
  EXPECT_EQ(Get("BootOrder"), U16s({4, 0, 1}));
}

TEST_F(BootEntry, BootOrderKeepsEveryOtherEntryOnce) {
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("Boot0001", DiskOption(kGuid, kShim, "debian"));
  Put("BootOrder", U16s({0, 1, 1, 9}));
  Install(BootOrderPolicy::kFirst);
  EXPECT_EQ(Get("BootOrder"), U16s({1, 0, 9}));
}

TEST_F(BootEntry, MbrEntriesMatchOnDiskSignatureAndPartitionNumber) {
  EspLocation esp;
  esp.table = PartitionTableType::kMbr;
  esp.mbr_signature = 0x1234abcd;
  esp.partition_number = 1;
  esp.start_lba = 2048;
  esp.size_lba = 4096;
  EspLocation other_part = esp;
  other_part.partition_number = 2;
  auto hd2 = HardDriveNodeFor(other_part);
  Put("Boot0000", *EncodeLoadOption(*hd2, kShim, "other"));
  auto r = InstallBootEntry(vars_, BootEntryRequest{esp, kShim, "debian"}, BootOrderPolicy::kFirst);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->number, 1);  // same disk, other partition: not ours
  auto again =
      InstallBootEntry(vars_, BootEntryRequest{esp, kShim, "debian"}, BootOrderPolicy::kFirst);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->number, 1);
  EXPECT_TRUE(again->reused);
  auto opt = DecodeLoadOption(Get("Boot0001"));
  ASSERT_TRUE(opt.ok());
  EXPECT_EQ(opt->hard_drive->format, PartitionFormat::kMbr);
  EXPECT_EQ(opt->hard_drive->signature_type, kSignatureTypeMbr);
  EXPECT_EQ(opt->hard_drive->signature, (std::array<uint8_t, 16>{0xcd, 0xab, 0x34, 0x12}));
}

// Wraps the directory and fails or corrupts one variable.
class FaultyVars : public EfiVars {
 public:
  explicit FaultyVars(EfiVars& inner) : inner_(inner) {}
  Result<std::vector<std::string>> List() override {
    if (fail_list) return Status::Error(Code::kIo, "listing: Input/output error");
    return inner_.List();
  }
  Result<EfiVariable> Read(std::string_view name) override {
    auto v = inner_.Read(name);
    if (v.ok() && name == corrupt_on_read) v->data.push_back(0);
    return v;
  }
  Status Write(std::string_view name, const EfiVariable& var) override {
    if (name == fail_write) return Status::Error(Code::kIo, "writing: No space left on device");
    return inner_.Write(name, var);
  }
  Status Delete(std::string_view name) override {
    if (name == fail_delete) return Status::Error(Code::kIo, "deleting: Operation not permitted");
    return inner_.Delete(name);
  }
  bool fail_list = false;
  std::string fail_write, corrupt_on_read, fail_delete;

 private:
  EfiVars& inner_;
};

TEST_F(BootEntry, FailuresCarryTheCatalogueMessageAndTheCause) {
  struct Case {
    const char* what;
    void (*setup)(FaultyVars&);
    const char* detail;
  } cases[] = {
      {"list", [](FaultyVars& f) { f.fail_list = true; }, "listing EFI variables"},
      {"entry write", [](FaultyVars& f) { f.fail_write = "Boot0000"; }, "writing Boot0000"},
      {"entry read-back", [](FaultyVars& f) { f.corrupt_on_read = "Boot0000"; },
       "reading back Boot0000"},
      {"BootOrder write", [](FaultyVars& f) { f.fail_write = "BootOrder"; }, "writing BootOrder"},
      {"delete", [](FaultyVars& f) { f.fail_delete = "Boot0002"; }, "deleting Boot0002"},
  };
  for (const Case& c : cases) {
    TempDir dir;
    EfivarfsVars real(dir.path());
    ASSERT_TRUE(real.Write("Boot0002", {7, DiskOption(kOtherGuid, kShim, "debian")}).ok());
    FaultyVars faulty(real);
    c.setup(faulty);
    auto r = InstallBootEntry(faulty, Request(), BootOrderPolicy::kFirst);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().message(), msg::kBootEntry) << c.what;
    EXPECT_NE(r.status().detail().find(c.detail), std::string::npos)
        << c.what << ": " << r.status().detail();
  }
}

// NVRAM the boot step could not use, found by CheckBootVariables before anything is written
// (the runner calls it while planning, so the disk is still untouched then).
TEST_F(BootEntry, CheckBootVariablesRefusesWhatInstallCouldNotUse) {
  // An NVRAM as firmware leaves it: fine.
  Put("Boot0000", PxeLoadOption("UEFI PXEv4"));
  Put("BootOrder", U16s({0}));
  Put("BootNext", U16s({0}));
  EXPECT_TRUE(CheckBootVariables(vars_).ok());
  auto fresh_dir = TempDir();
  EfivarfsVars fresh(fresh_dir.path());
  EXPECT_TRUE(CheckBootVariables(fresh).ok()) << "an empty NVRAM is fine too";

  struct Case {
    const char* what;
    std::string file;     // written raw: 4-byte attributes then data, as efivarfs shows them
    std::string content;  // "" = see `dir`
    Code code;
    const char* detail;
  } cases[] = {
      {"80 KB BootOrder", "BootOrder", "\x07\0\0\0" + std::string(80 * 1024, '\0'), Code::kInvalid,
       "reading BootOrder: reading "},
      {"odd-length BootOrder", "BootOrder", std::string("\x07\0\0\0\x01\0\x02", 7), Code::kInvalid,
       "BootOrder holds 3 bytes, not a list of 2-byte entry numbers"},
      {"BootOrder shorter than its attributes", "BootOrder", std::string("\x07\0", 2),
       Code::kInvalid, "reading BootOrder: "},
      {"80 KB BootNext", "BootNext", "\x07\0\0\0" + std::string(80 * 1024, '\0'), Code::kInvalid,
       "reading BootNext: reading "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    TempDir dir;
    testing::WriteAll(dir / (c.file + "-8be4df61-93ca-11d2-aa0d-00e098032b8c"), c.content);
    EfivarfsVars vars(dir.path());
    Status s = CheckBootVariables(vars);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), c.code);
    EXPECT_EQ(s.message(), msg::kBootEntry);
    EXPECT_NE(s.detail().find(c.detail), std::string::npos) << s.detail();
    // Install refuses the same NVRAM before writing anything.
    auto r = InstallBootEntry(vars, Request(), BootOrderPolicy::kFirst);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().message(), msg::kBootEntry);
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
  }
  // A directory that cannot be listed: a file where efivarfs should be.
  TempDir dir;
  testing::WriteAll(dir / "efivars", "");
  EfivarfsVars vars(dir / "efivars");
  Status s = CheckBootVariables(vars);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_EQ(s.message(), msg::kBootEntry);
  EXPECT_EQ(s.detail(), "listing EFI variables: listing " + dir / "efivars" + ": Not a directory");
}

TEST_F(BootEntry, ABadRequestIsRefusedBeforeAnyWrite) {
  BootEntryRequest bad = Request();
  bad.esp.partition_guid = "not-a-guid";
  auto r = InstallBootEntry(vars_, bad, BootOrderPolicy::kFirst);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalid);
  EXPECT_EQ(r.status().message(), msg::kBootEntry);
  EXPECT_TRUE(Snapshot().empty());
}

TEST(BootLabel, ComesFromCsvThenDescriptionThenDirectory) {
  struct Case {
    BootLoader loader;
    const char* description;
    const char* label;
  } cases[] = {
      {{"\\EFI\\debian\\shimx64.efi", "Debian GNU/Linux", "debian", "BOOTX64.CSV", {}},
       "my image",
       "Debian GNU/Linux"},
      {{"\\EFI\\debian\\grubx64.efi", "", "debian", "grub", {}}, "  debian 12  ", "debian 12"},
      {{"\\EFI\\debian\\grubx64.efi", "", "debian", "grub", {}}, "", "debian"},
      {{"\\EFI\\BOOT\\BOOTX64.EFI", "", "", "fallback", {}}, "", "BYOI"},
      {{"\\EFI\\BOOT\\BOOTX64.EFI", "", "", "fallback", {}}, "Débian\t✓", "D?bian?"},
      {{"\\EFI\\BOOT\\BOOTX64.EFI", "", "", "fallback", {}}, "\n\t", "BYOI"},
  };
  for (const Case& c : cases) EXPECT_EQ(ChooseBootLabel(c.loader, c.description), c.label);
  BootLoader fallback{"\\EFI\\BOOT\\BOOTX64.EFI", "", "", "fallback", {}};
  EXPECT_EQ(ChooseBootLabel(fallback, std::string(300, 'x')).size(), 100u);
}

TEST(BootOrderPolicyNames, ParseAndPrint) {
  for (auto p : {BootOrderPolicy::kFirst, BootOrderPolicy::kAfterNetwork,
                 BootOrderPolicy::kBootNext, BootOrderPolicy::kNone}) {
    auto parsed = ParseBootOrderPolicy(BootOrderPolicyName(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, p);
  }
  EXPECT_EQ(BootOrderPolicyName(BootOrderPolicy::kAfterNetwork), "after-network");
  for (const char* bad : {"", "First", "last", "after_network"}) {
    EXPECT_EQ(ParseBootOrderPolicy(bad).status().code(), Code::kInvalid) << bad;
  }
}

TEST(BootVariableNames, AreUpperCaseHex) {
  EXPECT_EQ(BootVariableName(0), "Boot0000");
  EXPECT_EQ(BootVariableName(0x1a), "Boot001A");
  EXPECT_EQ(BootVariableName(0xffff), "BootFFFF");
}

}  // namespace
}  // namespace byoi
