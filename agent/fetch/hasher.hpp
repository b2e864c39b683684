// Streaming message digests for the fetch step (design.md §1 step 2): the image is hashed while its
// bytes arrive, never in a second pass over the buffer.
//
// Hasher wraps one OpenSSL EVP digest context. StreamHasher feeds one or more Hashers from a buffer
// that grows at its end, either inline or on a thread of its own so that hashing overlaps the
// network receive: SHA-256 runs at ~1.5-2 GB/s per core with SHA-NI, which is one core's work on a
// 10 Gb/s link.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/status.hpp"
#include "agent/job/manifest.hpp"

struct evp_md_ctx_st;
struct evp_md_st;

namespace byoi {

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

// Hashes a buffer that grows at its end. The caller publishes how many bytes at `base` are final;
// StreamHasher hashes them in order, inline in Publish or on its own thread. The published bytes
// must stay valid and unchanged until Rewind() or Finish() returns (or the StreamHasher is gone).
class StreamHasher {
 public:
  // `algos` may be empty (nothing is hashed). `threaded`: hash on a thread of its own.
  static Result<std::unique_ptr<StreamHasher>> Create(std::span<const HashAlgo> algos,
                                                      bool threaded);
  StreamHasher(const StreamHasher&) = delete;
  StreamHasher& operator=(const StreamHasher&) = delete;
  // Stops the thread without finishing.
  ~StreamHasher();

  // Bytes [0, end) at `base` are final. REQUIRES: `base` is the same on every call since the last
  // Rewind, and `end` never decreases.
  void Publish(const uint8_t* base, uint64_t end);
  // Waits until no published byte is being read, then starts over at byte 0 (a download that
  // restarts from the beginning). The caller may then drop the buffer's bytes.
  void Rewind();
  // Waits until every published byte is hashed and returns one digest per algorithm, in the order
  // given to Create. The StreamHasher is finished afterwards (Rewind starts it again).
  Result<std::vector<Digest>> Finish();

 private:
  StreamHasher() = default;
  void Loop();
  // The thread has enough to do. REQUIRES: mu_ held.
  bool WorkReady() const;
  void HashRange(const uint8_t* data, uint64_t length);

  std::vector<Hasher> hashers_;
  bool threaded_ = false;

  std::mutex mu_;
  std::condition_variable work_cv_;  // the thread waits for bytes or stop
  std::condition_variable idle_cv_;  // callers wait for the thread to catch up or go idle
  const uint8_t* base_ = nullptr;    // guarded by mu_
  uint64_t published_ = 0;           // guarded by mu_
  uint64_t hashed_ = 0;              // guarded by mu_
  uint64_t generation_ = 0;          // guarded by mu_: bumped by Rewind
  bool busy_ = false;                // guarded by mu_: the thread is reading bytes outside the lock
  bool stop_ = false;                // guarded by mu_
  bool waiting_ = false;             // guarded by mu_: the thread sleeps on work_cv_
  bool draining_ = false;            // guarded by mu_: Finish waits for every published byte
  std::thread thread_;
};

}  // namespace byoi
