#include "agent/api/api_handler.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <strings.h>

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <boost/json.hpp>

#include "agent/job/manifest.hpp"

namespace byoi {

namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

constexpr std::string_view kDeploymentPath = "/v1/bringYourOwnImage";
// At most one line about failed logins per this period: an attacker can retry at will.
constexpr auto kUnauthorizedLogPeriod = std::chrono::seconds(10);

std::string_view PathOf(const HttpRequest& request) {
  std::string_view target = request.target();
  return target.substr(0, target.find('?'));
}

// What a log line may show of a request's path: never the query string, at most 200 bytes.
std::string_view LoggedPath(const HttpRequest& request) {
  std::string_view path = PathOf(request);
  return path.substr(0, std::min<size_t>(path.size(), 200));
}

HttpResponse Respond(unsigned status, std::string body, std::string_view content_type,
                     unsigned version) {
  HttpResponse res{static_cast<http::status>(status), version};
  res.set(http::field::server, "byoi-agent");
  if (!body.empty() || status != 204) res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  return res;
}

HttpResponse JsonResponse(unsigned status, const json::value& body, unsigned version) {
  return Respond(status, json::serialize(body) + "\n", "application/json", version);
}

HttpResponse MethodNotAllowed(std::string_view allow, unsigned version) {
  HttpResponse res = JsonError(405, "Method not allowed.", version);
  res.set(http::field::allow, allow);
  return res;
}

}  // namespace

bool BearerTokenMatches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() < kScheme.size() ||
      strncasecmp(authorization.data(), kScheme.data(), kScheme.size()) != 0) {
    return false;
  }
  std::string_view given = authorization.substr(kScheme.size());
  // Hashing first makes the comparison independent of where the strings differ and of their
  // lengths; CRYPTO_memcmp does not stop at the first difference.
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(given.data()), given.size(), a);
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), b);
  return !token.empty() && CRYPTO_memcmp(a, b, sizeof a) == 0;
}

HttpResponse JsonError(unsigned status, std::string_view message, unsigned version) {
  return JsonResponse(status, json::object{{"message", message}}, version);
}

ApiHandler::ApiHandler(JobControl& jobs, Metrics& metrics, DisksFn disks, std::string token)
    : jobs_(jobs),
      metrics_(metrics),
      disks_(std::move(disks)),
      token_(std::move(token)),
      unauthorized_log_(kUnauthorizedLogPeriod) {}

HttpResponse ApiHandler::Handle(const HttpRequest& request) const {
  HttpResponse res = Route(request);
  res.keep_alive(request.keep_alive());
  res.prepare_payload();
  // RFC 9110 §9.3.2: the answer to HEAD is the GET's header, Content-Length included, without the
  // content.
  if (request.method() == http::verb::head) res.body().clear();
  metrics_.CountRequest(res.result_int());
  // Method, path and code only: headers (the token, image credentials), query strings and bodies
  // are never logged.
  spdlog::debug("http: {} {} -> {}", std::string_view(request.method_string()), LoggedPath(request),
                res.result_int());
  return res;
}

HeaderVerdict ApiHandler::CheckHeader(const HttpRequest& header, std::string_view peer) const {
  auto auth = header.find(http::field::authorization);
  if (auth != header.end() && BearerTokenMatches(auth->value(), token_))
    return {std::nullopt, true};
  if (PathOf(header) == "/healthz") return {std::nullopt, false};
  return {Refuse(header, peer, auth != header.end()), false};
}

std::optional<HttpResponse> ApiHandler::Unauthorized(const HttpRequest& request,
                                                     std::string_view peer) const {
  if (PathOf(request) == "/healthz") return std::nullopt;
  auto auth = request.find(http::field::authorization);
  if (auth != request.end() && BearerTokenMatches(auth->value(), token_)) return std::nullopt;
  return Refuse(request, peer, auth != request.end());
}

HttpResponse ApiHandler::Refuse(const HttpRequest& request, std::string_view peer,
                                bool gave_token) const {
  metrics_.CountUnauthorized();
  if (uint64_t n = unauthorized_log_.Record()) {
    // The address, method and path only: never what the client gave as a token.
    spdlog::warn("api: unauthorized request from {}: {} {} ({}){}",
                 peer.empty() ? "an unknown address" : peer,
                 std::string_view(request.method_string()), LoggedPath(request),
                 gave_token ? "wrong token" : "no token",
                 n > 1 ? fmt::format("; {} more since the last such line", n - 1) : "");
  }
  HttpResponse res = Respond(401, "", "text/plain", request.version());
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

HttpResponse ApiHandler::Route(const HttpRequest& request) const {
  const unsigned v = request.version();
  std::string_view path = PathOf(request);

  if (path == "/healthz") {
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      return MethodNotAllowed("GET, HEAD", v);
    }
    return Respond(200, "ok\n", "text/plain", v);
  }

  if (std::optional<HttpResponse> refused = Unauthorized(request)) return std::move(*refused);

  if (path == kDeploymentPath) return Deployment(request);
  if (path == "/v1/disks") {
    if (request.method() != http::verb::get) return MethodNotAllowed("GET", v);
    Result<json::value> disks = disks_();
    if (!disks.ok()) {
      spdlog::error("disk inventory: {}", disks.status().ToString());
      return JsonError(500, "Could not list disks.", v);
    }
    return JsonResponse(200, *disks, v);
  }
  if (path == "/metrics") {
    if (request.method() != http::verb::get) return MethodNotAllowed("GET", v);
    return Respond(200, metrics_.Render(), "text/plain; version=0.0.4; charset=utf-8", v);
  }
  return JsonError(404, "Not found.", v);
}

HttpResponse ApiHandler::Deployment(const HttpRequest& request) const {
  const unsigned v = request.version();
  switch (request.method()) {
    case http::verb::post: {
      Result<Manifest> manifest = ParseManifest(request.body());
      if (!manifest.ok()) {
        const Status& s = manifest.status();
        spdlog::info("deployment refused: {}", s.ToString());
        return JsonError(400, s.message().empty() ? s.detail() : s.message(), v);
      }
      std::string summary = json::serialize(ManifestToJson(*manifest));  // secrets redacted
      Result<JobStatus> started = jobs_.Submit(std::move(*manifest));
      if (!started.ok()) return JsonError(409, started.status().message(), v);
      spdlog::info("deployment accepted over the API: {}", summary);
      return JsonResponse(202, StatusToJson(*started), v);
    }
    case http::verb::get: {
      std::optional<JobRecord> job = jobs_.Snapshot();
      if (!job) return JsonError(404, "No deployment.", v);
      HttpResponse res = JsonResponse(200, StatusToJson(job->status), v);
      if (job->status.state != JobState::kDoing && final_served_) final_served_();
      return res;
    }
    case http::verb::delete_: {
      switch (jobs_.Discard()) {
        case JobControl::CancelOutcome::kStopped:
          spdlog::info("deployment cancelled over the API");
          return Respond(204, "", "", v);
        case JobControl::CancelOutcome::kStopping: {
          std::optional<JobRecord> job = jobs_.Snapshot();
          if (!job) return Respond(204, "", "", v);  // it stopped (and was cleared) just now
          spdlog::warn(
              "deployment cancelled over the API; it has not stopped yet and is cleared when it "
              "does");
          return JsonResponse(202, StatusToJson(job->status), v);
        }
        case JobControl::CancelOutcome::kNotRunning:
          return Respond(204, "", "", v);
      }
      return JsonError(500, "Internal error.", v);
    }
    default:
      return MethodNotAllowed("GET, POST, DELETE", v);
  }
}

}  // namespace byoi
