#include "agent/fetch/download.hpp"

#include <curl/curl.h>
#include <fmt/format.h>
#include <strings.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/fetch/curl_handles.hpp"
#include "agent/fetch/http_headers.hpp"
#include "agent/fetch/piece_plan.hpp"
#include "agent/fetch/proxy.hpp"
#include "agent/fetch/redirect_chain.hpp"

namespace byoi {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kMaxConnections = 16;

// How often the loop wakes without socket activity: cancel, stalls, the deadline, back-offs.
constexpr milliseconds kTick{100};

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

// The redirects the downloader follows (RFC 9110 §15.4); 300, 304 and 305 are no way to the image.
bool IsFollowedRedirect(int code) {
  return code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
}

// A redirect's own body (a line of HTML, usually) is read and dropped so that the connection can
// be used again; one longer than this ends the request instead.
constexpr uint64_t kMaxRedirectBody = 64 << 10;

// Why a callback (or the loop) stopped a request, and what follows.
enum class Abort {
  kNone,
  kTooBig,      // final: over the memory budget
  kStalled,     // retry the piece: no byte for stall_timeout
  kBadRange,    // start over without ranges: a 206 that is not the range asked for
  kChanged,     // start over: the image changed (another length, a 200 after ranges worked)
  kNoRestart,   // final: a 200 to a resume, and a sink has bytes already
  kUnexpected,  // final: a status we cannot use (204, 3xx without Location, 206 unasked)
  kRedirect,    // follow it: a redirect whose body is longer than we care to read
  kStore,       // final: the store could not keep the bytes (RAM ran out)
  kSink,        // final: the sink refused; its Status is returned as it is
};

enum class Mode {
  kDiscover,  // the first request, `Range: bytes=0-(kFirstPiece - 1)`: do ranges work?
  kRanges,    // they do: pieces over the connections
  kWhole,     // they do not (or one connection): the whole body on one connection
};

// The answer being received; reset at every status line (redirects, 100 Continue).
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
};

class Download;

// One connection: an easy handle reused request after request (libcurl keeps its connection open
// between them), and the request it is making for a piece.
struct Connection {
  explicit Connection(RedirectChain c) : chain(std::move(c)) {}

  Download* owner = nullptr;
  CurlPtr curl;
  RedirectChain chain;
  // The proxy of the request being made (proxy.hpp), or empty: direct. May hold credentials:
  // shown only through msg::ShownUrl.
  ProxyChoice proxy;
  CurlSlistPtr headers;  // the request's headers: libcurl reads them until it is done
  char errbuf[CURL_ERROR_SIZE] = {};
  bool in_multi = false;

  Piece* piece = nullptr;          // the piece it fetches; null when idle
  uint64_t request_offset = 0;     // the piece's pos when the request was made
  uint64_t high_water_before = 0;  // the piece's high water then
  Response resp;
  bool accepted = false;  // a 200/206 whose body we are storing
  // Where the accepted body must end, as its Content-Length (200) or Content-Range (206) says;
  // nullopt when it ends with the connection (HTTP/1.1 without Content-Length nor chunks).
  std::optional<uint64_t> response_end;
  Abort abort = Abort::kNone;
  std::string abort_detail;
  Status abort_status;  // kSink: the sink's own
  Clock::time_point last_activity;
};

class Download {
 public:
  Download(const FetchRequest& req, const FetchOptions& opts, PieceStore& store,
           const ProgressFn& progress, const CancelToken& cancel)
      : req_(req),
        opts_(opts),
        store_(store),
        progress_(progress),
        cancel_(cancel),
        connections_(std::clamp(opts.connections, 1, kMaxConnections)),
        attempts_(std::max(1, opts.attempts)) {}
  Download(const Download&) = delete;
  Download& operator=(const Download&) = delete;
  ~Download() { StopAll(); }  // the easy handles leave the multi handle before either goes

  Result<DownloadStats> Run();

 private:
  static size_t HeaderThunk(char* data, size_t size, size_t n, void* conn) {
    auto* c = static_cast<Connection*>(conn);
    return c->owner->OnHeader(*c, {data, size * n});
  }
  static size_t WriteThunk(char* data, size_t size, size_t n, void* conn) {
    auto* c = static_cast<Connection*>(conn);
    return c->owner->OnBody(*c, reinterpret_cast<const uint8_t*>(data), size * n);
  }

  Status Setup();
  Status SetupConnection(Connection& c);
  // Hands the pieces that can be fetched now to the idle connections.
  Status Schedule();
  // Makes the request for c.piece to c.chain.url().
  Status Issue(Connection& c);
  // A request ended with `rc`: the piece is complete, retried, or the download fails.
  Status Ended(Connection& c, CURLcode rc);
  Status Complete(Connection& c);
  Status Retry(Connection& c, const std::string& detail);
  // The image changed, or its ranges cannot be trusted: every request stops and the download
  // starts over from byte 0.
  Status StartOver(const std::string& why);
  void Detach(Connection& c);
  void StopAll();
  milliseconds BackOff(int fruitless) const;
  // Where a request's failure happened, when a redirect or a proxy led there: " (at URL, after
  // N redirect(s), through the proxy PROXY, from SOURCE)", each URL as msg::ShownUrl shows it
  // (the proxy's credentials never); empty at the manifest's URL without a proxy.
  std::string Where(const Connection& c) const;
  size_t OnHeader(Connection& c, std::string_view line);
  bool Accept(Connection& c);
  size_t OnBody(Connection& c, const uint8_t* data, size_t n);
  Status AdvanceStore(bool flush) { return store_.Advance(plan_.prefix(), total_, flush); }
  void ReportProgress(bool force);
  Status Failure(std::string detail) const {
    return Status::Error(Code::kIo, std::move(detail), msg::DownloadFailed(req_.url));
  }

  const FetchRequest& req_;
  const FetchOptions& opts_;
  PieceStore& store_;
  const ProgressFn& progress_;
  const CancelToken& cancel_;
  const int connections_;
  const int attempts_;
  const ProxyEnvironment proxy_env_ = ProxyEnvironment::FromProcess();
  std::optional<Clock::time_point> deadline_;
  CurlMultiPtr multi_;
  std::vector<std::unique_ptr<Connection>> conns_;

  PiecePlan plan_;
  Mode mode_ = Mode::kDiscover;
  bool ranges_unusable_ = false;   // a server whose 206 answers cannot be trusted
  std::optional<uint64_t> total_;  // the body's length, from the answers
  std::string validator_;          // the image's strong ETag or Last-Modified, sent as If-Range
  int requests_ = 0;
  int restarts_ = 0;         // every start from byte 0
  int engine_restarts_ = 0;  // those of StartOver, which abandon every request
  Clock::time_point last_report_;
};

Status Download::Setup() {
  CurlGlobalInit();
  if (opts_.deadline.count() > 0) deadline_ = Clock::now() + opts_.deadline;
  multi_.reset(curl_multi_init());
  if (!multi_) return Status::Error(Code::kInternal, "curl_multi_init failed");
  // One request per TCP connection: the point of several connections is several TCP streams
  // (servers cap each one's rate); HTTP/2 multiplexing would put every piece on one.
  curl_multi_setopt(multi_.get(), CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_NOTHING));
  for (int i = 0; i < connections_; ++i) {
    Result<RedirectChain> chain = RedirectChain::Create(req_.url);
    if (!chain.ok()) return std::move(chain).status().DefaultMessage(msg::DownloadFailed(req_.url));
    conns_.push_back(std::make_unique<Connection>(std::move(chain).value()));
    BYOI_RETURN_IF_ERROR(SetupConnection(*conns_.back()));
  }
  return Status::Ok();
}

Status Download::SetupConnection(Connection& conn) {
  conn.owner = this;
  conn.curl.reset(curl_easy_init());
  if (!conn.curl) return Status::Error(Code::kInternal, "curl_easy_init failed");
  CURL* c = conn.curl.get();
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
      // 4xx/5xx bodies never reach the store; the status decides what happens next.
      {CURLOPT_FAILONERROR, curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L)},
      {CURLOPT_NOSIGNAL, curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L)},
      {CURLOPT_BUFFERSIZE, curl_easy_setopt(c, CURLOPT_BUFFERSIZE, buffer)},
      {CURLOPT_TCP_KEEPALIVE, curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L)},
      {CURLOPT_USERAGENT, curl_easy_setopt(c, CURLOPT_USERAGENT, "byoi-agent/" BYOI_VERSION)},
      {CURLOPT_ERRORBUFFER, curl_easy_setopt(c, CURLOPT_ERRORBUFFER, conn.errbuf)},
      {CURLOPT_HEADERFUNCTION, curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &HeaderThunk)},
      {CURLOPT_HEADERDATA, curl_easy_setopt(c, CURLOPT_HEADERDATA, &conn)},
      {CURLOPT_WRITEFUNCTION, curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &WriteThunk)},
      {CURLOPT_WRITEDATA, curl_easy_setopt(c, CURLOPT_WRITEDATA, &conn)},
      {CURLOPT_PRIVATE, curl_easy_setopt(c, CURLOPT_PRIVATE, &conn)},
      {CURLOPT_SSL_VERIFYPEER,
       curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, opts_.insecure ? 0L : 1L)},
      {CURLOPT_SSL_VERIFYHOST,
       curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, opts_.insecure ? 0L : 2L)},
      // The proxy is chosen per request by the rule of proxy.hpp, never by libcurl's own reading
      // of the environment: CURLOPT_PROXY is set on every request ("" for none), and no_proxy is
      // applied there, so libcurl's copy of it is switched off.
      {CURLOPT_NOPROXY, curl_easy_setopt(c, CURLOPT_NOPROXY, "")},
      // The manifest's headers go to the origin in the request, never to the proxy in a CONNECT
      // (libcurl's default since 7.42.0; stated, as it guards credentials).
      {CURLOPT_HEADEROPT, curl_easy_setopt(c, CURLOPT_HEADEROPT, CURLHEADER_SEPARATE)},
      // A tunnel's "200 Connection established" is not the origin's answer: OnHeader must see
      // the origin's status line only.
      {CURLOPT_SUPPRESS_CONNECT_HEADERS, curl_easy_setopt(c, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L)},
      // Proxy credentials go with the first request (Basic), not after a 407 round trip.
      {CURLOPT_PROXYAUTH, curl_easy_setopt(c, CURLOPT_PROXYAUTH, CURLAUTH_BASIC)},
      // An https proxy's certificate is checked as an origin's is (--insecure, --ca-bundle).
      {CURLOPT_PROXY_SSL_VERIFYPEER,
       curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYPEER, opts_.insecure ? 0L : 1L)},
      {CURLOPT_PROXY_SSL_VERIFYHOST,
       curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYHOST, opts_.insecure ? 0L : 2L)},
  };
  for (const auto& r : results) {
    if (r.rc != CURLE_OK) {
      // A libcurl built without one of these (an old one, without PROTOCOLS_STR) gets here.
      return Status::Error(Code::kInvalid,
                           fmt::format("setting up the transfer (option {}): {}",
                                       static_cast<int>(r.opt), curl_easy_strerror(r.rc)),
                           msg::DownloadFailed(req_.url));
    }
  }
  if (!opts_.ca_bundle.empty()) {
    CURLcode rc = curl_easy_setopt(c, CURLOPT_CAINFO, opts_.ca_bundle.c_str());
    if (rc == CURLE_OK) rc = curl_easy_setopt(c, CURLOPT_PROXY_CAINFO, opts_.ca_bundle.c_str());
    if (rc != CURLE_OK) {
      return Status::Error(
          Code::kInvalid,
          fmt::format("using CA bundle {}: {}", opts_.ca_bundle, curl_easy_strerror(rc)),
          msg::DownloadFailed(req_.url));
    }
  }
  return Status::Ok();
}

Result<DownloadStats> Download::Run() {
  BYOI_RETURN_IF_ERROR(Setup());
  // One connection asks for the whole body at once, as a plain download: no round trip to find
  // out about ranges it would not use.
  mode_ = connections_ == 1 ? Mode::kWhole : Mode::kDiscover;
  plan_.Reset(mode_ == Mode::kWhole ? kUnbounded : kFirstPiece);
  for (;;) {
    if (cancel_.cancelled()) return cancel_.Check();
    if (deadline_ && Clock::now() >= *deadline_) {
      return Failure(
          fmt::format("the download deadline of {} passed",
                      HumanDuration(std::chrono::duration<double>(opts_.deadline).count())));
    }
    BYOI_RETURN_IF_ERROR(Schedule());
    int running = 0;
    if (CURLMcode mc = curl_multi_perform(multi_.get(), &running); mc != CURLM_OK) {
      return Status::Error(Code::kInternal,
                           fmt::format("curl_multi_perform: {}", curl_multi_strerror(mc)));
    }
    int left = 0;
    bool ended = false;
    while (CURLMsg* m = curl_multi_info_read(multi_.get(), &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      ended = true;
      // Read before Detach: the message does not outlive its handle's removal.
      CURL* easy = m->easy_handle;
      CURLcode rc = m->data.result;
      Connection* c = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &c);
      Detach(*c);
      BYOI_RETURN_IF_ERROR(Ended(*c, rc));
    }
    const auto now = Clock::now();
    for (auto& c : conns_) {
      if (c->in_multi && now - c->last_activity >= opts_.stall_timeout) {
        Detach(*c);
        c->abort = Abort::kStalled;
        c->abort_detail = fmt::format("no data received for {:.3g} s",
                                      std::chrono::duration<double>(opts_.stall_timeout).count());
        BYOI_RETURN_IF_ERROR(Ended(*c, CURLE_ABORTED_BY_CALLBACK));
      }
    }
    if (plan_.complete()) break;
    ReportProgress(false);
    // A connection whose transfer ended takes its next piece now: pieces started together end
    // together, and waiting here would leave every connection idle for a tick.
    if (ended) continue;
    milliseconds wait = kTick;
    if (auto wake = plan_.NextWake()) {
      wait =
          std::clamp(std::chrono::duration_cast<milliseconds>(*wake - now), milliseconds(0), kTick);
    }
    curl_multi_poll(multi_.get(), nullptr, 0, static_cast<int>(wait.count()), nullptr);
  }
  BYOI_RETURN_IF_ERROR(AdvanceStore(true));
  return DownloadStats{.bytes = plan_.prefix(), .requests = requests_, .restarts = restarts_};
}

Status Download::Schedule() {
  const auto now = Clock::now();
  for (auto& c : conns_) {
    if (c->piece != nullptr) continue;
    Piece* p = plan_.Take(now, store_.limit());
    if (p == nullptr) break;
    c->piece = p;
    c->request_offset = p->pos;
    c->high_water_before = p->high_water;
    // Every request starts at the manifest's URL: a presigned URL handed out by a redirect may
    // have expired since (redirect_chain.hpp).
    c->chain.Restart();
    BYOI_RETURN_IF_ERROR(Issue(*c));
  }
  return Status::Ok();
}

Status Download::Issue(Connection& c) {
  const Piece& p = *c.piece;
  c.resp = Response();
  c.accepted = false;
  c.response_end.reset();
  c.abort = Abort::kNone;
  c.abort_detail.clear();
  c.abort_status = Status::Ok();
  c.errbuf[0] = '\0';
  c.last_activity = Clock::now();

  // The manifest's headers go to its URL's origin only (redirect_chain.hpp); Range and If-Range
  // on every request, redirects included, as they hold no secret.
  curl_slist* list = nullptr;
  auto add = [&list](const std::string& line) {
    if (curl_slist* next = curl_slist_append(list, line.c_str())) list = next;
  };
  if (c.chain.at_origin()) {
    for (const HttpHeader& h : req_.headers) add(h.name + ": " + h.value);
  }
  switch (mode_) {
    case Mode::kDiscover:
      add(fmt::format("Range: bytes=0-{}", p.end - 1));
      break;
    case Mode::kRanges:
      add(fmt::format("Range: bytes={}-{}", p.pos, p.end - 1));
      break;
    case Mode::kWhole:
      if (p.pos > 0) add(fmt::format("Range: bytes={}-", p.pos));
      break;
  }
  // Should the image change at the origin, the server answers 200 with the new one instead of
  // stitching its bytes to ours.
  if (p.pos > 0 && !validator_.empty()) add("If-Range: " + validator_);
  c.headers.reset(list);
  CURL* e = c.curl.get();
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, c.headers.get());
  // Chosen for this request's URL: a redirect to another host is judged on that host (no_proxy).
  Result<ProxyChoice> proxy = ChooseProxy(c.chain.url(), opts_.proxy, proxy_env_);
  if (!proxy.ok()) return Failure(proxy.status().detail() + Where(c));
  c.proxy = std::move(proxy).value();
  if (CURLcode rc = curl_easy_setopt(e, CURLOPT_PROXY, c.proxy.url.c_str()); rc != CURLE_OK) {
    return Failure(fmt::format("setting the proxy{}: {}", Where(c), curl_easy_strerror(rc)));
  }
  auto connect_timeout = opts_.connect_timeout;
  if (deadline_) {
    auto left = std::chrono::duration_cast<milliseconds>(*deadline_ - Clock::now());
    connect_timeout = std::clamp(left, milliseconds(1), connect_timeout);
  }
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(connect_timeout.count()));
  if (CURLcode rc = curl_easy_setopt(e, CURLOPT_URL, c.chain.url().c_str()); rc != CURLE_OK) {
    return Failure(fmt::format("setting the URL{}: {}", Where(c), curl_easy_strerror(rc)));
  }
  if (CURLMcode mc = curl_multi_add_handle(multi_.get(), e); mc != CURLM_OK) {
    return Status::Error(Code::kInternal,
                         fmt::format("curl_multi_add_handle: {}", curl_multi_strerror(mc)));
  }
  c.in_multi = true;
  return Status::Ok();
}

void Download::Detach(Connection& c) {
  if (!c.in_multi) return;
  curl_multi_remove_handle(multi_.get(), c.curl.get());
  c.in_multi = false;
}

void Download::StopAll() {
  for (auto& c : conns_) {
    Detach(*c);
    if (c->piece != nullptr) c->piece->active = false;
    c->piece = nullptr;
  }
}

milliseconds Download::BackOff(int fruitless) const {
  milliseconds delay = opts_.retry_delay * (int64_t{1} << std::min(std::max(fruitless - 1, 0), 20));
  return std::min(delay, opts_.max_retry_delay);
}

std::string Download::Where(const Connection& c) const {
  std::string where;
  if (c.chain.redirects() > 0) {
    where = fmt::format("at {}, after {} redirect(s)", msg::ShownUrl(c.chain.url()),
                        c.chain.redirects());
  }
  if (!c.proxy.url.empty()) {
    where += fmt::format("{}through the proxy {}, from {}", where.empty() ? "" : ", ",
                         msg::ShownUrl(c.proxy.url), c.proxy.source);
  }
  return where.empty() ? where : " (" + where + ")";
}

void Download::ReportProgress(bool force) {
  if (!progress_) return;
  auto now = Clock::now();
  if (!force && now - last_report_ < milliseconds(200)) return;
  last_report_ = now;
  progress_(plan_.received(), total_.value_or(0));
}

size_t Download::OnHeader(Connection& c, std::string_view line) {
  c.last_activity = Clock::now();
  if (auto status = ParseStatusLine(line)) {
    c.resp = Response();
    c.resp.code = status->code;
    c.resp.reason = std::move(status->reason);
    c.accepted = false;
    return line.size();
  }
  Response& r = c.resp;
  if (r.headers_done) return line.size();  // trailers of a chunked body
  if (auto v = HeaderValue(line, "content-length")) {
    r.content_length = ParseContentLength(*v);
  } else if (auto v = HeaderValue(line, "content-range")) {
    r.content_range = ParseContentRange(*v);
  } else if (auto v = HeaderValue(line, "etag")) {
    r.etag = *v;
  } else if (auto v = HeaderValue(line, "last-modified")) {
    r.last_modified = *v;
  } else if (auto v = HeaderValue(line, "location")) {
    r.location = *v;
  } else if (line == "\r\n" || line == "\n") {
    r.headers_done = true;
    // Redirects and interim answers carry no body for us; errors are curl's (FAILONERROR).
    if (r.code >= 200 && r.code < 300 && !Accept(c)) return 0;
  }
  return line.size();
}

bool Download::Accept(Connection& c) {
  Piece& p = *c.piece;
  const Response& r = c.resp;
  auto reject = [&c](Abort why, std::string detail) {
    c.abort = why;
    c.abort_detail = std::move(detail);
    return false;
  };
  auto unexpected = [&](std::string_view why) {
    return reject(Abort::kUnexpected, fmt::format("HTTP {}{}{}: {}", r.code,
                                                  r.reason.empty() ? "" : " ", r.reason, why));
  };
  // What a later request sends as If-Range. Weak ETags cannot be used.
  auto validator = [&r] {
    return !r.etag.empty() && !r.etag.starts_with("W/") ? r.etag : r.last_modified;
  };
  const bool asked_range = mode_ != Mode::kWhole || c.request_offset > 0;
  std::optional<uint64_t> total = total_;
  if (r.code == 206 && asked_range) {
    const std::optional<ContentRange>& cr = r.content_range;
    if (!cr || cr->first != c.request_offset) {
      return reject(Abort::kBadRange,
                    fmt::format("asked for bytes from {} and got a 206 without a matching "
                                "Content-Range",
                                c.request_offset));
    }
    if (p.end != kUnbounded && cr->last >= p.end) {
      return reject(Abort::kBadRange,
                    fmt::format("asked for bytes {}-{} and got a 206 for bytes "
                                "{}-{}",
                                c.request_offset, p.end - 1, cr->first, cr->last));
    }
    if (r.content_length && *r.content_length != cr->last - cr->first + 1) {
      return reject(Abort::kBadRange,
                    fmt::format("a 206 for bytes {}-{} with a Content-Length of {}", cr->first,
                                cr->last, *r.content_length));
    }
    if (cr->complete && total && *cr->complete != *total) {
      return reject(Abort::kChanged,
                    fmt::format("the image changed during the download: its length went from {} "
                                "to {} bytes",
                                *total, *cr->complete));
    }
    if (mode_ == Mode::kDiscover && !cr->complete) {
      return reject(Abort::kBadRange,
                    "a 206 that does not tell the image's length (Content-Range: bytes 0-N/*)");
    }
    // "bytes N-M/*" on a resume: the length is not repeated, but If-Range made sure this is the
    // image whose length an earlier answer announced.
    if (!total) total = cr->complete;
    c.response_end = cr->last + 1;
  } else if (r.code == 200) {
    if (mode_ == Mode::kRanges) {
      return reject(Abort::kChanged,
                    "the image changed during the download: a Range request was answered with "
                    "the whole image (HTTP 200)");
    }
    if (mode_ == Mode::kWhole && c.request_offset > 0) {
      // The server ignores Range (or the image changed): this body is the image from byte 0.
      if (!store_.CanStartOver()) {
        return reject(
            Abort::kNoRestart,
            fmt::format("the server answered a request for the bytes from {} with the whole "
                        "image (HTTP 200): it ignores Range, or the image changed during the "
                        "download; {} bytes were already written, and a streamed download cannot "
                        "start over from byte 0",
                        c.request_offset, store_.taken()));
      }
      store_.StartOver();
      plan_.StartOver(p);
      ++restarts_;
    }
    if (mode_ == Mode::kDiscover) {
      mode_ = Mode::kWhole;
      plan_.ExtendToEnd(p);
    }
    total = r.content_length;
    c.response_end = r.content_length;
    validator_ = validator();
  } else if (r.code == 206) {
    return unexpected("a partial answer to a request without Range");
  } else {
    return unexpected("not an answer with the image");
  }
  if (total && *total > store_.capacity()) {
    return reject(Abort::kTooBig, fmt::format("the server announces {} bytes, more than the memory "
                                              "budget of {} bytes",
                                              *total, store_.capacity()));
  }
  if (mode_ == Mode::kDiscover) {
    // Ranges work and the length is known: the rest is cut into pieces for every connection.
    mode_ = Mode::kRanges;
    validator_ = validator();
    uint64_t rest = *total - std::min(*total, p.end);
    plan_.SetTotal(*total, PieceSize(rest, connections_, store_.window()));
  }
  total_ = total;
  c.accepted = true;
  ReportProgress(true);
  return true;
}

size_t Download::OnBody(Connection& c, const uint8_t* data, size_t n) {
  if (n == 0) return 0;
  if (!c.accepted && IsFollowedRedirect(c.resp.code) && !c.resp.location.empty()) {
    c.resp.redirect_body += n;
    if (c.resp.redirect_body <= kMaxRedirectBody) return n;
    c.abort = Abort::kRedirect;
    return 0;
  }
  if (!c.accepted) {
    c.abort = Abort::kUnexpected;
    c.abort_detail = fmt::format("HTTP {}: a body that is not the image", c.resp.code);
    return 0;
  }
  Piece& p = *c.piece;
  if (c.response_end && n > *c.response_end - p.pos) {
    // Only a body that ends with the connection can get here (libcurl stops at a
    // Content-Length): bytes past the range the 206 announced are not the bytes asked for.
    c.abort = Abort::kBadRange;
    c.abort_detail = fmt::format("a 206 sent more than the bytes {}-{} it announced",
                                 c.request_offset, *c.response_end - 1);
    return 0;
  }
  if (n > store_.capacity() - p.pos) {
    c.abort = Abort::kTooBig;
    c.abort_detail =
        fmt::format("the image passed the memory budget of {} bytes", store_.capacity());
    return 0;
  }
  const size_t given = n;
  while (n > 0) {
    uint64_t room = store_.RoomAt(p.pos);
    if (room == 0 && plan_.IsFirst(p)) {
      // A stream's window is full up to this, the first piece: the sink takes it all.
      if (Status s = AdvanceStore(true); !s.ok()) {
        c.abort = Abort::kSink;
        c.abort_status = std::move(s);
        return 0;
      }
      room = store_.RoomAt(p.pos);
    }
    if (room == 0) {
      c.abort = Abort::kStore;
      c.abort_detail = fmt::format("no room in the download window for byte {}", p.pos);
      return 0;
    }
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n, room));
    if (Status s = store_.Write(p.pos, {data, k}); !s.ok()) {
      c.abort = Abort::kStore;
      c.abort_detail = s.detail();
      return 0;
    }
    plan_.Received(p, k);
    data += k;
    n -= k;
    if (plan_.IsFirst(p)) {
      if (Status s = AdvanceStore(false); !s.ok()) {
        c.abort = Abort::kSink;
        c.abort_status = std::move(s);
        return 0;
      }
    }
  }
  c.last_activity = Clock::now();
  ReportProgress(false);
  return given;
}

Status Download::Ended(Connection& c, CURLcode rc) {
  ++requests_;
  CURL* e = c.curl.get();
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, nullptr);
  c.headers.reset();
  Piece& p = *c.piece;
  auto final = [&](const std::string& detail) { return Failure(detail + Where(c)); };
  if ((rc == CURLE_OK || c.abort == Abort::kRedirect) && IsFollowedRedirect(c.resp.code) &&
      !c.resp.location.empty()) {
    if (Status s = c.chain.Follow(c.resp.location); !s.ok()) return Failure(s.detail());
    return Issue(c);
  }
  if (rc == CURLE_OK) {
    if (!c.accepted) {
      long code = 0;
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
      return final(fmt::format("HTTP {}: not an answer with the image", code));
    }
    // Never accepted as complete: a body that stops short of what its answer announced. With a
    // Content-Length libcurl reports that itself (CURLE_PARTIAL_FILE); a 206 whose body ends
    // with the connection is checked against its Content-Range here.
    if (c.response_end && p.pos < *c.response_end) {
      return Retry(c, fmt::format("the body ended at byte {}, before byte {} its answer announced",
                                  p.pos, *c.response_end));
    }
    if (mode_ == Mode::kWhole) {
      if (total_ && p.pos != *total_) {
        return Retry(c, fmt::format("the body ended at byte {} of {}", p.pos, *total_));
      }
      // The whole body, its end told by its length or by the connection's close.
      total_ = p.pos;
      plan_.SetTotal(p.pos, 1);
    }
    if (!p.complete()) {
      // A 206 for fewer bytes than asked: the rest of the piece in another request.
      return Retry(
          c, fmt::format("the answer ended at byte {}, before byte {} asked for", p.pos, p.end));
    }
    return Complete(c);
  }
  switch (c.abort) {
    case Abort::kTooBig:
      return Status::Error(Code::kTooBig, c.abort_detail,
                           msg::TooBigForMemory(ImageTypeName(req_.type)));
    case Abort::kUnexpected:
      return final(c.abort_detail);
    case Abort::kNoRestart:
      return final(c.abort_detail);
    case Abort::kStore:
      return Failure("storing the image: " + c.abort_detail);
    case Abort::kSink:
      return c.abort_status;
    case Abort::kStalled:
      return Retry(c, c.abort_detail);
    case Abort::kBadRange:
      ranges_unusable_ = true;
      return StartOver(c.abort_detail + Where(c));
    case Abort::kChanged:
      return StartOver(c.abort_detail + Where(c));
    case Abort::kRedirect:
    case Abort::kNone:
      break;
  }
  if (rc == CURLE_HTTP_RETURNED_ERROR) {
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    std::string detail = fmt::format("HTTP {}", code);
    if (c.resp.code == code && !c.resp.reason.empty()) detail += " " + c.resp.reason;
    if (code == 416 && mode_ == Mode::kRanges) {
      // Bytes within the length an earlier answer told are not there: the image got shorter.
      return StartOver(fmt::format("the image changed during the download: bytes {}-{} of its {} "
                                   "were refused ({})",
                                   p.pos, p.end - 1, total_.value_or(0), detail) +
                       Where(c));
    }
    if (IsRetryableHttpStatus(static_cast<int>(code))) return Retry(c, detail);
    return final(detail);
  }
  std::string detail = curl_easy_strerror(rc);
  if (c.errbuf[0] != '\0') detail += fmt::format(" ({})", c.errbuf);
  if (IsFinalCurlError(rc)) return final(detail);
  return Retry(c, detail);
}

Status Download::Complete(Connection& c) {
  Piece& p = *c.piece;
  c.piece = nullptr;
  const bool was_first = plan_.IsFirst(p);
  plan_.Release(p);
  // The prefix grew over the pieces that had arrived after this one.
  return was_first ? AdvanceStore(false) : Status::Ok();
}

Status Download::Retry(Connection& c, const std::string& detail) {
  Piece& p = *c.piece;
  if (p.complete()) return Complete(c);  // every byte asked for came before the fault
  const std::string where = detail + Where(c);
  // A request that brought new bytes starts the piece's count (and back-off) again, so a long
  // download over a flaky link finishes as long as it moves; the deadline bounds the whole.
  p.fruitless = p.high_water > c.high_water_before ? 0 : p.fruitless + 1;
  if (p.fruitless >= attempts_) {
    return Failure(
        fmt::format("{} (gave up after {} attempts without progress)", where, attempts_));
  }
  const milliseconds delay = BackOff(p.fruitless);
  const auto now = Clock::now();
  if (deadline_ && now + delay >= *deadline_) {
    return Failure(fmt::format("{} (the download deadline passed)", where));
  }
  if (opts_.on_retry) {
    opts_.on_retry(fmt::format("request {} failed at byte {}: {}; retrying in {:.3g} s", requests_,
                               p.pos, where, std::chrono::duration<double>(delay).count()));
  }
  p.not_before = now + delay;
  c.piece = nullptr;
  plan_.Release(p);
  return Status::Ok();
}

Status Download::StartOver(const std::string& why) {
  StopAll();  // the other requests fetch the old image's bytes
  if (!store_.CanStartOver()) {
    return Failure(
        fmt::format("{}; {} bytes were already written, and a streamed download cannot "
                    "start over from byte 0",
                    why, store_.taken()));
  }
  ++engine_restarts_;
  if (engine_restarts_ > attempts_) {
    return Failure(fmt::format("{} (gave up after {} starts from byte 0)", why, attempts_));
  }
  ++restarts_;
  store_.StartOver();
  const milliseconds delay = BackOff(engine_restarts_);
  const auto now = Clock::now();
  if (deadline_ && now + delay >= *deadline_) {
    return Failure(fmt::format("{} (the download deadline passed)", why));
  }
  if (opts_.on_retry) {
    opts_.on_retry(fmt::format("request {} failed: {}; starting over from byte 0 in {:.3g} s",
                               requests_, why, std::chrono::duration<double>(delay).count()));
  }
  mode_ = ranges_unusable_ || connections_ == 1 ? Mode::kWhole : Mode::kDiscover;
  total_.reset();
  validator_.clear();
  plan_.Reset(mode_ == Mode::kWhole ? kUnbounded : kFirstPiece, now + delay);
  return Status::Ok();
}

}  // namespace

Result<DownloadStats> RunDownload(const FetchRequest& req, const FetchOptions& opts,
                                  PieceStore& store, const ProgressFn& progress,
                                  const CancelToken& cancel) {
  Download download(req, opts, store, progress, cancel);
  return download.Run();
}

}  // namespace byoi
