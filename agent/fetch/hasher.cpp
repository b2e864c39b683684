#include "agent/fetch/hasher.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <string>
#include <utility>

#include "agent/base/fd.hpp"

namespace byoi {

std::string_view HashAlgoName(HashAlgo algo) {
  switch (algo) {
    case HashAlgo::kMd5:
      return "md5";
    case HashAlgo::kSha1:
      return "sha1";
    case HashAlgo::kSha256:
      return "sha256";
    case HashAlgo::kSha512:
      return "sha512";
  }
  return "?";
}

size_t HashHexLength(HashAlgo algo) {
  switch (algo) {
    case HashAlgo::kMd5:
      return 32;
    case HashAlgo::kSha1:
      return 40;
    case HashAlgo::kSha256:
      return 64;
    case HashAlgo::kSha512:
      return 128;
  }
  return 0;
}

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

// Spans smaller than this are hashed by the caller: waking the thread and waiting for it would
// cost more. A download hands over 1 MiB blocks; only its last one may be smaller.
constexpr size_t kHandOverBytes = 64 << 10;

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

void StreamHasher::HashWork(const Work& work) {
  if (work.fd < 0) {
    for (Hasher& h : hashers_) h.Update(work.bytes);
    return;
  }
  if (!read_error_.ok()) return;  // the first failed read is the one reported
  constexpr size_t kRead = 1 << 20;
  if (!file_buffer_) file_buffer_.reset(new uint8_t[kRead]);  // pread fills it: no zeroing
  for (uint64_t offset = work.offset, end = work.offset + work.length; offset < end;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kRead, end - offset));
    const std::span<uint8_t> block(file_buffer_.get(), n);
    if (Status read = PreadAll(work.fd, block, offset); !read.ok()) {
      read_error_ = std::move(read).Context("reading the image to hash it");
      return;
    }
    for (Hasher& h : hashers_) h.Update(block);
    offset += n;
  }
}

uint64_t StreamHasher::Update(std::span<const uint8_t> bytes) {
  if (hashers_.empty() || bytes.empty()) return 0;
  return Queue({.bytes = bytes});
}

uint64_t StreamHasher::UpdateFromFile(int fd, uint64_t offset, uint64_t length) {
  if (hashers_.empty() || length == 0) return 0;
  return Queue({.bytes = {}, .fd = fd, .offset = offset, .length = length});
}

uint64_t StreamHasher::Queue(const Work& work) {
  const uint64_t size = work.fd < 0 ? work.bytes.size() : work.length;
  if (!threaded_ || size < kHandOverBytes) {
    Wait();
    HashWork(work);
    return 0;
  }
  bool wake = false;
  uint64_t ticket = 0;
  {
    std::lock_guard lock(mu_);
    queue_.push_back(work);
    ticket = ++given_;
    wake = idle_;
  }
  if (wake) work_cv_.notify_one();
  return ticket;
}

void StreamHasher::WaitFor(uint64_t ticket) {
  if (!threaded_ || ticket == 0) return;
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [this, ticket] { return hashed_ >= ticket; });
}

bool StreamHasher::Done(uint64_t ticket) {
  if (!threaded_ || ticket == 0) return true;
  std::lock_guard lock(mu_);
  return hashed_ >= ticket;
}

void StreamHasher::Wait() {
  if (!threaded_) return;
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [this] { return hashed_ == given_; });
}

void StreamHasher::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    // Spans handed over are hashed even when stopping: the destructor waits for them.
    while (!queue_.empty()) {
      const Work work = queue_.front();
      lock.unlock();
      HashWork(work);
      lock.lock();
      queue_.pop_front();
      ++hashed_;
      done_cv_.notify_all();
    }
    if (stop_) return;
    idle_ = true;
    work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    idle_ = false;
  }
}

void StreamHasher::Reset() {
  Wait();
  for (Hasher& h : hashers_) h.Reset();
  read_error_ = Status::Ok();
}

Result<std::vector<Digest>> StreamHasher::Finish() {
  Wait();
  if (!read_error_.ok()) {
    for (Hasher& h : hashers_) h.Reset();
    return std::exchange(read_error_, Status::Ok());
  }
  std::vector<Digest> out;
  for (Hasher& h : hashers_) {
    BYOI_ASSIGN_OR_RETURN(std::string hex, h.FinalHex());
    out.push_back({h.algo(), std::move(hex)});
  }
  return out;
}

}  // namespace byoi
