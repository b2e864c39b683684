#include "agent/fetch/fetch.hpp"

#include <curl/curl.h>
#include <fmt/format.h>
#include <strings.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/fetch/http_headers.hpp"

namespace byoi {

std::string FetchResult::DigestOf(HashAlgo algo) const {
  for (const Digest& d : digests) {
    if (d.algo == algo) return d.hex;
  }
  return {};
}

namespace {

using Clock = std::chrono::steady_clock;

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

bool IsHttps(const std::string& url) {
  return url.size() >= 8 && strncasecmp(url.c_str(), "https://", 8) == 0;
}

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// libcurl errors after which another attempt cannot help: the URL, the scheme or the certificate
// is wrong, or a redirect loop. Everything else (connect, receive, timeouts, TLS handshake
// resets, HTTP/2 stream errors) is treated as transient.
bool IsFinalCurlError(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_LOGIN_DENIED:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_BAD_CONTENT_ENCODING:
      return true;
    default:
      return false;
  }
}

// Why one of our callbacks stopped a transfer.
enum class Abort {
  kNone,
  kTooBig,      // final: over the memory budget
  kCancelled,   // final: the token was set
  kDeadline,    // final: the overall deadline passed
  kStalled,     // retry: no byte for stall_timeout
  kBadRange,    // retry from byte 0: a 206 that does not start where we asked
  kUnexpected,  // final: a status we cannot use (204, 3xx without Location, 206 unasked)
};

struct Outcome {
  enum Kind { kComplete, kRetry, kFinal } kind = kComplete;
  Status error;  // for kRetry and kFinal
};

// Where the body goes. libcurl hands it over 16 KiB at a time; the sink gathers that into 1 MiB
// blocks, then stores a block in the image buffer while the hasher's thread hashes the same block,
// both reading it hot in cache. A ring of blocks, so that neither thread waits for the other
// block by block (a wake-up on this VM costs more than hashing a few hundred KiB).
class BodySink {
 public:
  BodySink(ImageBuffer& image, StreamHasher& hasher)
      : image_(image),
        hasher_(hasher),
        blocks_(kBlocks, std::vector<uint8_t>(kBlock)),
        tickets_(kBlocks, 0) {}
  BodySink(const BodySink&) = delete;
  BodySink& operator=(const BodySink&) = delete;
  ~BodySink() { hasher_.Wait(); }  // the hasher may still be reading a block

  // Bytes received: stored in the image buffer, or waiting in a block.
  uint64_t size() const { return image_.size() + fill_; }
  uint64_t room() const { return image_.capacity() - size(); }

  // Takes `bytes` after the others. REQUIRES: bytes.size() <= room().
  Status Add(std::span<const uint8_t> bytes) {
    while (!bytes.empty()) {
      size_t n = std::min(bytes.size(), kBlock - fill_);
      std::memcpy(blocks_[current_].data() + fill_, bytes.data(), n);
      fill_ += n;
      bytes = bytes.subspan(n);
      if (fill_ == kBlock) BYOI_RETURN_IF_ERROR(Store());
    }
    return Status::Ok();
  }
  // Stores and hashes everything received: afterwards size() == the image buffer's size.
  Status Flush() {
    Status s = fill_ > 0 ? Store() : Status::Ok();
    hasher_.Wait();
    return s;
  }
  // Forgets every byte received (a download that starts over at byte 0).
  void Discard() {
    hasher_.Reset();
    fill_ = 0;
    image_.Truncate(0);
  }

 private:
  static constexpr size_t kBlock = 1 << 20;
  static constexpr size_t kBlocks = 8;

  Status Store() {
    std::span<const uint8_t> block(blocks_[current_].data(), fill_);
    tickets_[current_] = hasher_.Update(block);
    Status s = image_.Append(block);
    current_ = (current_ + 1) % kBlocks;
    fill_ = 0;
    hasher_.WaitFor(tickets_[current_]);  // the block filled next is hashed
    return s;
  }

  ImageBuffer& image_;
  StreamHasher& hasher_;
  std::vector<std::vector<uint8_t>> blocks_;
  std::vector<uint64_t> tickets_;  // the hasher's ticket of each block's bytes
  size_t current_ = 0;
  size_t fill_ = 0;  // bytes in blocks_[current_]
};

// The state of one download across its attempts, and the libcurl callbacks that fill the buffer.
class Transfer {
 public:
  Transfer(const FetchRequest& req, const FetchOptions& opts, const ProgressFn& progress,
           const CancelToken& cancel, ImageBuffer& image, StreamHasher& hasher)
      : req_(req),
        opts_(opts),
        progress_(progress),
        cancel_(cancel),
        image_(image),
        sink_(image, hasher) {}

  Status Setup(std::optional<Clock::time_point> deadline);
  // One request for the bytes from image_.size() on (or from 0 when ranges proved unusable).
  Outcome RunAttempt();

  uint64_t high_water() const { return high_water_; }
  int requests() const { return requests_; }
  int restarts() const { return restarts_; }

 private:
  static size_t HeaderThunk(char* data, size_t size, size_t n, void* self) {
    return static_cast<Transfer*>(self)->OnHeader({data, size * n});
  }
  static size_t WriteThunk(char* data, size_t size, size_t n, void* self) {
    return static_cast<Transfer*>(self)->OnBody(reinterpret_cast<const uint8_t*>(data), size * n);
  }
  static int XferInfoThunk(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    return static_cast<Transfer*>(self)->OnTick();
  }

  size_t OnHeader(std::string_view line);
  size_t OnBody(const uint8_t* data, size_t n);
  int OnTick();
  bool AcceptResponse();
  void StartOver();
  void ReportProgress(bool force);
  Status Failure(Code code, std::string detail) const;

  const FetchRequest& req_;
  const FetchOptions& opts_;
  const ProgressFn& progress_;
  const CancelToken& cancel_;
  ImageBuffer& image_;
  BodySink sink_;
  CurlPtr curl_;
  char errbuf_[CURL_ERROR_SIZE] = {};
  std::optional<Clock::time_point> deadline_;

  // The response being received; reset at every status line (redirects, 100 Continue).
  struct Response {
    int code = 0;
    std::string reason;
    std::optional<uint64_t> content_length;
    std::optional<ContentRange> content_range;
    std::string etag;
    std::string last_modified;
    bool headers_done = false;
  } resp_;

  // This attempt.
  uint64_t request_offset_ = 0;
  bool accepted_ = false;  // a 200/206 whose body we are storing
  Abort abort_ = Abort::kNone;
  std::string abort_detail_;
  Clock::time_point last_activity_;

  // The whole download.
  std::optional<uint64_t> expected_total_;  // from the last accepted response
  std::string validator_;         // the image's strong ETag or Last-Modified, sent as If-Range
  uint64_t high_water_ = 0;       // most bytes ever held
  bool ranges_unusable_ = false;  // a server whose 206 answers cannot be trusted
  int requests_ = 0;
  int restarts_ = 0;
  Clock::time_point last_report_;
};

Status Transfer::Setup(std::optional<Clock::time_point> deadline) {
  deadline_ = deadline;
  curl_.reset(curl_easy_init());
  if (!curl_) return Status::Error(Code::kInternal, "curl_easy_init failed");
  CURL* c = curl_.get();
  long buffer = static_cast<long>(std::clamp<size_t>(opts_.receive_buffer, 16 << 10, 10 << 20));
  struct {
    CURLoption opt;
    CURLcode rc;
  } results[] = {
      {CURLOPT_URL, curl_easy_setopt(c, CURLOPT_URL, req_.url.c_str())},
      // http and https only, also after a redirect: never file://, ftp:// or gopher://. An https
      // URL never redirects to http, where the manifest's headers would travel in clear.
      {CURLOPT_PROTOCOLS_STR, curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https")},
      {CURLOPT_REDIR_PROTOCOLS_STR, curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR,
                                                     IsHttps(req_.url) ? "https" : "http,https")},
      {CURLOPT_FOLLOWLOCATION, curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L)},
      {CURLOPT_MAXREDIRS, curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L)},
      // 4xx/5xx bodies never reach the buffer; the status decides what happens next.
      {CURLOPT_FAILONERROR, curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L)},
      {CURLOPT_NOSIGNAL, curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L)},
      {CURLOPT_BUFFERSIZE, curl_easy_setopt(c, CURLOPT_BUFFERSIZE, buffer)},
      {CURLOPT_TCP_KEEPALIVE, curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L)},
      {CURLOPT_USERAGENT, curl_easy_setopt(c, CURLOPT_USERAGENT, "byoi-agent/" BYOI_VERSION)},
      {CURLOPT_ERRORBUFFER, curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf_)},
      {CURLOPT_HEADERFUNCTION, curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &HeaderThunk)},
      {CURLOPT_HEADERDATA, curl_easy_setopt(c, CURLOPT_HEADERDATA, this)},
      {CURLOPT_WRITEFUNCTION, curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &WriteThunk)},
      {CURLOPT_WRITEDATA, curl_easy_setopt(c, CURLOPT_WRITEDATA, this)},
      {CURLOPT_XFERINFOFUNCTION, curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, &XferInfoThunk)},
      {CURLOPT_XFERINFODATA, curl_easy_setopt(c, CURLOPT_XFERINFODATA, this)},
      {CURLOPT_NOPROGRESS, curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L)},
      {CURLOPT_SSL_VERIFYPEER,
       curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, opts_.insecure ? 0L : 1L)},
      {CURLOPT_SSL_VERIFYHOST,
       curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, opts_.insecure ? 0L : 2L)},
  };
  for (const auto& r : results) {
    if (r.rc != CURLE_OK) {
      // Only a URL libcurl cannot parse gets here in practice.
      return Failure(Code::kInvalid,
                     fmt::format("setting up the transfer (option {}): {}", static_cast<int>(r.opt),
                                 curl_easy_strerror(r.rc)));
    }
  }
  if (!opts_.ca_bundle.empty()) {
    CURLcode rc = curl_easy_setopt(c, CURLOPT_CAINFO, opts_.ca_bundle.c_str());
    if (rc != CURLE_OK) {
      return Failure(Code::kInvalid, fmt::format("using CA bundle {}: {}", opts_.ca_bundle,
                                                 curl_easy_strerror(rc)));
    }
  }
  return Status::Ok();
}

Status Transfer::Failure(Code code, std::string detail) const {
  return Status::Error(code, std::move(detail), msg::DownloadFailed(req_.url));
}

void Transfer::ReportProgress(bool force) {
  if (!progress_) return;
  auto now = Clock::now();
  if (!force && now - last_report_ < std::chrono::milliseconds(200)) return;
  last_report_ = now;
  progress_(sink_.size(), expected_total_.value_or(0));
}

void Transfer::StartOver() {
  sink_.Discard();
  ++restarts_;
}

size_t Transfer::OnHeader(std::string_view line) {
  last_activity_ = Clock::now();
  if (auto status = ParseStatusLine(line)) {
    resp_ = Response();
    resp_.code = status->code;
    resp_.reason = std::move(status->reason);
    accepted_ = false;
    return line.size();
  }
  if (resp_.headers_done) return line.size();  // trailers of a chunked body
  if (auto v = HeaderValue(line, "content-length")) {
    resp_.content_length = ParseContentLength(*v);
  } else if (auto v = HeaderValue(line, "content-range")) {
    resp_.content_range = ParseContentRange(*v);
  } else if (auto v = HeaderValue(line, "etag")) {
    resp_.etag = *v;
  } else if (auto v = HeaderValue(line, "last-modified")) {
    resp_.last_modified = *v;
  } else if (line == "\r\n" || line == "\n") {
    resp_.headers_done = true;
    // Redirects and interim answers carry no body for us; errors are curl's (FAILONERROR).
    if (resp_.code >= 200 && resp_.code < 300 && !AcceptResponse()) return 0;
  }
  return line.size();
}

bool Transfer::AcceptResponse() {
  auto unexpected = [this](std::string why) {
    abort_ = Abort::kUnexpected;
    abort_detail_ = fmt::format("HTTP {}{}{}: {}", resp_.code, resp_.reason.empty() ? "" : " ",
                                resp_.reason, why);
    return false;
  };
  std::optional<uint64_t> total;
  if (request_offset_ > 0 && resp_.code == 206) {
    if (!resp_.content_range || resp_.content_range->first != request_offset_) {
      abort_ = Abort::kBadRange;
      abort_detail_ = fmt::format(
          "asked for bytes from {} and got a 206 without a matching "
          "Content-Range",
          request_offset_);
      return false;
    }
    total = resp_.content_range->complete;
    if (!total && resp_.content_length) total = request_offset_ + *resp_.content_length;
    if (total && expected_total_ && *total != *expected_total_) {
      abort_ = Abort::kBadRange;
      abort_detail_ =
          fmt::format("the image changed size from {} to {} bytes", *expected_total_, *total);
      return false;
    }
  } else if (resp_.code == 200) {
    // A 200 to a Range request: the server sends the whole image again; keep this body and
    // start over from its first byte.
    if (request_offset_ > 0) StartOver();
    total = resp_.content_length;
    // What a resume sends as If-Range: should the image change at the origin, the server answers
    // 200 with the new one instead of stitching its tail to our head. Weak ETags cannot be used.
    validator_ =
        !resp_.etag.empty() && !resp_.etag.starts_with("W/") ? resp_.etag : resp_.last_modified;
  } else if (resp_.code == 206) {
    return unexpected("a partial answer to a request without Range");
  } else {
    return unexpected("not an answer with the image");
  }
  if (total && *total > image_.capacity()) {
    abort_ = Abort::kTooBig;
    abort_detail_ = fmt::format(
        "the server announces {} bytes, more than the memory budget of {} "
        "bytes",
        *total, image_.capacity());
    return false;
  }
  expected_total_ = total;
  accepted_ = true;
  ReportProgress(true);
  return true;
}

size_t Transfer::OnBody(const uint8_t* data, size_t n) {
  if (n == 0) return 0;
  if (!accepted_) {
    abort_ = Abort::kUnexpected;
    abort_detail_ = fmt::format("HTTP {}: a body that is not the image", resp_.code);
    return 0;
  }
  if (n > sink_.room()) {
    abort_ = Abort::kTooBig;
    abort_detail_ =
        fmt::format("the image passed the memory budget of {} bytes", image_.capacity());
    return 0;
  }
  if (Status s = sink_.Add({data, n}); !s.ok()) {
    abort_ = Abort::kUnexpected;
    abort_detail_ = s.detail();
    return 0;
  }
  high_water_ = std::max(high_water_, sink_.size());
  last_activity_ = Clock::now();
  ReportProgress(false);
  return n;
}

// libcurl calls this several times a second while data flows and at least once a second when
// idle, connecting included: the one place to notice a cancel, a stall or the deadline.
int Transfer::OnTick() {
  if (cancel_.cancelled()) {
    abort_ = Abort::kCancelled;
    return 1;
  }
  auto now = Clock::now();
  if (deadline_ && now >= *deadline_) {
    abort_ = Abort::kDeadline;
    abort_detail_ =
        fmt::format("the download deadline of {} passed",
                    HumanDuration(std::chrono::duration<double>(opts_.deadline).count()));
    return 1;
  }
  if (now - last_activity_ >= opts_.stall_timeout) {
    abort_ = Abort::kStalled;
    abort_detail_ = fmt::format("no data received for {:.3g} s",
                                std::chrono::duration<double>(opts_.stall_timeout).count());
    return 1;
  }
  ReportProgress(false);
  return 0;
}

Outcome Transfer::RunAttempt() {
  if (ranges_unusable_ && image_.size() > 0) StartOver();
  request_offset_ = image_.size();
  resp_ = Response();
  accepted_ = false;
  abort_ = Abort::kNone;
  abort_detail_.clear();
  errbuf_[0] = '\0';
  last_activity_ = Clock::now();

  // The manifest's headers go on every request; libcurl keeps custom headers across redirects
  // (except Authorization to another host, which it drops on purpose).
  curl_slist* list = nullptr;
  for (const HttpHeader& h : req_.headers) {
    curl_slist* next = curl_slist_append(list, (h.name + ": " + h.value).c_str());
    if (next == nullptr) break;
    list = next;
  }
  if (request_offset_ > 0) {
    std::string range = fmt::format("Range: bytes={}-", request_offset_);
    if (curl_slist* next = curl_slist_append(list, range.c_str())) list = next;
    if (!validator_.empty()) {
      std::string if_range = "If-Range: " + validator_;
      if (curl_slist* next = curl_slist_append(list, if_range.c_str())) list = next;
    }
  }
  SlistPtr headers(list);
  CURL* c = curl_.get();
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  auto connect_timeout = opts_.connect_timeout;
  if (deadline_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline_ - Clock::now());
    connect_timeout = std::clamp(left, std::chrono::milliseconds(1), connect_timeout);
  }
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(connect_timeout.count()));

  CURLcode rc = curl_easy_perform(c);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
  ++requests_;
  // Everything received goes into the image buffer, which tells where a retry resumes.
  if (Status s = sink_.Flush(); !s.ok()) {
    return {Outcome::kFinal, Failure(Code::kIo, "storing the image: " + s.detail())};
  }

  auto retry = [](std::string detail) {
    return Outcome{Outcome::kRetry, Status::Error(Code::kIo, std::move(detail))};
  };
  if (rc == CURLE_OK) {
    if (!accepted_) {
      long code = 0;
      curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
      return {Outcome::kFinal, Failure(Code::kIo, fmt::format("HTTP {}: not an answer with the "
                                                              "image",
                                                              code))};
    }
    if (expected_total_ && image_.size() != *expected_total_) {
      // Never accepted as complete: a body that stops short of its announced length.
      return retry(fmt::format("the body ended at byte {} of {}", image_.size(), *expected_total_));
    }
    return {Outcome::kComplete, Status::Ok()};
  }
  switch (abort_) {
    case Abort::kTooBig:
      return {Outcome::kFinal, Status::Error(Code::kTooBig, abort_detail_,
                                             msg::TooBigForMemory(ImageTypeName(req_.type)))};
    case Abort::kCancelled:
      return {Outcome::kFinal, cancel_.Check()};
    case Abort::kDeadline:
    case Abort::kUnexpected:
      return {Outcome::kFinal, Failure(Code::kIo, abort_detail_)};
    case Abort::kStalled:
      return retry(abort_detail_);
    case Abort::kBadRange:
      ranges_unusable_ = true;
      return retry(abort_detail_);
    case Abort::kNone:
      break;
  }
  if (rc == CURLE_HTTP_RETURNED_ERROR) {
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    std::string detail = fmt::format("HTTP {}", code);
    if (resp_.code == code && !resp_.reason.empty()) detail += " " + resp_.reason;
    if (IsRetryableHttpStatus(static_cast<int>(code))) return retry(detail);
    return {Outcome::kFinal, Failure(Code::kIo, detail)};
  }
  std::string detail = curl_easy_strerror(rc);
  if (errbuf_[0] != '\0') detail += fmt::format(" ({})", errbuf_);
  if (IsFinalCurlError(rc)) return {Outcome::kFinal, Failure(Code::kIo, detail)};
  return retry(detail);
}

// Sleeps `delay`, waking every 100 ms for the cancel token. False when cancelled.
bool SleepUnlessCancelled(std::chrono::milliseconds delay, const CancelToken& cancel) {
  auto until = Clock::now() + delay;
  while (Clock::now() < until) {
    if (cancel.cancelled()) return false;
    auto step = std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(100));
    std::this_thread::sleep_for(step);
  }
  return !cancel.cancelled();
}

}  // namespace

Result<FetchResult> FetchImage(const FetchRequest& req, const FetchOptions& opts,
                               const ProgressFn& progress, const CancelToken& cancel) {
  CurlGlobalInit();
  const auto start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (opts.deadline.count() > 0) deadline = start + opts.deadline;
  if (opts.memory_budget == 0) {
    return Status::Error(Code::kTooBig, "the memory budget is 0 bytes",
                         msg::TooBigForMemory(ImageTypeName(req.type)));
  }
  BYOI_ASSIGN_OR_RETURN(ImageBuffer image, ImageBuffer::Create(opts.memory_budget));
  BYOI_ASSIGN_OR_RETURN(auto hasher, StreamHasher::Create(req.hashes, opts.hash_thread));

  Transfer transfer(req, opts, progress, cancel, image, *hasher);
  BYOI_RETURN_IF_ERROR(transfer.Setup(deadline));

  const int attempts = std::max(1, opts.attempts);
  int fruitless = 0;  // failed attempts in a row that brought no new byte
  for (;;) {
    BYOI_RETURN_IF_ERROR(cancel.Check());
    uint64_t before = transfer.high_water();
    Outcome outcome = transfer.RunAttempt();
    if (outcome.kind == Outcome::kComplete) break;
    if (outcome.kind == Outcome::kFinal) return std::move(outcome.error);
    fruitless = transfer.high_water() > before ? 0 : fruitless + 1;
    if (fruitless >= attempts) {
      return Status::Error(Code::kIo,
                           fmt::format("{} (gave up after {} attempts without progress)",
                                       outcome.error.detail(), attempts),
                           msg::DownloadFailed(req.url));
    }
    std::chrono::milliseconds delay =
        opts.retry_delay * (int64_t{1} << std::min(std::max(fruitless - 1, 0), 20));
    delay = std::min(delay, opts.max_retry_delay);
    if (deadline && Clock::now() + delay >= *deadline) {
      return Status::Error(Code::kIo,
                           fmt::format("{} (the download deadline passed)", outcome.error.detail()),
                           msg::DownloadFailed(req.url));
    }
    if (opts.on_retry) {
      opts.on_retry(fmt::format("request {} failed at byte {}: {}; retrying in {:.3g} s",
                                transfer.requests(), image.size(), outcome.error.detail(),
                                std::chrono::duration<double>(delay).count()));
    }
    if (!SleepUnlessCancelled(delay, cancel)) return cancel.Check();
  }

  BYOI_ASSIGN_OR_RETURN(std::vector<Digest> digests, hasher->Finish());
  if (progress) progress(image.size(), image.size());
  FetchResult result;
  result.image = std::move(image);
  result.digests = std::move(digests);
  result.requests = transfer.requests();
  result.restarts = transfer.restarts();
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace byoi
