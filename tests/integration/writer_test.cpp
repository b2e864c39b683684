// The block writer on real loop devices (512- and 4096-byte sectors) and files, pre-filled with
// random bytes: exact content, nothing past the virtual size touched, zero ranges really zeroed,
// the first MiB written last, and nothing wiped after a failure (the runner does that).
#include "agent/disk/writer.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <libdeflate.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/image/raw_source.hpp"
#include "tests/integration/test_util.hpp"

namespace byoi {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A backing file of `size` random bytes, and a loop device over it when sector_size != 0.
class Disk {
 public:
  Disk(uint64_t size, uint32_t sector_size) {
    dir_ = std::filesystem::temp_directory_path() / ("byoi-writer-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    backing_ = (dir_ / ("disk" + std::to_string(sector_size))).string();
    original_ = testing::RandomBytes(size, static_cast<uint32_t>(size + sector_size));
    auto fd = OpenFile(backing_, O_RDWR | O_CREAT | O_TRUNC, 0600);
    EXPECT_TRUE(fd.ok() && PwriteAll(fd->get(), original_, 0).ok());
    if (sector_size != 0) {
      device_ =
          testing::Output({"losetup", "-f", "--show", "-b", std::to_string(sector_size), backing_});
      EXPECT_FALSE(device_.empty()) << "losetup failed";
    }
  }
  ~Disk() {
    if (!device_.empty()) testing::Output({"losetup", "-d", device_});
    std::filesystem::remove_all(dir_);
  }
  const std::string& path() const { return device_.empty() ? backing_ : device_; }
  const std::vector<uint8_t>& original() const { return original_; }
  std::vector<uint8_t> Read(uint64_t offset, uint64_t length) const {
    return testing::ReadRange(path(), offset, length);
  }

 private:
  std::filesystem::path dir_;
  std::string backing_, device_;
  std::vector<uint8_t> original_;
};

// An image built by hand: data, zero runs and deflate-compressed 64 KiB clusters, with the bytes
// the virtual disk must hold.
struct TestImage {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<Extent> extents;
  ImageLayout layout;  // made of `extents` by Finish()
  std::vector<uint8_t> expected;

  void Data(uint64_t length, uint32_t seed) { Bytes(testing::RandomBytes(length, seed)); }
  // A data extent of these bytes (zeros, say: an image's bytes that happen to be zero).
  void Bytes(std::vector<uint8_t> bytes) {
    const uint64_t length = bytes.size();
    storage.push_back(std::move(bytes));
    Extent e;
    e.kind = Extent::Kind::kData;
    e.offset = expected.size();
    e.length = length;
    e.data = storage.back().data();
    extents.push_back(e);
    expected.insert(expected.end(), storage.back().begin(), storage.back().end());
  }
  void Zero(uint64_t length) {
    Extent e;
    e.kind = Extent::Kind::kZero;
    e.offset = expected.size();
    e.length = length;
    extents.push_back(e);
    expected.resize(expected.size() + length, 0);
  }
  // A compressed cluster; `corrupt` damages its stream.
  void Compressed(uint8_t fill, bool corrupt = false, uint32_t cluster = 65536) {
    std::vector<uint8_t> plain(cluster);
    for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>(fill + i / 1000);
    auto* c = libdeflate_alloc_compressor(6);
    std::vector<uint8_t> out(cluster * 2);
    size_t n = libdeflate_deflate_compress(c, plain.data(), plain.size(), out.data(), out.size());
    libdeflate_free_compressor(c);
    out.resize(n + 300);  // trailing garbage up to the sector end, as in qcow2
    if (corrupt) std::fill(out.begin(), out.begin() + 32, 0xff);
    storage.push_back(std::move(out));
    Extent e;
    e.kind = Extent::Kind::kCompressed;
    e.offset = expected.size();
    e.length = cluster;
    e.data = storage.back().data();
    e.compressed_length = storage.back().size();
    e.cluster_size = cluster;
    e.compression = Compression::kDeflate;
    extents.push_back(e);
    expected.insert(expected.end(), plain.begin(), plain.end());
  }
  void Finish() { layout = ImageLayout::FromExtents(extents); }
};

TestImage MixedImage(uint64_t tail) {
  TestImage img;
  img.Data(kMiB + 4096, 1);
  img.Zero(9 * kMiB - 4096);  // whole zero chunks: zeroed by the device, not written
  for (int i = 0; i < 8; ++i) img.Compressed(static_cast<uint8_t>(i * 7));
  img.Zero(65536);
  img.Data(2 * kMiB + tail, 2);
  img.Finish();
  return img;
}

Result<Target> OpenTarget(const std::string& path, std::optional<uint64_t> file_size = {}) {
  Target::Options o;
  o.file_size = file_size;
  return Target::Open(path, o);
}

class WriterOnLoop : public ::testing::TestWithParam<uint32_t> {};

TEST_P(WriterOnLoop, WritesExactBytesAndNothingPastTheImage) {
  Disk disk(16 * kMiB, GetParam());
  // A virtual size that is a multiple of 512 but not of 4096: the tail goes through the page cache.
  TestImage img = MixedImage(1536);
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  EXPECT_EQ(target->sector_size(), GetParam());
  EXPECT_TRUE(target->direct());
  std::vector<uint64_t> seen;
  CancelToken cancel;
  WriteOptions opts;
  opts.image_type = "raw";
  auto stats = WriteImage(
      img.layout, *target, opts,
      [&](uint64_t done, uint64_t total) {
        EXPECT_EQ(total, img.layout.virtual_size());
        seen.push_back(done);
      },
      cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_GE(stats->bytes_zeroed, 4 * kMiB);
  ASSERT_FALSE(seen.empty());
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ(seen.back(), img.layout.virtual_size());
  const uint64_t vsize = img.layout.virtual_size();
  EXPECT_TRUE(disk.Read(0, vsize) == img.expected);
  std::vector<uint8_t> rest(disk.original().begin() + vsize, disk.original().end());
  EXPECT_TRUE(disk.Read(vsize, 16 * kMiB - vsize) == rest);
}

TEST_P(WriterOnLoop, ProgressCountsOnlyBytesTheDiskHolds) {
  // A zero run waits for its neighbours before it is zeroed (zero_runs.hpp); until then it is not
  // done. At every report, the disk holds at least that many bytes of the image, counted in 4 KiB
  // blocks that match it (the disk's old bytes are random, so none matches by chance).
  Disk disk(48 * kMiB, GetParam());
  TestImage img;
  img.Data(kMiB, 21);
  img.Zero(32 * kMiB);
  img.Data(8 * kMiB, 22);
  img.Finish();
  const uint64_t vsize = img.layout.virtual_size();
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  WriteOptions opts;
  opts.threads = 1;
  CancelToken cancel;
  std::vector<uint64_t> seen;
  auto held = [&] {
    const std::vector<uint8_t> now = disk.Read(0, vsize);
    uint64_t bytes = 0;
    for (uint64_t pos = 0; pos < vsize; pos += 4096) {
      if (std::memcmp(now.data() + pos, img.expected.data() + pos, 4096) == 0) bytes += 4096;
    }
    return bytes;
  };
  auto stats = WriteImage(
      img.layout, *target, opts,
      [&](uint64_t done, uint64_t) {
        seen.push_back(done);
        EXPECT_LE(done, held()) << "reported after " << seen.size() - 1 << " report(s)";
      },
      cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->bytes_zeroed, 32 * kMiB);
  EXPECT_TRUE(
      std::any_of(seen.begin(), seen.end(), [&](uint64_t d) { return d > 0 && d < vsize; }));
  EXPECT_EQ(seen.back(), vsize);
  EXPECT_TRUE(disk.Read(0, vsize) == img.expected);
}

TEST_P(WriterOnLoop, DataChunksOfZerosAreZeroedByTheDeviceAndReadBackAsZeros) {
  Disk disk(16 * kMiB, GetParam());  // pre-filled with random bytes
  // A raw image as it arrives: one data extent, most of it zeros (as in a real disk image).
  std::vector<uint8_t> raw(12 * kMiB, 0);
  std::vector<uint8_t> head = testing::RandomBytes(kMiB, 3),
                       tail = testing::RandomBytes(kMiB + 512, 4);
  std::copy(head.begin(), head.end(), raw.begin());
  std::copy(tail.begin(), tail.end(), raw.end() - static_cast<ptrdiff_t>(tail.size()));
  raw[6 * kMiB + 4095] = 1;  // one byte keeps its block a data block
  ImageLayout layout = RawLayout(raw);
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  CancelToken cancel;
  auto stats = WriteImage(layout, *target, WriteOptions{}, {}, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  // Looked at in 64 KiB blocks: written are the first MiB, the block holding the byte, and the
  // tail with the block it begins in; the rest is zeroed.
  const uint64_t written = kMiB + 65536 + (kMiB + 65536);
  EXPECT_EQ(stats->bytes_written, written);
  EXPECT_EQ(stats->bytes_zeroed, raw.size() - written);
  EXPECT_TRUE(disk.Read(0, raw.size()) == raw);
}

// Zero chunks that follow each other are one zeroing request, whether the layout says zeros or
// its bytes are zeros: 4 MiB chunks from 1 MiB, [1,9) zeros, [9,17) bytes of zeros, [17,21) data,
// then [21,29) bytes of zeros: two requests, where every zero chunk was one of its own; and so for
// the same bytes as a raw image.
TEST_P(WriterOnLoop, ChunksOfZerosThatFollowEachOtherAreOneZeroingRequest) {
  Disk disk(32 * kMiB, GetParam());
  TestImage img;
  img.Data(kMiB, 1);
  img.Zero(8 * kMiB);
  img.Bytes(std::vector<uint8_t>(8 * kMiB, 0));
  img.Data(4 * kMiB, 2);
  img.Bytes(std::vector<uint8_t>(8 * kMiB, 0));
  img.Finish();
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, WriteOptions{}, {}, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->zero_requests, 2u);
  EXPECT_EQ(stats->bytes_zeroed, 24 * kMiB);
  EXPECT_EQ(stats->bytes_written, 5 * kMiB);
  EXPECT_TRUE(disk.Read(0, img.expected.size()) == img.expected);

  // The same bytes as one raw image (one data extent): the same two requests.
  ImageLayout raw = RawLayout(img.expected);
  stats = WriteImage(raw, *target, WriteOptions{}, {}, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->zero_requests, 2u);
  EXPECT_EQ(stats->bytes_zeroed, 24 * kMiB);
  EXPECT_TRUE(disk.Read(0, img.expected.size()) == img.expected);
}

TEST_P(WriterOnLoop, ZerosInsideAChunkAreZeroedNotWritten) {
  // A file system's clusters: data and holes of every size in one 4 MiB chunk. Holes of 256 KiB
  // or more are zeroed, from the first sector boundary in them; shorter ones go with the data.
  Disk disk(16 * kMiB, GetParam());
  const uint64_t sector = GetParam();
  TestImage img;
  img.Data(kMiB + 1536, 31);  // the first MiB, and a hole that starts inside a 4 KiB sector
  img.Zero(512 * 1024 - 1536);
  img.Data(65536, 32);
  img.Zero(65536);  // short: written
  img.Data(65536, 33);
  img.Zero(kMiB);
  img.Data(65536, 34);
  img.Zero(2 * kMiB - 3 * 65536);  // to the chunk's end and past it
  img.Zero(kMiB);
  img.Data(kMiB, 35);
  img.Finish();
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, WriteOptions{}, {}, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  const uint64_t zeroed =
      (512 * 1024 - (1536 + sector - 1) / sector * sector) + kMiB + (3 * kMiB - 3 * 65536);
  EXPECT_EQ(stats->bytes_zeroed, zeroed);
  EXPECT_EQ(stats->bytes_written, img.layout.virtual_size() - zeroed);
  EXPECT_TRUE(disk.Read(0, img.expected.size()) == img.expected);
}

TEST_P(WriterOnLoop, AWriteThatFailsMidwayLeavesTheFirstMiBUnwritten) {
  // A 16 MiB disk whose first and last MiB hold old bytes and whose middle is a hole, on a tmpfs
  // with room for 3 MiB more: writing the image's 15 MiB of data fails with ENOSPC (EIO through a
  // loop device) part-way. The writer reports it and wipes nothing (the runner does); its first
  // MiB was never written.
  testing::SmallTmpfs fs(5 * kMiB);
  const std::string backing = fs.path("disk");
  const std::vector<uint8_t> head = testing::RandomBytes(kMiB, 11),
                             tail = testing::RandomBytes(kMiB, 12);
  {
    auto fd = OpenFile(backing, O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(::ftruncate(fd->get(), 16 * kMiB), 0);
    ASSERT_TRUE(PwriteAll(fd->get(), head, 0).ok());
    ASSERT_TRUE(PwriteAll(fd->get(), tail, 15 * kMiB).ok());
  }
  std::unique_ptr<testing::LoopDevice> loop;
  std::string path = backing;
  if (GetParam() != 0) {
    loop = std::make_unique<testing::LoopDevice>(backing, GetParam());
    path = loop->path();
  }
  TestImage img;
  img.Data(16 * kMiB, 13);
  img.Finish();
  auto target = OpenTarget(path);
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  WriteOptions opts;
  opts.image_type = "qcow2";
  opts.threads = 1;  // chunks in order: the last MiB is not reached before the disk is full
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, opts, nullptr, cancel);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), Code::kIo) << stats.status().ToString();
  EXPECT_EQ(stats.status().message(), msg::CantWrite("qcow2"));
  EXPECT_TRUE(testing::ReadRange(path, 0, kMiB) == head);
  EXPECT_TRUE(testing::ReadRange(path, 15 * kMiB, kMiB) == tail);
}

TEST_P(WriterOnLoop, FirstMiBIsWrittenLast) {
  // A corrupt compressed cluster inside the first MiB is only met when the head is written,
  // after the rest of the disk: the rest holds the image, the head still the old bytes.
  Disk disk(16 * kMiB, GetParam());
  TestImage img;
  img.Data(65536, 3);
  img.Compressed(1, /*corrupt=*/true);
  img.Data(8 * kMiB - 2 * 65536, 4);
  img.Finish();
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok());
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, {}, nullptr, cancel);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), Code::kInvalid);
  EXPECT_EQ(stats.status().message(), msg::CantWrite("qcow2"));
  EXPECT_NE(stats.status().detail().find("compressed cluster at virtual offset 0x10000"),
            std::string::npos)
      << stats.status().detail();
  const std::vector<uint8_t> old_head(disk.original().begin(), disk.original().begin() + kMiB);
  EXPECT_TRUE(disk.Read(0, kMiB) == old_head);
  std::vector<uint8_t> body(img.expected.begin() + kMiB, img.expected.end());
  EXPECT_TRUE(disk.Read(kMiB, 7 * kMiB) == body);
}

TEST_P(WriterOnLoop, ACancelledJobStopsBeforeWriting) {
  Disk disk(16 * kMiB, GetParam());
  TestImage img = MixedImage(0);
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok());
  CancelToken cancel;
  cancel.Cancel();
  auto stats = WriteImage(img.layout, *target, {}, nullptr, cancel);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), Code::kCancelled);
  EXPECT_EQ(stats.status().message(), kCancelledMessage);
  EXPECT_TRUE(disk.Read(0, 16 * kMiB) == disk.original());
}

TEST_P(WriterOnLoop, ReadBackFindsAByteChangedOnTheDeviceAfterTheWrite) {
  Disk disk(16 * kMiB, GetParam());
  TestImage img = MixedImage(0);
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok());
  WriteOptions opts;
  opts.image_type = "raw";
  CancelToken cancel;
  ASSERT_TRUE(WriteImage(img.layout, *target, opts, nullptr, cancel).ok());
  uint64_t last = 0;
  Status s = VerifyImageWritten(
      img.layout, *target, opts, [&](uint64_t done, uint64_t) { last = done; }, cancel);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(last, img.layout.virtual_size());
  // One bit flipped behind the writer's back, in a data extent and in a zero range.
  for (uint64_t at : {uint64_t{3 * kMiB + 12345}, img.layout.virtual_size() - 4000}) {
    auto fd = OpenFile(disk.path(), O_RDWR);
    ASSERT_TRUE(fd.ok());
    uint8_t b = 0;
    ASSERT_TRUE(PreadAll(fd->get(), {&b, 1}, at).ok());
    b ^= 0x08;
    ASSERT_TRUE(PwriteAll(fd->get(), {&b, 1}, at).ok());
    ASSERT_EQ(::fsync(fd->get()), 0);
    s = VerifyImageWritten(img.layout, *target, opts, nullptr, cancel);
    EXPECT_EQ(s.code(), Code::kIo);
    EXPECT_EQ(s.message(), "Can't write raw on disk.");
    EXPECT_NE(s.detail().find(fmt::format("differs from the image at {:#x}", at)),
              std::string::npos)
        << s.detail();
    b ^= 0x08;
    ASSERT_TRUE(PwriteAll(fd->get(), {&b, 1}, at).ok());
    ASSERT_EQ(::fsync(fd->get()), 0);
  }
}

TEST_P(WriterOnLoop, ImageLargerThanDiskLeavesItUntouched) {
  Disk disk(4 * kMiB, GetParam());
  TestImage img = MixedImage(0);
  auto target = OpenTarget(disk.path());
  ASSERT_TRUE(target.ok());
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, {}, nullptr, cancel);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), Code::kTooBig);
  EXPECT_EQ(stats.status().message(),
            msg::ImageLargerThanDisk(img.layout.virtual_size(), disk.path(), 4 * kMiB));
  EXPECT_TRUE(disk.Read(0, 4 * kMiB) == disk.original());
}

INSTANTIATE_TEST_SUITE_P(SectorSizes, WriterOnLoop, ::testing::Values(512u, 4096u));

TEST(WriterOnFile, ResizesFileAndZeroesStaleBytes) {
  Disk disk(32 * kMiB, 0);  // a regular file full of random bytes, longer than the image
  TestImage img = MixedImage(512);
  auto target = OpenTarget(disk.path(), img.layout.virtual_size());
  ASSERT_TRUE(target.ok()) << target.status().ToString();
  EXPECT_FALSE(target->is_block_device());
  EXPECT_EQ(target->size(), img.layout.virtual_size());
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, {}, nullptr, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(std::filesystem::file_size(disk.path()), img.layout.virtual_size());
  EXPECT_TRUE(disk.Read(0, img.layout.virtual_size()) == img.expected);
}

TEST(WriterOnFile, EmptyImage) {
  Disk disk(kMiB, 0);
  TestImage img;
  img.Finish();
  auto target = OpenTarget(disk.path(), 0);
  ASSERT_TRUE(target.ok());
  CancelToken cancel;
  auto stats = WriteImage(img.layout, *target, {}, nullptr, cancel);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(std::filesystem::file_size(disk.path()), 0u);
}

TEST(Target, MissingPathIsNotFound) {
  auto t = OpenTarget("/nonexistent/byoi/disk");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kNotFound);
}

TEST(Target, ExclusiveOpenRefusesAClaimedDevice) {
  Disk disk(4 * kMiB, 512);
  auto first = OpenTarget(disk.path());
  ASSERT_TRUE(first.ok());
  auto second = OpenTarget(disk.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kBusy);
}

// The flush requests a loop device has completed (field 16 of /sys/block/loopN/stat).
uint64_t Flushes(const std::string& device) {
  std::ifstream f("/sys/block/" + device.substr(device.rfind('/') + 1) + "/stat");
  std::vector<uint64_t> fields{std::istream_iterator<uint64_t>(f), {}};
  return fields.size() >= 16 ? fields[15] : 0;
}

// The device's write cache is flushed as the image goes down, every flush_every bytes, not only
// at the end: the same 64 MiB written with 4 MiB between flushes and with none.
TEST(Target, TheWriteCacheIsFlushedAsTheImageGoesDown) {
  Disk disk(64 * kMiB, 512);
  TestImage img;
  img.Data(64 * kMiB, 5);
  img.Finish();
  uint64_t flushes[2] = {};
  for (int i = 0; i < 2; ++i) {
    Target::Options o;
    o.flush_every = i == 0 ? 0 : 4 * kMiB;
    auto target = Target::Open(disk.path(), o);
    ASSERT_TRUE(target.ok()) << target.status().ToString();
    const uint64_t before = Flushes(disk.path());
    CancelToken cancel;
    WriteOptions opts;
    opts.image_type = "raw";
    auto stats = WriteImage(img.layout, *target, opts, nullptr, cancel);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    flushes[i] = Flushes(disk.path()) - before;
    EXPECT_TRUE(disk.Read(0, 64 * kMiB) == img.expected);
  }
  ASSERT_GT(flushes[0], 0u);  // the writer's own, at the end
  // 63 MiB go down before the first MiB, in 4 MiB writes: up to 15 flushes more, fewer when a
  // threshold passes during a flush (one at a time; 8 more in the runs made).
  EXPECT_GE(flushes[1], flushes[0] + 3) << flushes[0] << " " << flushes[1];
}

}  // namespace
}  // namespace byoi
