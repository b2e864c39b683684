// FeedFile: a file's bytes to a ByteSink, in order, in pieces, with its errors as they are.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "agent/base/byte_sink.hpp"
#include "agent/base/fd.hpp"
#include "tests/unit/random_bytes.hpp"

namespace byoi {
namespace {

// Keeps what it is given; fails its Write number `fail_at` (1-based) when set.
class Recorder : public ByteSink {
 public:
  Status Start(std::optional<uint64_t> total) override {
    ++starts;
    this->total = total;
    return Status::Ok();
  }
  Status Write(std::span<const uint8_t> bytes) override {
    if (++writes == fail_at)
      return Status::Error(Code::kInvalid, "bad byte", "Can't write raw on disk.");
    sizes.push_back(bytes.size());
    got.insert(got.end(), bytes.begin(), bytes.end());
    return Status::Ok();
  }
  int starts = 0;
  int writes = 0;
  int fail_at = 0;
  std::optional<uint64_t> total;
  std::vector<size_t> sizes;
  std::vector<uint8_t> got;
};

UniqueFd MemfdWith(const std::vector<uint8_t>& bytes) {
  UniqueFd fd(::memfd_create("feed-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_TRUE(PwriteAll(fd.get(), bytes, 0).ok());
  return fd;
}

TEST(FeedFile, GivesEveryByteInOrderInPieces) {
  const auto bytes = RandomBytes(10 * 1000 + 3, 1);
  UniqueFd fd = MemfdWith(bytes);
  Recorder sink;
  CancelToken cancel;
  FeedOptions options;
  options.piece = 4096;
  std::vector<uint64_t> progress;
  options.progress = [&](uint64_t at) { progress.push_back(at); };
  ASSERT_TRUE(FeedFile(fd.get(), bytes.size(), sink, cancel, options).ok());
  EXPECT_EQ(sink.starts, 1);
  EXPECT_EQ(sink.total, bytes.size());
  EXPECT_EQ(sink.got, bytes);
  EXPECT_EQ(sink.sizes, (std::vector<size_t>{4096, 4096, 1811}));
  EXPECT_EQ(progress, (std::vector<uint64_t>{4096, 8192, 10003}));
}

TEST(FeedFile, AnEmptyFileIsStartedAndNothingElse) {
  UniqueFd fd = MemfdWith({});
  Recorder sink;
  CancelToken cancel;
  ASSERT_TRUE(FeedFile(fd.get(), 0, sink, cancel).ok());
  EXPECT_EQ(sink.starts, 1);
  EXPECT_EQ(sink.total, 0u);
  EXPECT_EQ(sink.writes, 0);
}

TEST(FeedFile, AFileShorterThanSaidIsAnIoErrorNamingTheSource) {
  const auto bytes = RandomBytes(6000, 2);
  UniqueFd fd = MemfdWith(bytes);
  Recorder sink;
  CancelToken cancel;
  FeedOptions options;
  options.piece = 4096;
  options.source = "the image from RAM";
  Status s = FeedFile(fd.get(), 9000, sink, cancel, options);
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_EQ(s.detail(),
            "reading the image from RAM: reading at offset 6000: unexpected end of file");
  EXPECT_EQ(sink.got, std::vector<uint8_t>(bytes.begin(), bytes.begin() + 4096));
}

TEST(FeedFile, TheSinksErrorStopsTheFeedAndIsReturnedAsItIs) {
  const auto bytes = RandomBytes(5 * 4096, 3);
  UniqueFd fd = MemfdWith(bytes);
  Recorder sink;
  sink.fail_at = 2;
  CancelToken cancel;
  FeedOptions options;
  options.piece = 4096;
  Status s = FeedFile(fd.get(), bytes.size(), sink, cancel, options);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_EQ(s.message(), "Can't write raw on disk.");
  EXPECT_EQ(s.detail(), "bad byte");
  EXPECT_EQ(sink.writes, 2);
  EXPECT_EQ(sink.got.size(), 4096u);
}

TEST(FeedFile, ACancelledFeedWritesNothing) {
  UniqueFd fd = MemfdWith(RandomBytes(4096, 4));
  Recorder sink;
  CancelToken cancel;
  cancel.Cancel();
  Status s = FeedFile(fd.get(), 4096, sink, cancel);
  EXPECT_EQ(s.code(), Code::kCancelled);
  EXPECT_EQ(s.message(), kCancelledMessage);
  EXPECT_EQ(sink.writes, 0);
}

// A file fed with drop_cache leaves none of its pages in the page cache (on a file system that
// keeps a page cache: not tmpfs, whose pages are the file).
TEST(FeedFile, DropCacheLeavesTheFileOutOfThePageCache) {
  std::string path = ::testing::TempDir() + "/feed-test-XXXXXX";
  int raw = ::mkstemp(path.data());
  ASSERT_GE(raw, 0);
  UniqueFd fd(raw);
  ::unlink(path.c_str());
  struct statfs fs {};
  ASSERT_EQ(::fstatfs(fd.get(), &fs), 0);
  if (fs.f_type == TMPFS_MAGIC) GTEST_SKIP() << ::testing::TempDir() << " is a tmpfs";
  const auto bytes = RandomBytes(8 << 20, 5);
  ASSERT_TRUE(PwriteAll(fd.get(), bytes, 0).ok());
  ASSERT_EQ(::fdatasync(fd.get()), 0);
  auto resident = [&] {
    void* map = ::mmap(nullptr, bytes.size(), PROT_READ, MAP_SHARED, fd.get(), 0);
    EXPECT_NE(map, MAP_FAILED);
    std::vector<unsigned char> pages(bytes.size() / 4096);
    EXPECT_EQ(::mincore(map, bytes.size(), pages.data()), 0);
    ::munmap(map, bytes.size());
    size_t n = 0;
    for (unsigned char p : pages) n += p & 1;
    return n;
  };
  ASSERT_GT(resident(), 0u);
  for (bool drop : {false, true}) {
    Recorder sink;
    CancelToken cancel;
    FeedOptions options;
    options.drop_cache = drop;
    ASSERT_TRUE(FeedFile(fd.get(), bytes.size(), sink, cancel, options).ok());
    EXPECT_EQ(sink.got, bytes);
    if (drop) {
      EXPECT_EQ(resident(), 0u);
    } else {
      EXPECT_EQ(resident(), bytes.size() / 4096);
    }
  }
}

}  // namespace
}  // namespace byoi
