#include "agent/fetch/hasher.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <utility>

namespace byoi {

namespace {

const EVP_MD* MdFor(HashAlgo algo) {
  switch (algo) {
    case HashAlgo::kMd5:
      return EVP_md5();
    case HashAlgo::kSha1:
      return EVP_sha1();
    case HashAlgo::kSha256:
      return EVP_sha256();
    case HashAlgo::kSha512:
      return EVP_sha512();
  }
  return nullptr;
}

// The thread hashes at most this much between two looks at the lock, so Rewind waits little.
constexpr uint64_t kHashChunk = 4 << 20;
// The thread sleeps until this many bytes wait (or Finish asks for the rest): hashing is faster
// than a receive, and waking it for every few KiB libcurl hands over cost a tenth of the
// receiving thread's time in futex wake-ups.
constexpr uint64_t kWakeBytes = 2 << 20;

}  // namespace

Result<Hasher> Hasher::Create(HashAlgo algo) {
  Hasher h;
  h.algo_ = algo;
  h.md_ = MdFor(algo);
  h.ctx_ = EVP_MD_CTX_new();
  if (h.md_ == nullptr || h.ctx_ == nullptr || EVP_DigestInit_ex(h.ctx_, h.md_, nullptr) != 1) {
    return Status::Error(Code::kInternal,
                         "OpenSSL cannot compute " + std::string(HashAlgoName(algo)));
  }
  return h;
}

Hasher::Hasher(Hasher&& other) noexcept
    : algo_(other.algo_),
      md_(other.md_),
      ctx_(std::exchange(other.ctx_, nullptr)),
      failed_(other.failed_) {}

Hasher& Hasher::operator=(Hasher&& other) noexcept {
  if (this != &other) {
    EVP_MD_CTX_free(ctx_);
    algo_ = other.algo_;
    md_ = other.md_;
    ctx_ = std::exchange(other.ctx_, nullptr);
    failed_ = other.failed_;
  }
  return *this;
}

Hasher::~Hasher() { EVP_MD_CTX_free(ctx_); }

void Hasher::Update(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  if (EVP_DigestUpdate(ctx_, bytes.data(), bytes.size()) != 1) failed_ = true;
}

void Hasher::Reset() { failed_ = EVP_DigestInit_ex(ctx_, md_, nullptr) != 1; }

Result<std::string> Hasher::FinalHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  bool ok = !failed_ && EVP_DigestFinal_ex(ctx_, digest, &length) == 1;
  Reset();
  if (!ok) {
    return Status::Error(Code::kInternal,
                         "OpenSSL failed computing " + std::string(HashAlgoName(algo_)));
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

Result<std::unique_ptr<StreamHasher>> StreamHasher::Create(std::span<const HashAlgo> algos,
                                                           bool threaded) {
  std::unique_ptr<StreamHasher> s(new StreamHasher());
  for (HashAlgo algo : algos) {
    BYOI_ASSIGN_OR_RETURN(Hasher h, Hasher::Create(algo));
    s->hashers_.push_back(std::move(h));
  }
  s->threaded_ = threaded && !s->hashers_.empty();
  if (s->threaded_) s->thread_ = std::thread([p = s.get()] { p->Loop(); });
  return s;
}

StreamHasher::~StreamHasher() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_one();
    thread_.join();
  }
}

void StreamHasher::HashRange(const uint8_t* data, uint64_t length) {
  for (Hasher& h : hashers_) h.Update({data, static_cast<size_t>(length)});
}

void StreamHasher::Publish(const uint8_t* base, uint64_t end) {
  if (hashers_.empty()) return;
  if (!threaded_) {
    if (end > hashed_) HashRange(base + hashed_, end - hashed_);
    base_ = base;
    hashed_ = published_ = end;
    return;
  }
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    base_ = base;
    published_ = end;
    wake = waiting_ && WorkReady();
  }
  if (wake) work_cv_.notify_one();
}

bool StreamHasher::WorkReady() const {
  // published_ drops below hashed_ for a moment during a Rewind.
  return published_ > hashed_ && (draining_ || published_ - hashed_ >= kWakeBytes);
}

void StreamHasher::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    while (!stop_ && !WorkReady()) {
      waiting_ = true;
      work_cv_.wait(lock);
      waiting_ = false;
    }
    if (stop_) return;
    const uint8_t* data = base_ + hashed_;
    uint64_t length = std::min(published_ - hashed_, kHashChunk);
    uint64_t generation = generation_;
    busy_ = true;
    lock.unlock();
    HashRange(data, length);
    lock.lock();
    busy_ = false;
    // A Rewind while we were reading throws this chunk away (it waited for busy_ to clear, and
    // reset the hashers only after).
    if (generation == generation_) hashed_ += length;
    idle_cv_.notify_all();
  }
}

void StreamHasher::Rewind() {
  std::unique_lock lock(mu_);
  ++generation_;
  published_ = 0;
  idle_cv_.wait(lock, [this] { return !busy_; });
  for (Hasher& h : hashers_) h.Reset();
  hashed_ = 0;
  base_ = nullptr;
}

Result<std::vector<Digest>> StreamHasher::Finish() {
  {
    std::unique_lock lock(mu_);
    draining_ = true;
    work_cv_.notify_one();
    idle_cv_.wait(lock, [this] { return !busy_ && hashed_ >= published_; });
  }
  std::vector<Digest> out;
  for (Hasher& h : hashers_) {
    BYOI_ASSIGN_OR_RETURN(std::string hex, h.FinalHex());
    out.push_back({h.algo(), std::move(hex)});
  }
  std::lock_guard lock(mu_);
  hashed_ = published_ = 0;
  base_ = nullptr;
  draining_ = false;
  return out;
}

}  // namespace byoi
