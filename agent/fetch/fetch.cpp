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
#include "agent/fetch/redirect_chain.hpp"

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
// is wrong. Everything else (connect, receive, timeouts, TLS handshake resets, HTTP/2 stream
// errors) is treated as transient.
bool IsFinalCurlError(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
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
  kRedirect,    // follow it: a redirect whose body is longer than we care to read
};

struct Outcome {
  enum Kind { kComplete, kRetry, kFinal, kRedirect } kind = kComplete;
  Status error;  // for kRetry and kFinal
};

// The redirects the downloader follows (RFC 9110 §15.4); 300, 304 and 305 are no way to the image.
bool IsFollowedRedirect(int code) {
  return code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
}

// A redirect's own body (a line of HTML, usually) is read and dropped so that the connection can
// be used again; one longer than this ends the request instead.
constexpr uint64_t kMaxRedirectBody = 64 << 10;

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
           const CancelToken& cancel, ImageBuffer& image, StreamHasher& hasher, RedirectChain chain)
      : req_(req),
        opts_(opts),
        progress_(progress),
        cancel_(cancel),
        image_(image),
        sink_(image, hasher),
        chain_(std::move(chain)) {}

  Status Setup(std::optional<Clock::time_point> deadline);
  // One attempt at the bytes from image_.size() on (or from 0 when ranges proved unusable): a
  // request to the manifest's URL and to each redirect's target after it.
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

  // One request to chain_.url().
  Outcome RunRequest();
  // Where a request's failure happened, when a redirect led there: " (at URL, after N
  // redirect(s))" with the URL as msg::ShownUrl shows it; empty at the manifest's URL.
  std::string Where() const;
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
  RedirectChain chain_;
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
    std::string location;  // may hold a presigned query: never shown as it is
    bool headers_done = false;
    uint64_t redirect_body = 0;  // bytes of a redirect's body read and dropped
  } resp_;

  // This attempt.
  uint64_t request_offset_ = 0;
  bool accepted_ = false;  // a 200/206 whose body we are storing
  // Where the accepted body must end, as its Content-Length (200) or Content-Range (206) says;
  // nullopt when it ends with the connection (HTTP/1.1 without Content-Length nor chunks).
  std::optional<uint64_t> response_end_;
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
      // http and https only: never file://, ftp:// or gopher://. From an https URL, https only:
      // RedirectChain refuses http already; this is the second lock.
      {CURLOPT_PROTOCOLS_STR,
       curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, IsHttps(req_.url) ? "https" : "http,https")},
      // Redirects are RedirectChain's: libcurl would carry the manifest's headers to any host.
      {CURLOPT_FOLLOWLOCATION, curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L)},
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
      // A libcurl built without one of these (an old one, without PROTOCOLS_STR) gets here.
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
  } else if (auto v = HeaderValue(line, "location")) {
    resp_.location = *v;
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
    response_end_ = resp_.content_range->last + 1;
    total = resp_.content_range->complete;
    if (total && expected_total_ && *total != *expected_total_) {
      abort_ = Abort::kBadRange;
      abort_detail_ =
          fmt::format("the image changed size from {} to {} bytes", *expected_total_, *total);
      return false;
    }
    // "bytes N-M/*": the length is not repeated, but If-Range made sure this is the image whose
    // length an earlier answer announced.
    if (!total) total = expected_total_;
  } else if (resp_.code == 200) {
    // A 200 to a Range request: the server sends the whole image again; keep this body and
    // start over from its first byte.
    if (request_offset_ > 0) StartOver();
    total = resp_.content_length;
    response_end_ = resp_.content_length;
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
  if (!accepted_ && IsFollowedRedirect(resp_.code) && !resp_.location.empty()) {
    resp_.redirect_body += n;
    if (resp_.redirect_body <= kMaxRedirectBody) return n;
    abort_ = Abort::kRedirect;
    return 0;
  }
  if (!accepted_) {
    abort_ = Abort::kUnexpected;
    abort_detail_ = fmt::format("HTTP {}: a body that is not the image", resp_.code);
    return 0;
  }
  if (response_end_ && n > *response_end_ - sink_.size()) {
    // Only a body that ends with the connection can get here (libcurl stops at a
    // Content-Length): bytes past the range the 206 announced are not the bytes asked for.
    abort_ = Abort::kBadRange;
    abort_detail_ = fmt::format("a 206 sent more than the bytes {}-{} it announced",
                                request_offset_, *response_end_ - 1);
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
  // Every attempt starts at the manifest's URL: a presigned URL handed out by a redirect may have
  // expired since (redirect_chain.hpp).
  chain_.Restart();
  for (;;) {
    Outcome outcome = RunRequest();
    if (outcome.kind != Outcome::kRedirect) return outcome;
    if (Status s = chain_.Follow(resp_.location); !s.ok()) {
      return {Outcome::kFinal, Failure(Code::kIo, s.detail())};
    }
  }
}

std::string Transfer::Where() const {
  if (chain_.redirects() == 0) return {};
  return fmt::format(" (at {}, after {} redirect(s))", msg::ShownUrl(chain_.url()),
                     chain_.redirects());
}

Outcome Transfer::RunRequest() {
  resp_ = Response();
  accepted_ = false;
  response_end_.reset();
  abort_ = Abort::kNone;
  abort_detail_.clear();
  errbuf_[0] = '\0';
  last_activity_ = Clock::now();

  // The manifest's headers go to its URL's origin only (redirect_chain.hpp); Range and If-Range
  // on every request, redirects included, as they hold no secret.
  curl_slist* list = nullptr;
  if (chain_.at_origin()) {
    for (const HttpHeader& h : req_.headers) {
      curl_slist* next = curl_slist_append(list, (h.name + ": " + h.value).c_str());
      if (next == nullptr) break;
      list = next;
    }
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
  if (CURLcode rc = curl_easy_setopt(c, CURLOPT_URL, chain_.url().c_str()); rc != CURLE_OK) {
    return {Outcome::kFinal, Failure(Code::kIo, fmt::format("setting the URL{}: {}", Where(),
                                                            curl_easy_strerror(rc)))};
  }

  CURLcode rc = curl_easy_perform(c);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
  ++requests_;
  // Everything received goes into the image buffer, which tells where a retry resumes.
  if (Status s = sink_.Flush(); !s.ok()) {
    return {Outcome::kFinal, Failure(Code::kIo, "storing the image: " + s.detail())};
  }

  auto retry = [this](std::string detail) {
    return Outcome{Outcome::kRetry, Status::Error(Code::kIo, detail + Where())};
  };
  auto final = [this](std::string detail) {
    return Outcome{Outcome::kFinal, Failure(Code::kIo, detail + Where())};
  };
  if ((rc == CURLE_OK || abort_ == Abort::kRedirect) && IsFollowedRedirect(resp_.code) &&
      !resp_.location.empty()) {
    return {Outcome::kRedirect, Status::Ok()};
  }
  if (rc == CURLE_OK) {
    if (!accepted_) {
      long code = 0;
      curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
      return final(fmt::format("HTTP {}: not an answer with the image", code));
    }
    // Never accepted as complete: a body that stops short of what its answer announced. With a
    // Content-Length libcurl reports that itself (CURLE_PARTIAL_FILE); a 206 whose body ends
    // with the connection is checked against its Content-Range here.
    if (response_end_ && image_.size() < *response_end_) {
      return retry(fmt::format("the body ended at byte {}, before byte {} its answer announced",
                               image_.size(), *response_end_));
    }
    if (expected_total_ && image_.size() != *expected_total_) {
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
      return {Outcome::kFinal, Failure(Code::kIo, abort_detail_)};
    case Abort::kUnexpected:
      return final(abort_detail_);
    case Abort::kStalled:
      return retry(abort_detail_);
    case Abort::kBadRange:
      ranges_unusable_ = true;
      return retry(abort_detail_);
    case Abort::kRedirect:
    case Abort::kNone:
      break;
  }
  if (rc == CURLE_HTTP_RETURNED_ERROR) {
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    std::string detail = fmt::format("HTTP {}", code);
    if (resp_.code == code && !resp_.reason.empty()) detail += " " + resp_.reason;
    if (IsRetryableHttpStatus(static_cast<int>(code))) return retry(detail);
    return final(detail);
  }
  std::string detail = curl_easy_strerror(rc);
  if (errbuf_[0] != '\0') detail += fmt::format(" ({})", errbuf_);
  if (IsFinalCurlError(rc)) return final(detail);
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

  Result<RedirectChain> chain = RedirectChain::Create(req.url);
  if (!chain.ok()) return std::move(chain).status().DefaultMessage(msg::DownloadFailed(req.url));
  Transfer transfer(req, opts, progress, cancel, image, *hasher, std::move(chain).value());
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
