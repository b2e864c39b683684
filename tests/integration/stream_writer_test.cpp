// The stream-mode writer on a file and on loop devices of 512- and 4096-byte sectors, pre-filled
// with random bytes: pieces and zero ranges in any order and of any size land exactly, nothing past
// the virtual size is touched, the first MiB reaches the disk only at Commit, a byte never given is
// caught, and the read-back finds a byte changed on the device after the write.
#include "agent/disk/stream_writer.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "agent/base/aligned_buffer.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "tests/integration/test_util.hpp"

namespace byoi {
namespace {

namespace fs = std::filesystem;
using testing::LoopDevice;
using testing::RandomBytes;
using testing::ReadRange;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDiskBytes = 64 * kMiB;
// Not a multiple of 4096: the last block is shared with bytes that are not the image's.
constexpr uint64_t kVirtualSize = 40 * kMiB + 3584;

struct Piece {
  uint64_t offset;
  uint64_t length;
  bool zero;
};

// [0, size) cut into pieces of 1 byte to 300 KB (multiples of `grain`), about a third of them
// zero ranges; `reference` gets zeros there. Then shuffled within windows of 64 pieces, so the
// writer sees them out of order as a qcow2 with scattered clusters gives them.
std::vector<Piece> Cut(uint64_t size, uint64_t grain, std::vector<uint8_t>& reference,
                       uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Piece> pieces;
  for (uint64_t pos = 0; pos < size;) {
    uint64_t len = std::min<uint64_t>(size - pos, (1 + rng() % (300000 / grain)) * grain);
    bool zero = rng() % 3 == 0;
    if (zero) std::fill_n(reference.begin() + pos, len, 0);
    pieces.push_back({pos, len, zero});
    pos += len;
  }
  for (size_t i = 0; i < pieces.size(); i += 64) {
    auto end = pieces.begin() + std::min(pieces.size(), i + 64);
    std::shuffle(pieces.begin() + i, end, rng);
  }
  return pieces;
}

class StreamWriterTest : public ::testing::TestWithParam<uint32_t> {  // 0: file; else sector size
 protected:
  void SetUp() override {
    if (GetParam() != 0 && ::geteuid() != 0) GTEST_SKIP() << "needs root for loop devices";
    dir_ = fs::temp_directory_path() / ("byoi-stream-writer-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    backing_ = (dir_ / "disk").string();
    old_ = RandomBytes(kDiskBytes, 1);
    auto fd = OpenFile(backing_, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(PwriteAll(fd->get(), old_, 0).ok());
    if (GetParam() != 0) {
      loop_ = std::make_unique<LoopDevice>(backing_, GetParam());
      path_ = loop_->path();
    } else {
      path_ = backing_;
    }
    auto target = Target::Open(path_, Target::Options{});
    ASSERT_TRUE(target.ok()) << target.status().ToString();
    target_ = std::move(*target);
  }
  void TearDown() override {
    loop_.reset();
    fs::remove_all(dir_);
  }

  std::unique_ptr<StreamWriter> Make(uint64_t vsize, bool verify = false, Loans* loans = nullptr) {
    StreamWriteOptions options;
    options.verify_written = verify;
    options.loans = loans;
    auto w = StreamWriter::Create(target_, vsize, options, cancel_);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    return w.ok() ? std::move(*w) : nullptr;
  }

  // `reference` in a buffer aligned for O_DIRECT, for the writer to borrow from.
  static AlignedBuffer LentCopy(const std::vector<uint8_t>& reference) {
    AlignedBuffer lent = AlignedBuffer::Uninitialized(reference.size(), 4096);
    std::copy(reference.begin(), reference.end(), lent.data());
    return lent;
  }
  // Flushes and commits `w`: every loan came back, the disk holds `reference`, and it reads back.
  void CommitAndCheck(StreamWriter& w, Loans& loans, const std::vector<uint8_t>& reference) {
    ASSERT_TRUE(w.Flush(reference.size()).ok());
    EXPECT_TRUE(loans.Returned(loans.Mark()));
    loans.Close();
    ASSERT_TRUE(w.Commit().ok());
    EXPECT_TRUE(ReadRange(path_, 0, reference.size()) == reference);
    Status read_back = w.VerifyWritten(nullptr);
    EXPECT_TRUE(read_back.ok()) << read_back.ToString();
  }

  // Gives every piece to `w`; the reference provides the data.
  static void Give(StreamWriter& w, const std::vector<Piece>& pieces,
                   const std::vector<uint8_t>& reference) {
    for (const Piece& p : pieces) {
      Status s = p.zero ? w.Zero(p.offset, p.length)
                        : w.Write(p.offset, std::span(reference).subspan(p.offset, p.length));
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
  }

  fs::path dir_;
  std::string backing_, path_;
  std::vector<uint8_t> old_;
  std::unique_ptr<LoopDevice> loop_;
  Target target_;
  CancelToken cancel_;
};

TEST_P(StreamWriterTest, PiecesInAnyOrderLandExactlyAndTheFirstMiBOnlyAtCommit) {
  for (uint64_t grain : {uint64_t{512}, uint64_t{1}}) {
    SCOPED_TRACE("grain " + std::to_string(grain));
    std::vector<uint8_t> reference = RandomBytes(kVirtualSize, 2);
    std::vector<Piece> pieces = Cut(kVirtualSize, grain, reference, 3);
    const std::vector<uint8_t> before = ReadRange(path_, 0, kMiB);
    auto w = Make(kVirtualSize);
    ASSERT_NE(w, nullptr);
    Give(*w, pieces, reference);
    EXPECT_EQ(w->bytes_accepted(), kVirtualSize);
    Status s = w->Flush(kVirtualSize);
    ASSERT_TRUE(s.ok()) << s.ToString();

    // Before Commit: everything but the first MiB is there; the first MiB is as it was.
    std::vector<uint8_t> disk = ReadRange(path_, 0, kDiskBytes);
    EXPECT_TRUE(std::equal(disk.begin(), disk.begin() + kMiB, before.begin()));
    EXPECT_TRUE(
        std::equal(disk.begin() + kMiB, disk.begin() + kVirtualSize, reference.begin() + kMiB));
    EXPECT_TRUE(std::equal(disk.begin() + kVirtualSize, disk.end(), old_.begin() + kVirtualSize))
        << "bytes past the virtual size were touched";

    ASSERT_TRUE(w->Commit().ok());
    disk = ReadRange(path_, 0, kDiskBytes);
    EXPECT_TRUE(std::equal(disk.begin(), disk.begin() + kVirtualSize, reference.begin()));
    EXPECT_TRUE(std::equal(disk.begin() + kVirtualSize, disk.end(), old_.begin() + kVirtualSize));
    StreamWriteStats stats = w->stats();
    EXPECT_GT(stats.bytes_zeroed, 0u);
    EXPECT_GT(stats.bytes_written, 0u);
    EXPECT_LE(stats.bytes_written, kVirtualSize);
  }
}

// Pieces of a lent region (a download's window) in whole aligned blocks are written from there:
// one loan each, all back once flushed (or once the writer is gone), and the disk as with copies.
TEST_P(StreamWriterTest, LentPiecesAreWrittenWhereTheyAreAndEveryLoanComesBack) {
  std::vector<uint8_t> reference = RandomBytes(kVirtualSize, 20);
  std::vector<Piece> pieces = Cut(kVirtualSize, 512, reference, 21);
  AlignedBuffer lent = LentCopy(reference);
  const uint64_t align = target_.alignment();
  uint64_t expected = 0;  // pieces with whole aligned blocks past the held-back first MiB
  for (const Piece& p : pieces) {
    const uint64_t begin = std::max(p.offset, kMiB), end = p.offset + p.length;
    if (!p.zero && target_.direct() && begin < end && begin % align == 0 && end - begin >= align) {
      ++expected;
    }
  }
  if (target_.direct()) {
    EXPECT_GT(expected, 10u);
  }
  for (bool flush : {true, false}) {
    SCOPED_TRACE(flush ? "flushed" : "dropped");
    Loans loans;
    loans.Open({lent.data(), static_cast<size_t>(kVirtualSize)});
    auto w = Make(kVirtualSize, /*verify=*/true, &loans);
    ASSERT_NE(w, nullptr);
    for (const Piece& p : pieces) {
      Status s = p.zero ? w->Zero(p.offset, p.length)
                        : w->Write(p.offset, {lent.data() + p.offset, p.length});
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    EXPECT_EQ(loans.Mark(), expected);
    if (!flush) {
      w.reset();  // a failed job: what was queued is dropped, and its loans come back
      EXPECT_TRUE(loans.Returned(loans.Mark()));
      loans.Close();
      continue;
    }
    ASSERT_TRUE(w->Flush(kVirtualSize).ok());
    EXPECT_TRUE(loans.Returned(loans.Mark()));
    loans.Close();
    ASSERT_TRUE(w->Commit().ok());
    std::vector<uint8_t> disk = ReadRange(path_, 0, kDiskBytes);
    EXPECT_TRUE(std::equal(disk.begin(), disk.begin() + kVirtualSize, reference.begin()));
    EXPECT_TRUE(std::equal(disk.begin() + kVirtualSize, disk.end(), old_.begin() + kVirtualSize));
    Status read_back = w->VerifyWritten(nullptr);
    EXPECT_TRUE(read_back.ok()) << read_back.ToString();
  }
}

// A run of zeros is one zeroing request however it arrives: lent blocks of zeros (a raw image's
// free space, which take no loan), zero ranges that continue them, and zeros copied into the
// writer's chunks (bytes not lent: a decoded image). A run that does not touch the previous one
// is a request of its own.
TEST_P(StreamWriterTest, ARunOfZerosIsOneZeroingRequestHoweverItArrives) {
  if (!target_.direct()) GTEST_SKIP() << "nothing is lent without O_DIRECT";
  const uint64_t vsize = 32 * kMiB;
  std::vector<uint8_t> reference = RandomBytes(vsize, 30);
  std::fill(reference.begin() + 4 * kMiB, reference.begin() + 20 * kMiB, 0);
  std::fill(reference.begin() + 24 * kMiB, reference.begin() + 28 * kMiB, 0);
  AlignedBuffer lent = LentCopy(reference);
  Loans loans;
  loans.Open({lent.data(), static_cast<size_t>(vsize)});
  auto w = Make(vsize, /*verify=*/true, &loans);
  ASSERT_NE(w, nullptr);
  for (uint64_t pos = 0; pos < vsize; pos += kMiB) {
    // [12, 20) MiB as two zero ranges of 4 MiB, [26, 28) MiB copied, the rest lent MiB by MiB.
    const bool given_as_zeros = pos >= 12 * kMiB && pos < 20 * kMiB;
    const bool copied = pos >= 26 * kMiB && pos < 28 * kMiB;
    if (given_as_zeros && pos % (4 * kMiB) != 0) continue;
    Status s = given_as_zeros ? w->Zero(pos, 4 * kMiB)
               : copied       ? w->Write(pos, std::span(reference).subspan(pos, kMiB))
                              : w->Write(pos, {lent.data() + pos, kMiB});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(loans.Mark(), 3u + 4u + 4u);  // the data blocks past the held-back first MiB
  CommitAndCheck(*w, loans, reference);
  const StreamWriteStats stats = w->stats();
  EXPECT_EQ(stats.zero_requests, 2u);
  EXPECT_EQ(stats.bytes_zeroed, 20 * kMiB);
  EXPECT_EQ(stats.bytes_written, vsize - 20 * kMiB);
}

// A file system's free space among an image's bytes, lent or copied: holes of 256 KiB or more
// (whole 64 KiB blocks) are zeroed, shorter ones written with their data.
TEST_P(StreamWriterTest, HolesAmongTheBytesAreZeroedNotWritten) {
  const uint64_t vsize = 16 * kMiB;
  std::vector<uint8_t> reference = RandomBytes(vsize, 40);
  const auto hole = [&](uint64_t at, uint64_t n) {
    std::fill_n(reference.begin() + static_cast<ptrdiff_t>(at), n, 0);
  };
  hole(3 * kMiB + 65536, 512 * 1024);       // lent
  hole(3 * kMiB + 768 * 1024, 128 * 1024);  // lent, short: written
  hole(9 * kMiB, kMiB);                     // copied
  AlignedBuffer lent = LentCopy(reference);
  Loans loans;
  loans.Open({lent.data(), static_cast<size_t>(vsize)});
  auto w = Make(vsize, /*verify=*/true, &loans);
  ASSERT_NE(w, nullptr);
  for (uint64_t pos = 0; pos < vsize; pos += kMiB) {
    const bool copied = pos >= 8 * kMiB && pos < 12 * kMiB;
    Status s = copied ? w->Write(pos, std::span(reference).subspan(pos, kMiB))
                      : w->Write(pos, {lent.data() + pos, kMiB});
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  // Lent MiBs past the held-back first: 11, the one with the long hole in two loans.
  if (target_.direct()) {
    EXPECT_EQ(loans.Mark(), 12u);
  }
  CommitAndCheck(*w, loans, reference);
  const StreamWriteStats stats = w->stats();
  EXPECT_EQ(stats.zero_requests, 2u);
  EXPECT_EQ(stats.bytes_zeroed, 512 * 1024 + kMiB);
  EXPECT_EQ(stats.bytes_written, vsize - stats.bytes_zeroed);
}

TEST_P(StreamWriterTest, AnImageSmallerThanTheHeldBackMiB) {
  const uint64_t vsize = 300 * 1024 + 512;
  std::vector<uint8_t> reference = RandomBytes(vsize, 4);
  std::vector<Piece> pieces = Cut(vsize, 512, reference, 5);
  auto w = Make(0);  // size not known up front (a compressed raw image)
  ASSERT_NE(w, nullptr);
  Give(*w, pieces, reference);
  ASSERT_TRUE(w->Flush(vsize).ok());
  EXPECT_TRUE(ReadRange(path_, 0, vsize) ==
              std::vector<uint8_t>(old_.begin(), old_.begin() + vsize));
  ASSERT_TRUE(w->Commit().ok());
  std::vector<uint8_t> disk = ReadRange(path_, 0, kMiB);
  EXPECT_TRUE(std::equal(disk.begin(), disk.begin() + vsize, reference.begin()));
  EXPECT_TRUE(std::equal(disk.begin() + vsize, disk.end(), old_.begin() + vsize));
}

TEST_P(StreamWriterTest, AByteNeverGivenFailsTheFlush) {
  std::vector<uint8_t> reference = RandomBytes(kVirtualSize, 6);
  std::vector<Piece> pieces = Cut(kVirtualSize, 512, reference, 7);
  // Drop a piece that lies past the first MiB.
  auto gap = std::find_if(pieces.begin(), pieces.end(),
                          [](const Piece& p) { return p.offset > 2 * kMiB; });
  ASSERT_NE(gap, pieces.end());
  pieces.erase(gap);
  auto w = Make(kVirtualSize);
  ASSERT_NE(w, nullptr);
  Give(*w, pieces, reference);
  Status s = w->Flush(kVirtualSize);
  EXPECT_EQ(s.code(), Code::kInternal) << s.ToString();
}

TEST_P(StreamWriterTest, AnImageLargerThanTheDiskIsRefusedBeforeOrAsItComes) {
  CancelToken cancel;
  auto known = StreamWriter::Create(target_, kDiskBytes + 512, {}, cancel);
  ASSERT_FALSE(known.ok());
  EXPECT_EQ(known.status().code(), Code::kTooBig);
  EXPECT_EQ(known.status().message(),
            msg::ImageLargerThanDisk(kDiskBytes + 512, path_, kDiskBytes));

  auto w = Make(0);
  ASSERT_NE(w, nullptr);
  Status s = w->Zero(0, kDiskBytes);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<uint8_t> more(4096, 7);
  s = w->Write(kDiskBytes, more);
  EXPECT_EQ(s.code(), Code::kTooBig);
  EXPECT_EQ(s.message(), msg::ImageLargerThanDisk(kDiskBytes + 4096, path_, kDiskBytes));
}

TEST_P(StreamWriterTest, ReadBackFindsAByteChangedOnTheDeviceAfterTheWrite) {
  std::vector<uint8_t> reference = RandomBytes(kVirtualSize, 8);
  std::vector<Piece> pieces = Cut(kVirtualSize, 512, reference, 9);
  auto w = Make(kVirtualSize, /*verify=*/true);
  ASSERT_NE(w, nullptr);
  Give(*w, pieces, reference);
  ASSERT_TRUE(w->Flush(kVirtualSize).ok());
  ASSERT_TRUE(w->Commit().ok());
  uint64_t last = 0;
  ASSERT_TRUE(w->VerifyWritten([&](uint64_t done, uint64_t) { last = done; }).ok());
  EXPECT_EQ(last, kVirtualSize);

  // One bit flipped in a data piece, then one in a zero range, behind the writer's back.
  for (bool zero : {false, true}) {
    auto p = std::find_if(pieces.begin(), pieces.end(), [&](const Piece& x) {
      return x.zero == zero && x.offset > 3 * kMiB && x.length > 4096;
    });
    ASSERT_NE(p, pieces.end());
    const uint64_t at = p->offset + p->length / 2;
    auto fd = OpenFile(path_, O_RDWR);
    ASSERT_TRUE(fd.ok());
    uint8_t b = 0;
    ASSERT_TRUE(PreadAll(fd->get(), {&b, 1}, at).ok());
    b ^= 0x10;
    ASSERT_TRUE(PwriteAll(fd->get(), {&b, 1}, at).ok());
    ASSERT_EQ(::fsync(fd->get()), 0);
    Status s = w->VerifyWritten(nullptr);
    EXPECT_EQ(s.code(), Code::kIo);
    EXPECT_EQ(s.message(), "Can't write raw on disk.");
    EXPECT_NE(s.detail().find(zero ? "should read as zeros" : "differs"), std::string::npos)
        << s.detail();
    b ^= 0x10;  // restore for the next round
    ASSERT_TRUE(PwriteAll(fd->get(), {&b, 1}, at).ok());
    ASSERT_EQ(::fsync(fd->get()), 0);
  }
}

TEST_P(StreamWriterTest, ACancelledJobStopsTheWriter) {
  auto w = Make(kVirtualSize);
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->Zero(0, 8 * kMiB).ok());
  cancel_.Cancel();
  Status s = w->Zero(8 * kMiB, kMiB);
  EXPECT_EQ(s.code(), Code::kCancelled);
  EXPECT_EQ(s.message(), msg::kCancelled);
}

INSTANTIATE_TEST_SUITE_P(Targets, StreamWriterTest, ::testing::Values(0u, 512u, 4096u),
                         [](const auto& info) {
                           return info.param == 0 ? std::string("File")
                                                  : "Loop" + std::to_string(info.param);
                         });

}  // namespace
}  // namespace byoi
