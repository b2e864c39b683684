// Stream mode's VMDK and OVA readers on files built here: any split of the input gives the disk
// the RAM reader gives, the header callback comes before the sink is used, and the refusals that
// show only at the end (a digest, a table that disagrees with the markers, an archive cut short).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/image/open_image.hpp"
#include "agent/image/ova_manifest.hpp"
#include "agent/image/ova_stream.hpp"
#include "agent/image/stream_image.hpp"
#include "agent/image/virtual_reader.hpp"
#include "agent/image/vmdk_stream.hpp"
#include "tests/unit/memory_sink.hpp"
#include "tests/unit/tar_builder.hpp"
#include "tests/unit/vmdk_builder.hpp"

namespace byoi {
namespace {

using testing::Bytes;
using testing::MemorySink;

Bytes RamDisk(const Bytes& image) {
  auto opened = OpenImage(image);
  EXPECT_TRUE(opened.ok()) << opened.status().ToString();
  if (!opened.ok()) return {};
  Bytes out(opened->layout.virtual_size());
  VirtualReader reader(opened->layout);
  EXPECT_TRUE(reader.Read(0, out).ok());
  return out;
}

// Feeds `image` in pieces of `piece` bytes to a reader made by `make(sink, on_header)`.
template <typename Reader, typename Make>
Status Feed(const Bytes& image, size_t piece, MemorySink& sink, Make make) {
  bool header_first = false;
  auto on_header = [&](const VmdkInfo&) {
    header_first = sink.calls == 0;
    return Status::Ok();
  };
  std::unique_ptr<Reader> reader = make(sink, on_header);
  Status s = reader->Start(image.size());
  for (size_t at = 0; s.ok() && at < image.size(); at += piece) {
    s = reader->Write(std::span(image).subspan(at, std::min(piece, image.size() - at)));
  }
  if (s.ok()) {
    auto size = reader->Finish();
    s = size.ok() ? Status::Ok() : size.status();
  }
  if (s.ok() && !header_first) return Status::Error(Code::kInternal, "the sink came first");
  return s;
}

Status FeedVmdk(const Bytes& image, size_t piece, MemorySink& sink) {
  return Feed<VmdkStreamReader>(image, piece, sink, [](MemorySink& sink, auto on_header) {
    return std::make_unique<VmdkStreamReader>(sink, VmdkStreamOptions{}, on_header);
  });
}

Status FeedOva(const Bytes& image, size_t piece, MemorySink& sink) {
  return Feed<OvaStreamReader>(image, piece, sink, [](MemorySink& sink, auto on_header) {
    return std::make_unique<OvaStreamReader>(sink, OvaStreamOptions{}, on_header);
  });
}

constexpr size_t kPieces[] = {1, 7, 12, 511, 512, 513, 4096, 1 << 20};

TEST(VmdkStreamReader, AnySplitGivesTheRamReadersDisk) {
  for (size_t last : {2048, 4096}) {  // the last grain: the disk's part of it, or all of it
    const Bytes file = testing::ContiguousStreamFile(testing::Zlib(last, 0xc2));
    const Bytes want = RamDisk(file);
    ASSERT_EQ(want.size(), 10240u);
    for (size_t piece : kPieces) {
      MemorySink sink(want.size());
      Status s = FeedVmdk(file, piece, sink);
      ASSERT_TRUE(s.ok()) << piece << ": " << s.ToString();
      EXPECT_TRUE(sink.Complete()) << piece;
      EXPECT_EQ(sink.disk, want) << piece;
    }
  }
}

TEST(VmdkStreamReader, Refusals) {
  MemorySink sink(10240);
  // A marker after the end-of-stream one is not read: the table's grain never came.
  Bytes eos(512, 0);
  Bytes file = testing::ContiguousStreamFile(testing::Zlib(2048, 1));
  Bytes early = file;
  early.insert(early.begin() + 9 * 512, eos.begin(), eos.end());
  EXPECT_EQ(FeedVmdk(early, 512, sink).detail(),
            "the grain at sector 16: its table entry points to 0x1200, where no grain marker came");
  // Cut inside the last grain.
  MemorySink cut_sink(10240);
  Bytes cut(file.begin(), file.end() - 500);  // the padding and the data
  EXPECT_EQ(FeedVmdk(cut, 4096, cut_sink).detail(),
            "the file is truncated: it ends inside the marker at 0x1200");
  // A directory marker after the grains of a file whose header gives the directory's offset: it
  // is passed over, as the RAM reader does not read it.
  Bytes gd_marker(1024, 0);
  testing::PutLe(gd_marker, 0, 1, 8);   // one sector of metadata
  testing::PutLe(gd_marker, 12, 2, 4);  // a grain directory
  testing::PutLe(gd_marker, 512, 0x7fffffff, 4);
  const Bytes with_marker = testing::ContiguousStreamFile(testing::Zlib(2048, 0xc2), gd_marker);
  MemorySink marker_sink(10240);
  EXPECT_TRUE(FeedVmdk(with_marker, 512, marker_sink).ok());
  EXPECT_EQ(marker_sink.disk, RamDisk(with_marker));
  // A first grain past the end of a file whose length is known: refused as the RAM reader does,
  // before anything is held.
  MemorySink far_sink(10240);
  Bytes far = testing::ContiguousStreamFile(testing::Zlib(2048, 1));
  testing::PutLe(far, 64, uint64_t{1} << 54, 8);  // grain_offset
  EXPECT_EQ(FeedVmdk(far, 512, far_sink).detail(),
            fmt::format("the file is truncated: its grains start at sector {}, past its end ({} "
                        "bytes)",
                        uint64_t{1} << 54, far.size()));
  // A first grain within the file, so far into it that what comes before it passes the budget.
  MemorySink late_sink(10240);
  Bytes late = testing::ContiguousStreamFile(testing::Zlib(2048, 1));
  testing::PutLe(late, 64, 3, 8);  // grain_offset: 1536 bytes to hold, the budget is 1024
  Status too_big = Feed<VmdkStreamReader>(late, 512, late_sink, [](MemorySink& sink, auto on) {
    return std::make_unique<VmdkStreamReader>(
        sink, VmdkStreamOptions{.memory_budget = 1024, .type = "vmdk"}, on);
  });
  EXPECT_EQ(too_big.code(), Code::kTooBig);
  EXPECT_EQ(too_big.message(), "Could not download, vmdk image is too big to download in memory.");
  // monolithicSparse.
  MemorySink sparse_sink(10240);
  Status s = FeedVmdk(testing::Header(20, 8, 4, 2, 8), 512, sparse_sink);
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_EQ(s.detail(),
            "a monolithicSparse VMDK: its grains may come in any order, so stream mode cannot read "
            "it (ram mode can)");
}

std::string Sha256(const Bytes& b) {
  CancelToken cancel;
  return *HexDigest("sha256", b, cancel);
}

std::string Ovf() {
  return "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\""
         "http://schemas.dmtf.org/ovf/envelope/1\" xmlns:rasd=\"http://schemas.dmtf.org/wbem/"
         "wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\"><References><File "
         "ovf:href=\"disk1.vmdk\" ovf:id=\"f1\"/></References><DiskSection><Disk ovf:diskId=\"d1\" "
         "ovf:fileRef=\"f1\"/></DiskSection><VirtualSystem ovf:id=\"vm\"><VirtualHardwareSection>"
         "<Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource></Item>"
         "</VirtualHardwareSection></VirtualSystem></Envelope>";
}

Bytes Ova(const Bytes& disk, const std::string& digest) {
  return testing::Tar({{"a.ovf", Ovf()},
                       {"a.mf", "SHA256(disk1.vmdk)= " + digest + "\n"},
                       {"disk1.vmdk", std::string(disk.begin(), disk.end())}});
}

TEST(OvaStreamReader, AnySplitGivesTheRamReadersDisk) {
  const Bytes disk = testing::ContiguousStreamFile(testing::Zlib(2048, 0xc2));
  const Bytes ova = Ova(disk, Sha256(disk));
  const Bytes want = RamDisk(ova);
  ASSERT_EQ(want.size(), 10240u);
  for (size_t piece : kPieces) {
    MemorySink sink(want.size());
    Status s = FeedOva(ova, piece, sink);
    ASSERT_TRUE(s.ok()) << piece << ": " << s.ToString();
    EXPECT_TRUE(sink.Complete()) << piece;
    EXPECT_EQ(sink.disk, want) << piece;
  }
}

TEST(StreamImage, ReadsWhatOpenImageReads) {
  // A descriptor whose name starts like gzip data: format detection names gzip, but the image is
  // an OVA to OpenImage (SourceFormat), and so must it be to stream mode.
  const Bytes disk = testing::ContiguousStreamFile(testing::Zlib(2048, 0xc2));
  const Bytes ova = testing::Tar(
      {{"\x1f\x8b.ovf", Ovf()}, {"disk1.vmdk", std::string(disk.begin(), disk.end())}});
  ASSERT_EQ(DetectFormat(ova).name, "gzip");
  const Bytes want = RamDisk(ova);
  ASSERT_EQ(want.size(), 10240u);
  MemorySink sink(want.size());
  StreamImage image(sink, {}, nullptr);
  ASSERT_TRUE(image.Start(ova.size()).ok());
  ASSERT_TRUE(image.Write(ova).ok());
  auto size = image.Finish();
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(sink.disk, want);
}

TEST(OvaStreamReader, RefusalsAtTheEnd) {
  const Bytes disk = testing::ContiguousStreamFile(testing::Zlib(2048, 0xc2));
  MemorySink sink(10240);
  Status s = FeedOva(Ova(disk, std::string(64, '0')), 100, sink);
  EXPECT_EQ(s.message(), "Bad sha256 for disk1.vmdk in the OVA, got: " + Sha256(disk) +
                             " while expecting " + std::string(64, '0') + ".");
  // Cut inside the disk's data.
  Bytes ova = Ova(disk, Sha256(disk));
  ova.resize(2048 + 1024 + 512 + 100);
  MemorySink cut(10240);
  EXPECT_EQ(FeedOva(ova, 512, cut).detail(), "member disk1.vmdk: Truncated tar archive");
  // The descriptor must come first.
  MemorySink late(10240);
  EXPECT_EQ(FeedOva(testing::Tar({{"disk1.vmdk", "x"}, {"a.ovf", Ovf()}}), 512, late).detail(),
            "the archive's first file is disk1.vmdk, not an .ovf descriptor");
}

}  // namespace
}  // namespace byoi
