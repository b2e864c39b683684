// Streaming message digests for the fetch step (docs/pipeline.md step 2): the image is hashed while
// its bytes arrive, never in a second pass over the buffer.
//
// Hasher wraps one OpenSSL EVP digest context. StreamHasher feeds one or more Hashers with the
// spans a download receives, either inline or on a thread of its own so that hashing a span
// overlaps storing it: SHA-256 runs at ~1.5-2 GB/s per core with SHA-NI, which is one core's work
// on a 10 Gb/s link.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/status.hpp"

struct evp_md_ctx_st;
struct evp_md_st;

namespace byoi {

// The checksum types a manifest may name (docs/manifest.md).
enum class HashAlgo { kMd5, kSha1, kSha256, kSha512 };
std::string_view HashAlgoName(HashAlgo algo);  // "md5" … "sha512"
size_t HashHexLength(HashAlgo algo);           // 32, 40, 64, 128

struct Digest {
  HashAlgo algo = HashAlgo::kSha256;
  std::string hex;  // lower case
};

class Hasher {
 public:
  // kInternal when OpenSSL cannot provide the algorithm (a FIPS-only build without md5, say).
  static Result<Hasher> Create(HashAlgo algo);

  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  ~Hasher();

  void Update(std::span<const uint8_t> bytes);
  // Forgets every byte fed so far.
  void Reset();
  // The digest of every byte fed since creation or the last Reset/Final, in lower-case hex; the
  // context is reset afterwards. kInternal if OpenSSL reported a failure on the way.
  Result<std::string> FinalHex();
  HashAlgo algo() const { return algo_; }

 private:
  Hasher() = default;
  HashAlgo algo_ = HashAlgo::kSha256;
  const evp_md_st* md_ = nullptr;
  evp_md_ctx_st* ctx_ = nullptr;
  bool failed_ = false;
};

// Hashes a stream of byte spans, in order, with one or more Hashers: inline, or on a thread of
// its own that hashes a span while the caller does something else with it (the download stores
// it in the image buffer). The thread reads the span where the caller has it, hot in cache,
// instead of reading the image buffer again later.
class StreamHasher {
 public:
  // `algos` may be empty (nothing is hashed). `threaded`: hash on a thread of its own.
  static Result<std::unique_ptr<StreamHasher>> Create(std::span<const HashAlgo> algos,
                                                      bool threaded);
  StreamHasher(const StreamHasher&) = delete;
  StreamHasher& operator=(const StreamHasher&) = delete;
  // Waits for every span handed over, then stops the thread.
  ~StreamHasher();

  // Hashes `bytes` after every byte given before and returns a ticket for WaitFor. Threaded,
  // large spans are queued for the thread and Update returns at once: the bytes must stay valid
  // and unchanged until WaitFor(ticket) or Wait returns. Small spans are hashed here, once the
  // queue is empty (a hand-over costs more than hashing them).
  uint64_t Update(std::span<const uint8_t> bytes);
  // As Update, for `length` bytes of the file `fd` from `offset`, read with pread into a buffer of
  // the hasher's own: the image buffer's bytes that were stored before they were hashed. Read
  // through its mapping instead, a memfd hashed at half the speed (every 4 KiB page faulted in
  // and walked; the kernel's copy goes through its own large pages). The range must stay
  // unchanged until the ticket is done; a failed read makes Finish fail.
  uint64_t UpdateFromFile(int fd, uint64_t offset, uint64_t length);
  // Returns once the span of `ticket`, and every one before it, is hashed. 0 returns at once.
  void WaitFor(uint64_t ticket);
  // True once the span of `ticket`, and every one before it, is hashed; never blocks.
  bool Done(uint64_t ticket);
  // Returns once every byte given to Update is hashed.
  void Wait();
  // Forgets every byte given so far (a download that restarts from byte 0).
  void Reset();
  // Waits, then returns one digest per algorithm, in the order given to Create, and starts over;
  // kIo instead when a range of UpdateFromFile could not be read.
  Result<std::vector<Digest>> Finish();

 private:
  StreamHasher() = default;
  // A span in memory, or (fd >= 0) a range of a file.
  struct Work {
    std::span<const uint8_t> bytes;
    int fd = -1;
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  uint64_t Queue(const Work& work);
  void Loop();
  void HashWork(const Work& work);

  std::vector<Hasher> hashers_;
  bool threaded_ = false;

  std::mutex mu_;
  std::condition_variable work_cv_;         // the thread waits for a span or stop
  std::condition_variable done_cv_;         // WaitFor waits for spans to be hashed
  std::deque<Work> queue_;                  // guarded by mu_: handed over, not yet hashed
  uint64_t given_ = 0;                      // guarded by mu_: tickets handed out
  uint64_t hashed_ = 0;                     // guarded by mu_: tickets done
  bool idle_ = false;                       // guarded by mu_: the thread sleeps on work_cv_
  bool stop_ = false;                       // guarded by mu_
  std::unique_ptr<uint8_t[]> file_buffer_;  // the hashing side's: for file ranges
  Status read_error_;                       // the hashing side's: the first failed read
  std::thread thread_;
};

}  // namespace byoi
