#include "agent/cli/options.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <filesystem>

#include "agent/api/http_server.hpp"  // ParseListenAddress
#include "agent/base/units.hpp"
#include "agent/disk/inventory.hpp"  // ParseGroupMapping
#include "agent/fetch/proxy.hpp"     // CheckProxyUrl

namespace byoi {
namespace {

using Scope = OptionSpec::Scope;

Status Bad(std::string why) { return Status::Error(Code::kInvalid, std::move(why)); }

bool OneOf(std::string_view value, std::initializer_list<std::string_view> allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

// A decimal number of seconds within [min, max], as milliseconds.
std::optional<std::chrono::milliseconds> ParseSeconds(std::string_view v, double min, double max) {
  double seconds = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
  if (ec != std::errc() || end != v.data() + v.size() || !(seconds >= min) || seconds > max) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000 + 0.5));
}

// A whole number within [min, max].
std::optional<int> ParseWhole(std::string_view v, int min, int max) {
  int n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < min || n > max) return std::nullopt;
  return n;
}

Status SetSeconds(std::string_view v, double min, double max, std::chrono::milliseconds& out) {
  std::optional<std::chrono::milliseconds> ms = ParseSeconds(v, min, max);
  if (!ms) return Bad(fmt::format("must be a number of seconds between {} and {}", min, max));
  out = *ms;
  return Status::Ok();
}

Status SetWhole(std::string_view v, int min, int max, int& out) {
  std::optional<int> n = ParseWhole(v, min, max);
  if (!n) return Bad(fmt::format("must be a whole number between {} and {}", min, max));
  out = *n;
  return Status::Ok();
}

// A switch: true, 1, yes or (a bare byoi. word on the kernel command line) nothing; false, 0, no.
Status SetSwitch(std::string_view v, bool& out) {
  if (!OneOf(v, {"", "true", "1", "yes", "false", "0", "no"})) return Bad("must be true or false");
  out = OneOf(v, {"", "true", "1", "yes"});
  return Status::Ok();
}

// HOST:PORT[,HOST:PORT...]: a name or IPv4 address, or an IPv6 address in brackets, and a port
// from 1 to 65535 (libtorrent's dht_bootstrap_nodes).
bool ValidNodeList(std::string_view v) {
  size_t begin = 0;
  for (;;) {
    const size_t comma = std::min(v.find(',', begin), v.size());
    const std::string_view node = v.substr(begin, comma - begin);
    const size_t colon = node.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    std::string_view host = node.substr(0, colon);
    if (host.front() == '[') {
      if (host.size() < 3 || host.back() != ']') return false;
      host = host.substr(1, host.size() - 2);
      if (host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string_view::npos)
        return false;
    } else if (host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "0123456789.-") != std::string_view::npos) {
      return false;
    }
    if (!ParseWhole(node.substr(colon + 1), 1, 65535)) return false;
    if (comma == v.size()) return true;
    begin = comma + 1;
  }
}

Status SetText(std::string_view v, std::string& out) {
  out = std::string(v);
  return Status::Ok();
}

const OptionSpec kOptions[] = {
    // How a job runs: deploy and daemon.
    {"disk", Scope::kJob, "Target block device or disk image file (overrides diskGroupId)", "",
     false, "DEV", [](std::string_view v, DaemonConfig& c) { return SetText(v, c.job.disk); }},
    {"efivars", Scope::kJob,
     "efivarfs directory; when it does not exist the machine is legacy BIOS "
     "(default /sys/firmware/efi/efivars)",
     "", false, "DIR",
     [](std::string_view v, DaemonConfig& c) {
       if (v.empty()) return Bad("must not be empty");
       return SetText(v, c.job.efivars);
     }},
    {"reboot", Scope::kJob,
     "After a successful job: none, reboot, poweroff or kexec (default: none for deploy, reboot "
     "for daemon)",
     "", false, "MODE",
     [](std::string_view v, DaemonConfig& c) {
       Result<RebootMode> mode = ParseRebootMode(v);
       if (!mode.ok()) return Bad("must be none, reboot, poweroff or kexec");
       c.job.reboot = *mode;
       return Status::Ok();
     }},
    {"memory_limit", Scope::kJob, "RAM budget for the image, e.g. 20G (default: RAM - 3 GiB)", "",
     false, "SIZE",
     [](std::string_view v, DaemonConfig& c) {
       std::optional<uint64_t> size = ParseSize(std::string(v));
       if (!size) return Bad("not a size (e.g. 20G, 512M)");
       c.job.memory_limit = size;
       return Status::Ok();
     }},
    {"efi_boot_order", Scope::kJob,
     "Where the new UEFI boot entry goes: first, after-network, bootnext or none (default first)",
     "", false, "POLICY",
     [](std::string_view v, DaemonConfig& c) {
       Result<BootOrderPolicy> policy = ParseBootOrderPolicy(v);
       if (!policy.ok()) return Bad("must be first, after-network, bootnext or none");
       c.job.efi_boot_order = *policy;
       return Status::Ok();
     }},
    {"ca_bundle", Scope::kJob,
     "PEM CA certificates for https image servers and the backend (default: the system's)", "",
     false, "FILE",
     [](std::string_view v, DaemonConfig& c) {
       std::error_code ec;
       if (!v.empty() && !std::filesystem::is_regular_file(std::string(v), ec)) {
         return Bad("no such file: " + std::string(v));
       }
       return SetText(v, c.job.ca_bundle);
     }},
    {"proxy", Scope::kJob,
     "HTTP(S) proxy for image downloads (a provider's cache): http://HOST:PORT or "
     "https://HOST:PORT, optionally with USER:PASSWORD@, never shown (default: the environment's "
     "https_proxy/http_proxy/no_proxy, else none)",
     "", false, "URL",
     [](std::string_view v, DaemonConfig& c) {
       // The reason never holds the value: it may carry a password.
       if (!v.empty()) BYOI_RETURN_IF_ERROR(CheckProxyUrl(v));
       return SetText(v, c.job.proxy);
     }},
    {"insecure", Scope::kJob, "Do not verify image servers' TLS certificates (labs only)", "", true,
     "", [](std::string_view v, DaemonConfig& c) { return SetSwitch(v, c.job.insecure); }},
    {"stall_timeout", Scope::kJob,
     "Seconds without a byte before an attempt is retried (default 60)", "Download tuning", false,
     "SECONDS",
     [](std::string_view v, DaemonConfig& c) {
       return SetSeconds(v, 0.1, 3600, c.job.stall_timeout);
     }},
    {"retry_delay", Scope::kJob, "Seconds before the second attempt, doubling (default 1)",
     "Download tuning", false, "SECONDS",
     [](std::string_view v, DaemonConfig& c) { return SetSeconds(v, 0, 300, c.job.retry_delay); }},
    {"download_attempts", Scope::kJob,
     "Attempts in a row without a new byte before giving up (default 10)", "Download tuning", false,
     "N",
     [](std::string_view v, DaemonConfig& c) {
       return SetWhole(v, 1, 1000, c.job.download_attempts);
     }},
    {"connections", Scope::kJob,
     "Connections at once when the server answers Range requests (default 4)", "Download tuning",
     false, "N",
     [](std::string_view v, DaemonConfig& c) { return SetWhole(v, 1, 16, c.job.connections); }},

    {"write_mode", Scope::kJob,
     "How the image reaches the disk: ram (whole in RAM, verified first), stream (written while "
     "it downloads) or auto: ram when it fits the RAM budget (default auto)",
     "", false, "MODE",
     [](std::string_view v, DaemonConfig& c) {
       std::optional<WriteMode> mode = ParseWriteMode(v);
       if (!mode) return Bad("must be auto, ram or stream");
       c.job.write_mode = *mode;
       return Status::Ok();
     }},
    {"verify_written", Scope::kJob,
     "Read the disk back after writing and compare it with what was written", "", true, "",
     [](std::string_view v, DaemonConfig& c) { return SetSwitch(v, c.job.verify_written); }},

    {"seed_time", Scope::kJob,
     "Seconds a job whose manifest names a torrent keeps seeding after it is done, before the "
     "reboot (default 60)",
     "Swarm", false, "SECONDS",
     [](std::string_view v, DaemonConfig& c) { return SetSeconds(v, 0, 86400, c.job.seed_time); }},
    {"swarm_listen", Scope::kJob,
     "Where the swarm listens, libtorrent's listen_interfaces: ADDR:PORT, comma-separated, port 0 "
     "for any (default 0.0.0.0:0,[::]:0; Local Service Discovery runs on these networks)",
     "Swarm", false, "ADDRS",
     [](std::string_view v, DaemonConfig& c) {
       if (v.empty() || v.find_first_of(" \t\r\n") != std::string_view::npos) {
         return Bad("expected ADDR:PORT[,ADDR:PORT...] such as 10.0.0.5:6881");
       }
       return SetText(v, c.job.swarm_listen);
     }},
    {"swarm_dht", Scope::kJob,
     "The rack's private DHT: its bootstrap nodes, HOST:PORT, comma-separated, for magnet links "
     "and torrents without a tracker (default: no DHT; never the public one)",
     "Swarm", false, "NODES",
     [](std::string_view v, DaemonConfig& c) {
       if (!v.empty() && !ValidNodeList(v)) {
         return Bad("expected HOST:PORT[,HOST:PORT...] such as 10.0.0.2:6881");
       }
       return SetText(v, c.job.swarm_dht);
     }},
    {"upload_rate", Scope::kJob,
     "Bytes per second the swarm may upload to the rack's other agents, e.g. 50M; 0: no limit "
     "(default 0)",
     "Swarm", false, "SIZE",
     [](std::string_view v, DaemonConfig& c) {
       std::optional<uint64_t> rate = ParseSize(v);
       if (!rate || *rate > (1ull << 31) - 1) return Bad("must be a size below 2G, e.g. 50M");
       c.job.upload_rate = *rate;
       return Status::Ok();
     }},

    // The daemon's own.
    {"listen", Scope::kDaemon, "ADDR:PORT of the HTTP API, or off (default 0.0.0.0:9999)", "",
     false, "ADDR:PORT",
     [](std::string_view v, DaemonConfig& c) {
       if (v != "off" && !ParseListenAddress(v).ok()) {
         return Bad("expected ADDR:PORT such as 0.0.0.0:9999 or [::]:9999, or off");
       }
       return SetText(v, c.listen);
     }},
    {"token", Scope::kDaemon,
     "Bearer token the API requires, at least 16 characters (visible to every local user: "
     "prefer --token-file)",
     "", false, "TOKEN", [](std::string_view v, DaemonConfig& c) { return SetText(v, c.token); }},
    {"token_file", Scope::kDaemon, "File holding the bearer token (mode 0600 or 0400)", "", false,
     "FILE", [](std::string_view v, DaemonConfig& c) { return SetText(v, c.token_file); }},
    {"tls_cert", Scope::kDaemon, "TLS certificate chain of the API (PEM)", "", false, "FILE",
     [](std::string_view v, DaemonConfig& c) { return SetText(v, c.tls_cert); }},
    {"tls_key", Scope::kDaemon, "TLS private key of the API (PEM)", "", false, "FILE",
     [](std::string_view v, DaemonConfig& c) { return SetText(v, c.tls_key); }},
    {"backend_url", Scope::kDaemon, "Provisioning backend to poll for jobs", "", false, "URL",
     [](std::string_view v, DaemonConfig& c) {
       std::string url(v);
       while (!url.empty() && url.back() == '/') url.pop_back();
       if (!url.empty() && url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
         return Bad("must start with http:// or https://");
       }
       return SetText(url, c.backend_url);
     }},
    {"agent_id", Scope::kDaemon,
     "The agent's id at the backend (default: DMI product UUID, else first permanent MAC)", "",
     false, "ID", [](std::string_view v, DaemonConfig& c) { return SetText(v, c.agent_id); }},
    {"state_file", Scope::kDaemon,
     "The job's status across restarts (default /run/byoi-agent/state.json)", "", false, "FILE",
     [](std::string_view v, DaemonConfig& c) {
       if (v.empty()) return Bad("must not be empty");
       return SetText(v, c.state_file);
     }},
    {"log_level", Scope::kDaemon, "trace, debug, info, warn, error or off (default info)", "",
     false, "LEVEL",
     [](std::string_view v, DaemonConfig& c) {
       if (!OneOf(v, {"trace", "debug", "info", "warn", "error", "off"})) {
         return Bad("must be trace, debug, info, warn, error or off");
       }
       return SetText(v, c.log_level);
     }},

    // Set rarely: the config file and the kernel command line only.
    {"poll_interval", Scope::kConfigOnly, "Seconds between backend polls (default 5)", "", false,
     "SECONDS",
     [](std::string_view v, DaemonConfig& c) {
       return SetSeconds(v, 0.05, 3600, c.poll_interval);
     }},
    {"console", Scope::kConfigOnly, "Where progress is drawn, or none (default /dev/console)", "",
     false, "DEV",
     [](std::string_view v, DaemonConfig& c) {
       return SetText(v.empty() ? std::string_view("none") : v, c.console);
     }},
    {"disk_groups", Scope::kConfigOnly, "Explicit disk groups, e.g. 1=sda,sdb 2=nvme0n1", "", false,
     "GROUPS",
     [](std::string_view v, DaemonConfig& c) {
       if (Result<std::vector<GroupMapping>> m = ParseGroupMapping(std::string(v)); !m.ok()) {
         return Bad(m.status().detail() + " (expected e.g. 1=sda,sdb 2=nvme0n1)");
       }
       return SetText(v, c.job.disk_groups);
     }},
};

std::string NormaliseKey(std::string_view key) {
  std::string out(key);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

}  // namespace

std::span<const OptionSpec> AgentOptions() { return kOptions; }

const OptionSpec* FindOption(std::string_view key) {
  const std::string k = NormaliseKey(key);
  for (const OptionSpec& o : kOptions) {
    if (o.key == k) return &o;
  }
  return nullptr;
}

std::string FlagName(const OptionSpec& option) {
  std::string flag = "--" + std::string(option.key);
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

}  // namespace byoi
