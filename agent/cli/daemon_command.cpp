// `byoi-agent daemon` and `byoi-agent status` (docs/cli.md to docs/backend.md).
//
// The daemon, top to bottom: load the configuration, set up logging, restore the last job from the
// state file, wire the job's listeners (state file, metrics, console, backend poller), serve the
// HTTP API on one io_context until SIGTERM/SIGINT, then shut down in order: stop accepting, cancel
// a running job, flush status reports to the backend (bounded), stop.
#include <curl/curl.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/json.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "agent/api/agent_id.hpp"
#include "agent/api/api_handler.hpp"
#include "agent/api/console.hpp"
#include "agent/api/disk_listing.hpp"
#include "agent/api/final_status_gate.hpp"
#include "agent/api/http_client.hpp"
#include "agent/api/http_server.hpp"
#include "agent/api/metrics.hpp"
#include "agent/api/poller.hpp"
#include "agent/base/log.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/config.hpp"
#include "agent/job/job_control.hpp"
#include "agent/job/runner.hpp"
#include "agent/job/state_file.hpp"

namespace byoi {

namespace {

// How long a `done` job (a reboot follows) waits for the backend to take its final status, or,
// without a backend, for an API client to read it.
constexpr auto kFinalStatusWait = std::chrono::seconds(60);
// How long shutdown keeps trying to deliver queued status reports.
constexpr auto kShutdownFlush = std::chrono::seconds(5);

// The kernel command line the daemon reads; BYOI_KERNEL_CMDLINE replaces /proc/cmdline (tests, and
// operators trying a command line before booting with it).
std::string KernelCmdlinePath() {
  const char* path = std::getenv("BYOI_KERNEL_CMDLINE");
  return path ? path : "/proc/cmdline";
}

// Every API connection holds a descriptor; the rest of the agent (log, console, io_context, the
// job's disk, files and transfers) keeps this many for itself.
constexpr rlim_t kReservedFds = 32;

// The number of API connections the descriptor limit allows, at most `wanted`: raises the soft
// limit (often 1024; a rescue shell may set less) as far as the hard one allows, and lowers the
// connection limit when that is not enough, so that connections refused at the limit are accepted
// (and closed) rather than left queued by an accept() out of descriptors.
size_t FitConnectionLimit(size_t wanted) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return wanted;
  rlim_t needed = static_cast<rlim_t>(wanted) + kReservedFds;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max == RLIM_INFINITY ? needed : std::min(needed, limit.rlim_max);
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= needed) return wanted;
  size_t fit = limit.rlim_cur > 2 * kReservedFds ? limit.rlim_cur - kReservedFds
                                                 : std::max<size_t>(limit.rlim_cur / 2, 1);
  spdlog::warn("http: the descriptor limit is {}: serving at most {} connections instead of {}",
               limit.rlim_cur, fit, wanted);
  return fit;
}

void RestoreLastJob(StateFile& state, JobControl& jobs) {
  Result<std::optional<JobRecord>> last = state.Load();
  if (!last.ok()) {
    spdlog::warn("state file: {}; starting without a job", last.status().ToString());
    return;
  }
  if (!*last) return;
  const JobRecord& record = **last;
  spdlog::info("state file: last job {}: {}", JobStateName(record.status.state),
               record.status.message);
  jobs.Restore(std::move(**last));
}

}  // namespace

int RunDaemon(const DaemonArgs& args) {
  ConfigSources sources;
  sources.flags = args.options;
  sources.config_file = args.config;
  sources.kernel_cmdline = KernelCmdlinePath();
  Result<DaemonConfig> loaded = LoadDaemonConfig(sources);
  if (!loaded.ok()) {
    std::fprintf(stderr, "byoi-agent daemon: %s\n", loaded.status().ToString().c_str());
    return kExitUsage;
  }
  const DaemonConfig& config = *loaded;
  if (Status s = SetupLogging(config.log_level); !s.ok()) {
    std::fprintf(stderr, "byoi-agent daemon: %s\n", s.ToString().c_str());
    return kExitUsage;
  }
  spdlog::info("byoi-agent {} starting", BYOI_VERSION);
  for (const std::string& w : config.warnings) spdlog::warn("config: {}", w);
  for (const auto& [key, where] : config.sources) {
    spdlog::debug("config: {} ({})", key, where);  // names, no values
  }

  std::signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);  // before any thread starts

  StateFile state(config.state_file);
  Metrics metrics;
  std::unique_ptr<ConsoleDisplay> console;
  if (config.console != "none") {
    Result<std::unique_ptr<ConsoleDisplay>> opened = ConsoleDisplay::Open(config.console);
    if (opened.ok()) {
      console = std::move(*opened);
    } else {
      spdlog::warn("console: {}; no progress display", opened.status().ToString());
    }
  }

  auto jobs = std::make_unique<JobControl>(RunJob, RunOptions{config.job, false});
  std::unique_ptr<Poller> poller;
  if (!config.backend_url.empty()) {
    Result<std::string> agent_id = ResolveAgentId(config.agent_id);
    if (!agent_id.ok()) {
      spdlog::error("{}", agent_id.status().ToString());
      return kExitUsage;
    }
    PollerOptions options;
    options.backend_url = config.backend_url;
    options.agent_id = *agent_id;
    options.token = config.token;
    options.ca_bundle = config.job.ca_bundle;
    options.poll_interval = config.poll_interval;
    options.final_wait = config.job.reboot == RebootMode::kNone
                             ? std::chrono::milliseconds(0)
                             : std::chrono::milliseconds(kFinalStatusWait);
    poller = std::make_unique<Poller>(*jobs, std::move(options));
  }

  // Listener order matters: the state file first (restart safety), the poller last (it may hold
  // the runner's thread until the backend has the final status).
  jobs->Subscribe([&state](const JobEvent& e) { state.OnEvent(e); });
  jobs->Subscribe([&metrics](const JobEvent& e) { metrics.OnEvent(e); });
  if (console) jobs->Subscribe([c = console.get()](const JobEvent& e) { c->OnEvent(e); });
  if (poller) jobs->Subscribe([p = poller.get()](const JobEvent& e) { p->OnEvent(e); });
  // Without a backend, the client of the API must get to read `done` before the reboot.
  std::unique_ptr<FinalStatusGate> gate;
  if (!poller && config.listen != "off" && config.job.reboot != RebootMode::kNone) {
    gate = std::make_unique<FinalStatusGate>(kFinalStatusWait);
    jobs->Subscribe([g = gate.get()](const JobEvent& e) { g->OnEvent(e); });
  }
  RestoreLastJob(state, *jobs);

  boost::asio::io_context ioc;
  ApiHandler handler(
      *jobs, metrics, [job = config.job] { return ListDisks(job.disk, job.disk_groups); },
      config.token);
  if (gate) handler.OnFinalStatusServed([g = gate.get()] { g->Served(); });
  std::unique_ptr<HttpServer> server;
  if (config.listen != "off") {
    HttpServerOptions options;
    options.listen = *ParseListenAddress(config.listen);  // validated by LoadDaemonConfig
    options.tls_cert = config.tls_cert;
    options.tls_key = config.tls_key;
    options.max_connections = FitConnectionLimit(options.max_connections);
    options.max_connections_per_address =
        std::min(options.max_connections_per_address, options.max_connections);
    options.header_check = [&handler, &metrics](const HttpRequest& header, std::string_view peer) {
      HeaderVerdict verdict = handler.CheckHeader(header, peer);
      if (verdict.refusal) metrics.CountRequest(401);
      return verdict;
    };
    Result<std::unique_ptr<HttpServer>> started = HttpServer::Start(
        ioc, [&handler](const HttpRequest& request) { return handler.Handle(request); }, options);
    if (!started.ok()) {
      spdlog::error("http: {}", started.status().ToString());
      if (poller) poller->Stop(std::chrono::milliseconds(0));
      return started.status().code() == Code::kInvalid ? kExitUsage : kExitJobError;
    }
    server = std::move(*started);
    spdlog::info("http: listening on {}:{}{}", options.listen.address, server->port(),
                 options.tls_cert.empty() ? "" : " (TLS)");
  }
  if (poller) poller->Start();

  boost::asio::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signal);
    if (server) server->Stop();
  });
  ioc.run();

  // Shutdown: the API is closed (nobody can read a final status any more: let the job go on);
  // stop the job (its status says so), tell the backend, stop.
  if (gate) gate->Served();
  if (jobs->Cancel() == JobControl::CancelOutcome::kStopping) {
    spdlog::warn("the job has not stopped within 2 s; waiting for it");
  }
  jobs.reset();  // joins the job's thread: no listener runs after this
  if (poller) poller->Stop(kShutdownFlush);
  spdlog::info("stopped");
  return kExitOk;
}

int RunStatus(const StatusArgs& args) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  HttpClient client;
  std::string url = args.url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  Result<HttpResult> answer =
      client.Send("GET", url + "/v1/bringYourOwnImage", "", args.token, std::chrono::seconds(10));
  if (!answer.ok()) {
    std::fprintf(stderr, "byoi-agent status: %s\n", answer.status().ToString().c_str());
    return kExitJobError;
  }
  if (answer->status == 404) {
    std::printf("no deployment\n");
    return kExitOk;
  }
  if (answer->status != 200) {
    std::fprintf(stderr, "byoi-agent status: the agent answered HTTP %ld\n", answer->status);
    return kExitJobError;
  }
  std::fwrite(answer->body.data(), 1, answer->body.size(), stdout);
  return kExitOk;
}

}  // namespace byoi
