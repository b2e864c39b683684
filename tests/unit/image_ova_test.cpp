// The OVA reader's parts on archives and descriptors built here: OVF parsing and the choice of the
// disk, `.mf` lines, the archive's rules and the digest check (tests/integration/test_ova_*.py run
// the same on OVAs packed by tarfile and GNU tar around VMDKs made by qemu-img).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/image/ova.hpp"
#include "agent/image/ova_manifest.hpp"
#include "agent/image/ovf.hpp"
#include "tests/unit/tar_builder.hpp"

namespace byoi {
namespace {

using testing::Tar;
using testing::TarMember;

// An OVF 1 envelope; `disks` and `items` are inserted as they are.
std::string Ovf(std::string files, std::string disks, std::string items,
                std::string ns = "http://schemas.dmtf.org/ovf/envelope/1") {
  return "<?xml version=\"1.0\"?>\n<Envelope xmlns=\"" + ns + "\" xmlns:ovf=\"" + ns +
         "\" xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
         "CIM_ResourceAllocationSettingData\" xmlns:sasd=\"http://schemas.dmtf.org/wbem/wscim/1/"
         "cim-schema/2/CIM_StorageAllocationSettingData\"><References>" +
         files + "</References><DiskSection><Info/>" + disks +
         "</DiskSection><VirtualSystem ovf:id=\"vm\"><Info/><VirtualHardwareSection><Info/>" +
         items + "</VirtualHardwareSection></VirtualSystem></Envelope>";
}

std::string File(int n, std::string extra = "") {
  return "<File ovf:href=\"disk" + std::to_string(n) + ".vmdk\" ovf:id=\"file" + std::to_string(n) +
         "\"" + extra + "/>";
}
std::string Disk(int n, bool with_file = true) {
  return "<Disk ovf:capacity=\"2\" ovf:capacityAllocationUnits=\"byte * 2^30\" ovf:diskId=\"d" +
         std::to_string(n) + "\"" +
         (with_file ? " ovf:fileRef=\"file" + std::to_string(n) + "\"" : std::string()) +
         " ovf:format=\"http://www.vmware.com/interfaces/specifications/"
         "vmdk.html#streamOptimized\"/>";
}
std::string Item(std::string resource) {
  return "<Item><rasd:HostResource>" + resource +
         "</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>";
}

TEST(Ovf, InstallsTheFirstDiskTheFirstSystemAttaches) {
  // Disk 2 is attached first: it is the one installed, whatever the DiskSection's order.
  auto d = ParseOvf(
      Ovf(File(1) + File(2), Disk(1) + Disk(2), Item("ovf:/disk/d2") + Item("ovf:/disk/d1")));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->version, 1);
  EXPECT_EQ(d->system, "vm");
  ASSERT_EQ(d->disks.size(), 2u);
  EXPECT_EQ(d->install, 1u);
  EXPECT_EQ(d->files[d->install_file].href, "disk2.vmdk");
  EXPECT_EQ(d->disks[0].capacity, 2ull << 30);
  EXPECT_EQ(d->attached, (std::vector<size_t>{1, 0}));

  // A blank disk (no file) attached first is skipped; old-style references are understood.
  d = ParseOvf(Ovf(File(2), Disk(1, false) + Disk(2), Item("/disk/d1") + Item("ovf://disk/d2")));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->install, 1u);

  // OVF 2: a StorageItem with sasd:HostResource, inside a VirtualSystemCollection.
  std::string ovf2 = Ovf(File(1), Disk(1),
                         "<StorageItem><sasd:HostResource>ovf:/disk/d1</sasd:HostResource>"
                         "</StorageItem>",
                         "http://schemas.dmtf.org/ovf/envelope/2");
  ovf2.replace(ovf2.find("<VirtualSystem "), 0, "<VirtualSystemCollection ovf:id=\"c\">");
  ovf2.replace(ovf2.find("</Envelope>"), 0, "</VirtualSystemCollection>");
  d = ParseOvf(ovf2);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->version, 2);
  EXPECT_EQ(d->system, "vm");
}

TEST(Ovf, Refusals) {
  struct Case {
    std::string xml;
    Code code;
    std::string detail;
  } cases[] = {
      {"<Envelope", Code::kInvalid, "the descriptor is not well-formed XML: line 1: "},
      {"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>", Code::kInvalid,
       "the descriptor has a DTD (<!DOCTYPE>), which is not allowed"},
      {"<x xmlns=\"urn:a\"/>", Code::kInvalid,
       "the root element is \"x\" in namespace \"urn:a\", not an OVF Envelope"},
      {Ovf(File(1), Disk(1), Item("ovf:/disk/d9")), Code::kInvalid,
       "VirtualSystem \"vm\": a HostResource names disk \"d9\", which the DiskSection does not "
       "list"},
      {Ovf(File(1), Disk(1) + Disk(2), Item("ovf:/disk/d1")), Code::kInvalid,
       "DiskSection: disk \"d2\" names file \"file2\", which References does not list"},
      {Ovf(File(1) + File(1), Disk(1), Item("ovf:/disk/d1")), Code::kInvalid,
       "References: two files have the id \"file1\""},
      {Ovf(File(1), Disk(1) + Disk(1), Item("ovf:/disk/d1")), Code::kInvalid,
       "DiskSection: two disks have the id \"d1\""},
      {Ovf(File(1), Disk(1), ""), Code::kUnsupported,
       "VirtualSystem \"vm\" attaches no disk with a file"},
      {Ovf(File(1, " ovf:compression=\"gzip\""), Disk(1), Item("ovf:/disk/d1")), Code::kUnsupported,
       "disk \"d1\" (file \"disk1.vmdk\") is stored with ovf:compression \"gzip\""},
      {Ovf("<File ovf:href=\"http://example.net/d.vmdk\" ovf:id=\"file1\"/>", Disk(1),
           Item("ovf:/disk/d1")),
       Code::kUnsupported,
       "disk \"d1\" (file \"http://example.net/d.vmdk\") is outside the package"},
      {std::string(kMaxOvfBytes + 1, ' '), Code::kInvalid,
       "the descriptor has 1048577 bytes, more than 1048576"},
  };
  for (const Case& c : cases) {
    auto d = ParseOvf(c.xml);
    ASSERT_FALSE(d.ok()) << c.detail;
    EXPECT_EQ(d.status().code(), c.code) << c.detail;
    EXPECT_EQ(d.status().detail().substr(0, c.detail.size()), c.detail);
  }
}

TEST(Ovf, EncodingErrorsAreReturnedNotPrinted) {
  ::testing::internal::CaptureStderr();
  auto d = ParseOvf("<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><a>\xff\xfe\x7fsTy</a>");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(d.status().detail(),
            "the descriptor is not well-formed XML: line 1: Premature end of data in tag a line 1");
  d = ParseOvf("<a>\xff\xfe</a>");
  EXPECT_EQ(d.status().detail(),
            "the descriptor is not well-formed XML: line 1: Input is not proper UTF-8, indicate "
            "encoding ! Bytes: 0xFF 0xFE 0x3C 0x2F");
}

TEST(OvaManifest, ReadsOvftoolAndVirtualBoxLines) {
  const std::string sha1(40, 'a');
  const std::string sha256(64, 'B');
  auto lines =
      ParseOvaManifest("SHA1(a.ovf)= " + sha1 + "\r\n\nsha256 (disk (1).vmdk) = " + sha256 + "\n");
  ASSERT_TRUE(lines.ok()) << lines.status().ToString();
  ASSERT_EQ(lines->size(), 2u);
  EXPECT_EQ((*lines)[0].file, "a.ovf");
  EXPECT_EQ((*lines)[0].algo, "sha1");
  EXPECT_EQ((*lines)[1].file, "disk (1).vmdk");
  EXPECT_EQ((*lines)[1].algo, "sha256");
  EXPECT_EQ((*lines)[1].hex, std::string(64, 'b'));

  EXPECT_EQ(ParseOvaManifest("MD5(a)= " + std::string(32, '0')).status().code(),
            Code::kUnsupported);
  EXPECT_EQ(ParseOvaManifest("\nSHA1(a)= 12").status().detail(),
            "line 2: a sha1 digest is 40 hex digits");
  EXPECT_EQ(ParseOvaManifest("SHA1(a) " + sha1).status().detail(),
            "line 1: not ALGO(FILE)= DIGEST");
  EXPECT_EQ(ParseOvaManifest("SHA1()= " + sha1).status().detail(),
            "line 1: not ALGO(FILE)= DIGEST");
}

std::string Digest(std::string_view algo, std::string_view data) {
  CancelToken cancel;
  auto d = HexDigest(algo, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
                     cancel);
  EXPECT_TRUE(d.ok());
  return *d;
}

TEST(OvaManifest, Digests) {
  EXPECT_EQ(Digest("sha256", "abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Digest("sha1", ""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  CancelToken cancel;
  cancel.Cancel();
  const std::vector<uint8_t> bytes(10);
  EXPECT_EQ(HexDigest("sha1", bytes, cancel).status().code(), Code::kCancelled);
}

// A one-disk OVA whose disk member holds `disk` (not a VMDK: ReadOva does not read it).
std::vector<TarMember> Appliance(std::string disk = "disk bytes") {
  return {{"a.ovf", Ovf(File(1), Disk(1), Item("ovf:/disk/d1"))},
          {"a.mf", "SHA256(disk1.vmdk)= " + Digest("sha256", disk) + "\n"},
          {"disk1.vmdk", disk}};
}

TEST(Ova, ListsMembersAndFindsTheDisk) {
  std::vector<TarMember> members = Appliance();
  members.insert(members.begin() + 2, {"./", "", '5'});
  members[3].name = "./disk1.vmdk";
  std::vector<uint8_t> bytes = Tar(members);
  auto ova = ReadOva(bytes);
  ASSERT_TRUE(ova.ok()) << ova.status().ToString();
  ASSERT_EQ(ova->info.members.size(), 3u);
  EXPECT_EQ(ova->info.members[2].name, "disk1.vmdk");
  EXPECT_EQ(ova->info.disk, 2u);
  EXPECT_EQ(ova->info.manifest, 1u);
  EXPECT_EQ(ova->info.disk_id, "d1");
  EXPECT_EQ(std::string(ova->disk.begin(), ova->disk.end()), "disk bytes");
  EXPECT_EQ(ova->info.members[2].offset % 512, 0u);
  CancelToken cancel;
  EXPECT_TRUE(VerifyOvaManifest(bytes, ova->info, cancel).ok());
  EXPECT_TRUE(LooksLikeOva(bytes));
}

TEST(Ova, ManifestMismatchNamesTheFile) {
  std::vector<TarMember> members = Appliance();
  members[2].data = "disk bytez";
  std::vector<uint8_t> bytes = Tar(members);
  auto ova = ReadOva(bytes);
  ASSERT_TRUE(ova.ok()) << ova.status().ToString();
  CancelToken cancel;
  Status s = VerifyOvaManifest(bytes, ova->info, cancel);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_EQ(s.message(),
            "Bad sha256 for disk1.vmdk in the OVA, got: " + Digest("sha256", "disk bytez") +
                " while expecting " + Digest("sha256", "disk bytes") + ".");
  EXPECT_EQ(s.detail(), "the sha256 of disk1.vmdk (10 bytes) differs from the manifest's");
}

TEST(Ova, Refusals) {
  auto refused = [](std::vector<TarMember> members) {
    auto ova = ReadOva(Tar(members));
    EXPECT_FALSE(ova.ok());
    return ova.ok() ? std::string() : ova.status().detail();
  };
  std::vector<TarMember> m = Appliance();
  std::swap(m[0], m[2]);
  EXPECT_EQ(refused(m), "the archive's first file is disk1.vmdk, not an .ovf descriptor");
  m = Appliance();
  m.push_back({"b.ovf", "<x/>"});
  EXPECT_EQ(refused(m), "the archive holds two .ovf files: a.ovf and b.ovf");
  m = Appliance();
  m.push_back({"disk1.vmdk", "again"});
  EXPECT_EQ(refused(m), "two members are named disk1.vmdk");
  m = Appliance();
  m.push_back({"link", "", '2'});
  EXPECT_EQ(refused(m), "member link is not a regular file");
  m = Appliance();
  m.pop_back();
  EXPECT_EQ(refused(m),
            "the descriptor names file disk1.vmdk (id file1), which is not in the archive");
  m = Appliance();
  m[1].data += "SHA1(other.vmdk)= " + std::string(40, '0') + "\n";
  EXPECT_EQ(refused(m), "the manifest a.mf names file other.vmdk, which is not in the archive");
  m = Appliance();
  m[0].data = "<Envelope>";
  EXPECT_EQ(refused(m).substr(0, 52), "the descriptor a.ovf: the descriptor is not well-for");
  EXPECT_EQ(refused({}), "the archive holds no file");

  std::vector<TarMember> many = Appliance();
  for (int i = 0; i < 4094; ++i) many.push_back({"f" + std::to_string(i), ""});
  EXPECT_EQ(refused(many), "the archive has more than 4096 members");
}

}  // namespace
}  // namespace byoi
