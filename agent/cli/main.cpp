// byoi-agent: installs a customer's own image on a bare-metal server from a rescue system.
// This file parses the command line (docs/cli.md), dispatches to one Run* function, and sets the
// heap policy (agent/base/heap.hpp) for a process that receives gigabytes through libcurl.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>

#include "agent/base/heap.hpp"
#include "agent/base/units.hpp"
#include "agent/cli/commands.hpp"
#include "agent/cli/options.hpp"

namespace {

// CLI11 validator for sizes such as "20G".
struct SizeValidator : public CLI::Validator {
  SizeValidator() {
    name_ = "SIZE";
    func_ = [](const std::string& s) {
      return byoi::ParseSize(s) ? std::string() : "not a size: " + s + " (e.g. 20G, 512M)";
    };
  }
};

// A flag for every option of the table (agent/cli/options.hpp) in `scopes`; the values given land
// in `given` by key, unchecked: the table's parsers check them once, whatever their source.
void AddOptionFlags(CLI::App* cmd, std::initializer_list<byoi::OptionSpec::Scope> scopes,
                    std::map<std::string, std::string>& given) {
  for (const byoi::OptionSpec& o : byoi::AgentOptions()) {
    if (std::find(scopes.begin(), scopes.end(), o.scope) == scopes.end()) continue;
    std::string key(o.key);
    CLI::Option* opt = nullptr;
    if (o.is_switch) {
      opt = cmd->add_flag_callback(
          byoi::FlagName(o), [&given, key] { given[key] = "true"; }, std::string(o.help));
    } else {
      opt = cmd->add_option_function<std::string>(
          byoi::FlagName(o), [&given, key](const std::string& v) { given[key] = v; },
          std::string(o.help));
      opt->type_name(std::string(o.metavar));
    }
    if (!o.group.empty()) opt->group(std::string(o.group));
  }
}

std::optional<uint64_t> OptionalSize(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return byoi::ParseSize(s);
}

}  // namespace

int main(int argc, char** argv) {
  byoi::SetHeapPolicy();  // before libcurl allocates its first receive buffer

  CLI::App app{"byoi-agent: install your own image on a bare-metal server from its rescue system"};
  app.set_version_flag("--version", std::string("byoi-agent ") + BYOI_VERSION);
  app.require_subcommand(1);

  byoi::DeployArgs deploy;
  auto* deploy_cmd = app.add_subcommand("deploy", "Run a whole job in the foreground");
  deploy_cmd->add_option("--manifest", deploy.manifest, "Manifest file, or - for stdin")
      ->required();
  deploy_cmd->add_flag("--dry-run", deploy.dry_run,
                       "Stop after download and verify; touch no disk");
  deploy_cmd->add_option("--status-file", deploy.status_file, "Keep the status JSON in this file");
  deploy_cmd->add_flag("--json", deploy.json, "Print the final status as JSON");
  deploy_cmd->add_option("--config", deploy.config,
                         "Take the job options (disk groups, proxy...) of this config file");
  AddOptionFlags(deploy_cmd, {byoi::OptionSpec::Scope::kJob}, deploy.options);

  byoi::DaemonArgs daemon;
  auto* daemon_cmd = app.add_subcommand("daemon", "Run the agent: HTTP API and/or backend polling");
  daemon_cmd->add_option("--config", daemon.config, "Config file");
  AddOptionFlags(daemon_cmd, {byoi::OptionSpec::Scope::kDaemon, byoi::OptionSpec::Scope::kJob},
                 daemon.options);
  daemon_cmd->get_option("--token-file")->excludes(daemon_cmd->get_option("--token"));

  byoi::ConvertArgs convert;
  std::string convert_memory;
  auto* convert_cmd =
      app.add_subcommand("convert", "Write an image's raw content to a file or device");
  convert_cmd->add_option("SOURCE", convert.source, "qcow2, raw, vmdk or ova image file")
      ->required();
  convert_cmd->add_option("TARGET", convert.target, "Block device or file")->required();
  convert_cmd->add_option("--type", convert.type, "Expected format")
      ->check(CLI::IsMember({"qcow2", "raw", "ova", "vmdk"}));
  convert_cmd->add_option("--memory-limit", convert_memory, "RAM budget for the image")
      ->check(SizeValidator());
  convert_cmd
      ->add_option("--write-mode", convert.write_mode,
                   "ram: hold the image in memory, verify, then write; stream: write while "
                   "reading, in bounded memory; auto: ram when the file fits the budget")
      ->check(CLI::IsMember({"auto", "ram", "stream"}));

  byoi::InspectArgs inspect;
  auto* inspect_cmd =
      app.add_subcommand("inspect", "Format, virtual size, partition table, ESP, boot loader");
  inspect_cmd->add_option("IMAGE", inspect.image, "Image file")->required();
  inspect_cmd->add_flag("--json", inspect.json, "Print JSON");

  byoi::DisksArgs disks;
  auto* disks_cmd = app.add_subcommand("disks", "Disks and their disk groups");
  disks_cmd->add_flag("--json", disks.json, "Print JSON");
  disks_cmd->add_option("--config", disks.config, "Config file with a disk group mapping");

  byoi::ValidateArgs validate;
  auto* validate_cmd =
      app.add_subcommand("validate", "Check a manifest, print the normalised form");
  validate_cmd->add_option("MANIFEST", validate.manifest, "Manifest file, or - for stdin")
      ->required();

  byoi::TorrentArgs torrent;
  auto* torrent_cmd =
      app.add_subcommand("torrent", "Write a .torrent for an image, its URL as the web seed");
  torrent_cmd->add_option("IMAGE", torrent.image, "Image file")->required();
  torrent_cmd->add_option("--web-seed", torrent.web_seed, "The image's http(s) URL")->required();
  torrent_cmd->add_option("--tracker", torrent.trackers, "Tracker announce URL (repeatable)");
  torrent_cmd->add_option("--output", torrent.output, "The .torrent to write (IMAGE.torrent)");
  torrent_cmd->add_option("--piece-length", torrent.piece_length, "Piece size (e.g. 1M)")
      ->check(SizeValidator());

  byoi::StatusArgs status;
  auto* status_cmd = app.add_subcommand("status", "Ask a running daemon for its status");
  status_cmd->add_option("--url", status.url, "Daemon URL")->capture_default_str();
  status_cmd->add_option("--token", status.token, "Bearer token");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? byoi::kExitOk : byoi::kExitUsage;
  }

  if (*deploy_cmd) return byoi::RunDeploy(deploy);
  if (*daemon_cmd) return byoi::RunDaemon(daemon);
  if (*convert_cmd) {
    convert.memory_limit = OptionalSize(convert_memory);
    return byoi::RunConvert(convert);
  }
  if (*inspect_cmd) return byoi::RunInspect(inspect);
  if (*disks_cmd) return byoi::RunDisks(disks);
  if (*validate_cmd) return byoi::RunValidate(validate);
  if (*status_cmd) return byoi::RunStatus(status);
  if (*torrent_cmd) return byoi::RunTorrent(torrent);
  return byoi::kExitUsage;
}
