#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/base/text.hpp"
#include "agent/boot/load_option.hpp"

namespace byoi {
namespace {

using Bytes = std::vector<uint8_t>;

void Put16(Bytes& b, uint16_t v) {
  b.push_back(v & 0xFF);
  b.push_back(v >> 8);
}
void Put32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back((v >> (8 * i)) & 0xFF);
}
void Put64(Bytes& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back((v >> (8 * i)) & 0xFF);
}
void PutUcs2(Bytes& b, std::string_view ascii) {
  for (char c : ascii) Put16(b, static_cast<uint8_t>(c));
  Put16(b, 0);
}

// The UEFI 2.10 layout, written out by hand: the oracle for what libefiboot builds.
Bytes ExpectedOption(uint32_t attrs, std::string_view desc, uint32_t part, uint64_t start,
                     uint64_t size, const std::array<uint8_t, 16>& sig, uint8_t format,
                     uint8_t sig_type, std::string_view path) {
  Bytes dp;
  dp.push_back(0x04);  // media
  dp.push_back(0x01);  // hard drive
  Put16(dp, 42);
  Put32(dp, part);
  Put64(dp, start);
  Put64(dp, size);
  dp.insert(dp.end(), sig.begin(), sig.end());
  dp.push_back(format);
  dp.push_back(sig_type);
  dp.push_back(0x04);  // media
  dp.push_back(0x04);  // file path
  Put16(dp, static_cast<uint16_t>(4 + 2 * (path.size() + 1)));
  PutUcs2(dp, path);
  dp.push_back(0x7f);  // end
  dp.push_back(0xff);  // entire
  Put16(dp, 4);
  Bytes out;
  Put32(out, attrs);
  Put16(out, static_cast<uint16_t>(dp.size()));
  PutUcs2(out, desc);
  out.insert(out.end(), dp.begin(), dp.end());
  return out;
}

const std::array<uint8_t, 16> kGuidBytes = {0x37, 0x89, 0x92, 0xd7, 0x77, 0xdb, 0xe7, 0x4c,
                                            0x91, 0x2c, 0x20, 0x5c, 0x05, 0xdd, 0xd6, 0x90};

TEST(LoadOption, GuidTextBecomesMixedEndianBytes) {
  auto bytes = GuidToEfiBytes("D7928937-DB77-4CE7-912C-205C05DDD690");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, kGuidBytes);
  EXPECT_EQ(ToLowerAscii(FormatGuid(kGuidBytes)), "d7928937-db77-4ce7-912c-205c05ddd690");
}

TEST(LoadOption, MalformedGuidsAreRefused) {
  for (const char* text :
       {"", "d7928937db774ce7912c205c05ddd690", "d7928937-db77-4ce7-912c-205c05ddd69",
        "d7928937-db77-4ce7-912c-205c05ddd69g", "d7928937-db77-4ce7-912c_205c05ddd690",
        "d7928937-db77-4ce7-912c-205c05ddd6900"}) {
    EXPECT_FALSE(GuidToEfiBytes(text).ok()) << text;
  }
}

TEST(LoadOption, LoaderPathsAreNormalised) {
  struct Case {
    const char* in;
    const char* out;
  } cases[] = {
      {"\\EFI\\debian\\grubx64.efi", "\\EFI\\debian\\grubx64.efi"},
      {"/efi/debian/grubx64.efi", "\\efi\\debian\\grubx64.efi"},
      {"EFI/BOOT/BOOTX64.EFI", "\\EFI\\BOOT\\BOOTX64.EFI"},
      {"\\\\efi\\\\x.efi", "\\efi\\x.efi"},
  };
  for (const Case& c : cases) EXPECT_EQ(NormalizeLoaderPath(c.in), c.out) << c.in;
}

TEST(LoadOption, GptEntryIsBuiltByteForByte) {
  HardDriveNode hd{1, 2048, 65536, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  auto built = EncodeLoadOption(hd, "/EFI/x/grubx64.efi", "test");
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(*built,
            ExpectedOption(1, "test", 1, 2048, 65536, kGuidBytes, 2, 2, "\\EFI\\x\\grubx64.efi"));
}

TEST(LoadOption, MbrEntryCarriesTheDiskSignature) {
  std::array<uint8_t, 16> sig{0xcd, 0xab, 0x34, 0x12};
  HardDriveNode hd{1, 2048, 81920, sig, PartitionFormat::kMbr, kSignatureTypeMbr};
  auto built = EncodeLoadOption(hd, "\\EFI\\BOOT\\BOOTX64.EFI", "BYOI");
  ASSERT_TRUE(built.ok());
  EXPECT_EQ(*built,
            ExpectedOption(1, "BYOI", 1, 2048, 81920, sig, 1, 1, "\\EFI\\BOOT\\BOOTX64.EFI"));
}

TEST(LoadOption, DecodeReturnsWhatEncodeBuilt) {
  HardDriveNode hd{3, 1 << 20, 1 << 18, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  auto built = EncodeLoadOption(hd, "\\EFI\\debian\\shimx64.efi", "Débian 12");
  ASSERT_TRUE(built.ok());
  auto opt = DecodeLoadOption(*built);
  ASSERT_TRUE(opt.ok()) << opt.status().ToString();
  EXPECT_EQ(opt->attributes, kLoadOptionActive);
  EXPECT_EQ(opt->description, "Débian 12");
  ASSERT_TRUE(opt->hard_drive.has_value());
  EXPECT_EQ(*opt->hard_drive, hd);
  EXPECT_EQ(opt->file_path, "\\EFI\\debian\\shimx64.efi");
  EXPECT_FALSE(opt->network);
  EXPECT_TRUE(opt->optional_data.empty());
  EXPECT_EQ(FormatDevicePath(opt->device_path),
            "HD(3,GPT,d7928937-db77-4ce7-912c-205c05ddd690,0x100000,0x40000)/"
            "File(\\EFI\\debian\\shimx64.efi)");
}

// A PXE entry as OVMF makes them: PciRoot/Pci/MAC/IPv4, description "UEFI PXEv4 (MAC:…)".
Bytes PxeOption(std::string_view desc, uint8_t ip_subtype) {
  Bytes dp = {0x02, 0x01, 0x0c, 0x00, 0xd0, 0x41, 0x03, 0x0a, 0x00, 0x00, 0x00, 0x00,  // PciRoot(0)
              0x01, 0x01, 0x06, 0x00, 0x00, 0x03,                                      // Pci(3,0)
              0x03, 0x0b, 0x25, 0x00};                                                 // MAC
  dp.resize(dp.size() + 33, 0);  // 32 bytes of address + interface type
  dp.push_back(0x03);
  dp.push_back(ip_subtype);
  uint16_t ip_len = ip_subtype == 0x0c ? 27 : 60;
  Put16(dp, ip_len);
  dp.resize(dp.size() + ip_len - 4, 0);
  dp.insert(dp.end(), {0x7f, 0xff, 0x04, 0x00});
  Bytes out;
  Put32(out, 1);
  Put16(out, static_cast<uint16_t>(dp.size()));
  PutUcs2(out, desc);
  out.insert(out.end(), dp.begin(), dp.end());
  return out;
}

TEST(LoadOption, NetworkEntriesAreRecognisedByTheirDevicePath) {
  for (uint8_t subtype : {uint8_t{0x0c}, uint8_t{0x0d}}) {
    auto opt = DecodeLoadOption(PxeOption("UEFI Something", subtype));
    ASSERT_TRUE(opt.ok()) << opt.status().ToString();
    EXPECT_TRUE(opt->network);
    EXPECT_FALSE(opt->hard_drive.has_value());
    EXPECT_EQ(opt->file_path, "");
  }
}

TEST(LoadOption, AnyDevicePathPrintsSafely) {
  auto pxe = DecodeLoadOption(PxeOption("UEFI PXEv4", 0x0c));
  ASSERT_TRUE(pxe.ok());
  EXPECT_EQ(FormatDevicePath(pxe->device_path), "Path(2,1)/Path(1,1)/MAC()/IPv4()");
  EXPECT_EQ(FormatDevicePath({}), "(unprintable device path)");
  Bytes truncated = {0x04, 0x01, 0x2a, 0x00, 0x01};
  EXPECT_EQ(FormatDevicePath(truncated), "(unprintable device path)");
}

TEST(LoadOption, OptionalDataIsKept) {
  HardDriveNode hd{1, 2048, 4096, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  auto built = EncodeLoadOption(hd, "\\a.efi", "x");
  ASSERT_TRUE(built.ok());
  Bytes with_data = *built;
  with_data.insert(with_data.end(), {'a', 0, 'b', 0});
  auto opt = DecodeLoadOption(with_data);
  ASSERT_TRUE(opt.ok());
  EXPECT_EQ(opt->optional_data, (Bytes{'a', 0, 'b', 0}));
}

TEST(LoadOption, FilePathSplitOverNodesIsJoined) {
  Bytes dp;
  for (std::string_view part : {"\\EFI\\debian", "shimx64.efi"}) {
    dp.push_back(0x04);
    dp.push_back(0x04);
    Put16(dp, static_cast<uint16_t>(4 + 2 * (part.size() + 1)));
    PutUcs2(dp, part);
  }
  dp.insert(dp.end(), {0x7f, 0xff, 0x04, 0x00});
  Bytes out;
  Put32(out, 1);
  Put16(out, static_cast<uint16_t>(dp.size()));
  PutUcs2(out, "x");
  out.insert(out.end(), dp.begin(), dp.end());
  auto opt = DecodeLoadOption(out);
  ASSERT_TRUE(opt.ok());
  EXPECT_EQ(opt->file_path, "\\EFI\\debian\\shimx64.efi");
}

TEST(LoadOption, MalformedOptionsAreRefusedWithoutReadingPastTheEnd) {
  HardDriveNode hd{1, 2048, 4096, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  Bytes good = *EncodeLoadOption(hd, "\\EFI\\x\\grubx64.efi", "label");
  std::vector<std::pair<const char*, Bytes>> cases;
  cases.push_back({"empty", {}});
  cases.push_back({"header only", Bytes(good.begin(), good.begin() + 6)});
  cases.push_back({"truncated path", Bytes(good.begin(), good.end() - 3)});
  Bytes long_path = good;
  long_path[4] = 0xff;  // FilePathListLength past the end
  cases.push_back({"path length too large", long_path});
  Bytes zero_node = good;
  size_t dp_at = 4 + 2 + 2 * 6;  // attributes, length, "label\0"
  zero_node[dp_at + 2] = 0;
  zero_node[dp_at + 3] = 0;
  cases.push_back({"zero-length node", zero_node});
  Bytes no_end = good;
  no_end[no_end.size() - 3] = 0x01;  // End Instance instead of End Entire
  cases.push_back({"no end node", no_end});
  Bytes no_nul = {1, 0, 0, 0, 4, 0, 'a', 0, 'b', 0, 'c', 0};
  cases.push_back({"unterminated description", no_nul});
  // Found by load_option_fuzz: a file node whose length runs past the path crashed libefiboot's
  // efi_loadopt_is_valid().
  cases.push_back(
      {"file node past the path",
       {0x01, 0x00, 0x00, 0x00, 0x62, 0x00, 0x64, 0x00, 0x65, 0x00, 0x62, 0x00, 0x69, 0x00, 0x61,
        0x00, 0x6e, 0x00, 0x00, 0x00, 0x04, 0x01, 0x2a, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x08,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x37,
        0x89, 0x92, 0xd7, 0x77, 0xdb, 0xe7, 0x4c, 0x91, 0x2c, 0x20, 0x5c, 0x05, 0xdd, 0xd6, 0x90,
        0x02, 0x02, 0x04, 0x04, 0x32, 0x00, 0x5c, 0x00, 0x45, 0x00, 0x49, 0x46, 0x00, 0x00, 0x5c,
        0x00, 0x64, 0x00, 0x65, 0x00, 0x62, 0x00, 0x69, 0x00, 0x61, 0x00, 0x6e, 0x00, 0x5c, 0x00,
        0x73, 0x00, 0x68, 0x00, 0x69, 0x00, 0x6d, 0x00, 0x78, 0x00, 0x36, 0x00, 0x34, 0x00, 0x2e,
        0x00, 0x65, 0x00, 0x66, 0x00, 0x69, 0x00, 0x00, 0x00, 0x7f, 0xff, 0x04, 0x00}});
  for (const auto& [what, bytes] : cases) {
    auto opt = DecodeLoadOption(bytes);
    EXPECT_FALSE(opt.ok()) << what;
    if (!opt.ok()) {
      EXPECT_EQ(opt.status().code(), Code::kInvalid) << what;
    }
  }
}

TEST(LoadOption, TextLibefivarWouldMangleIsRefusedNotWritten) {
  HardDriveNode hd{1, 2048, 4096, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  for (const char* desc : {"check \u2713", "emoji \U0001F600", "truncated \xC3", "bad \x80"}) {
    auto built = EncodeLoadOption(hd, "\\a.efi", desc);
    if (built.ok()) {
      // A libefivar that encodes it right is welcome; a wrong encoding never is.
      EXPECT_EQ(DecodeLoadOption(*built)->description, desc);
    } else {
      EXPECT_EQ(built.status().code(), Code::kInvalid);
    }
  }
}

TEST(LoadOption, EmptyOrOverlongInputsAreRefused) {
  HardDriveNode hd{1, 2048, 4096, kGuidBytes, PartitionFormat::kGpt, kSignatureTypeGuid};
  EXPECT_EQ(EncodeLoadOption(hd, "", "x").status().code(), Code::kInvalid);
  EXPECT_EQ(EncodeLoadOption(hd, "\\a.efi", "").status().code(), Code::kInvalid);
  EXPECT_EQ(EncodeLoadOption(hd, "\\a.efi", std::string(1025, 'x')).status().code(),
            Code::kInvalid);
  EXPECT_EQ(EncodeLoadOption(hd, "\\" + std::string(1100, 'a'), "x").status().code(),
            Code::kInvalid);
}

}  // namespace
}  // namespace byoi
