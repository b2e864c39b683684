// byoi-agent: installs a customer's own image on a bare-metal server from a rescue system.
// This file only parses the command line (docs/cli.md) and dispatches to one Run* function.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "agent/base/units.hpp"
#include "agent/cli/commands.hpp"

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

void AddJobOptions(CLI::App* cmd, byoi::JobOptions& job, std::string& memory_limit) {
  cmd->add_option("--disk", job.disk,
                  "Target block device or disk image file (overrides diskGroupId)");
  cmd->add_option("--efivars", job.efivars, "efivarfs directory; absent means legacy BIOS")
      ->capture_default_str();
  cmd->add_option("--reboot", job.reboot, "What to do when done")
      ->check(CLI::IsMember({"none", "reboot", "poweroff", "kexec"}))
      ->capture_default_str();
  cmd->add_option("--memory-limit", memory_limit, "RAM budget for the image (default: RAM - 3 GiB)")
      ->check(SizeValidator());
  cmd->add_option("--efi-boot-order", job.efi_boot_order, "Where the new boot entry goes")
      ->check(CLI::IsMember({"first", "after-network", "bootnext", "none"}))
      ->capture_default_str();
  cmd->add_option("--ca-bundle", job.ca_bundle, "PEM file of CA certificates for https image URLs")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--insecure", job.insecure, "Do not verify TLS certificates (labs only)");
  cmd->add_option("--stall-timeout", job.stall_timeout, "Seconds without data before a retry")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group("Download tuning");
  cmd->add_option("--retry-delay", job.retry_delay, "Seconds before the first retry (doubles)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Download tuning");
  cmd->add_option("--download-attempts", job.download_attempts,
                  "Attempts in a row without progress before giving up")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str()
      ->group("Download tuning");
  cmd->add_option("--connections", job.connections,
                  "Connections at once when the server answers Range requests")
      ->check(CLI::Range(1, 16))
      ->capture_default_str()
      ->group("Download tuning");
}

std::optional<uint64_t> OptionalSize(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return byoi::ParseSize(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"byoi-agent: install your own image on a bare-metal server from its rescue system"};
  app.set_version_flag("--version", std::string("byoi-agent ") + BYOI_VERSION);
  app.require_subcommand(1);

  byoi::DeployArgs deploy;
  std::string deploy_memory;
  auto* deploy_cmd = app.add_subcommand("deploy", "Run a whole job in the foreground");
  deploy_cmd->add_option("--manifest", deploy.manifest, "Manifest file, or - for stdin")
      ->required();
  deploy_cmd->add_flag("--dry-run", deploy.dry_run,
                       "Stop after download and verify; touch no disk");
  deploy_cmd->add_option("--status-file", deploy.status_file, "Keep the status JSON in this file");
  deploy_cmd->add_flag("--json", deploy.json, "Print the final status as JSON");
  AddJobOptions(deploy_cmd, deploy.job, deploy_memory);

  byoi::DaemonArgs daemon;
  auto* daemon_cmd = app.add_subcommand("daemon", "Run the agent: HTTP API and/or backend polling");
  daemon_cmd->add_option("--config", daemon.config, "Config file");
  daemon_cmd->add_option("--listen", daemon.listen,
                         "ADDR:PORT of the HTTP API (default 0.0.0.0:9999)");
  auto* token_opt = daemon_cmd->add_option(
      "--token", daemon.token, "Bearer token the API requires (visible to every local user)");
  daemon_cmd
      ->add_option("--token-file", daemon.token_file,
                   "File holding the bearer token (mode 0600 or 0400)")
      ->excludes(token_opt);
  daemon_cmd->add_option("--tls-cert", daemon.tls_cert, "TLS certificate (PEM)");
  daemon_cmd->add_option("--tls-key", daemon.tls_key, "TLS private key (PEM)");
  daemon_cmd->add_option("--backend-url", daemon.backend_url, "Provisioning backend to poll");
  daemon_cmd->add_option("--agent-id", daemon.agent_id, "Agent id (default: DMI UUID, else MAC)");
  daemon_cmd->add_option("--disk", daemon.disk, "Target block device (overrides diskGroupId)");
  daemon_cmd->add_option("--efivars", daemon.efivars, "efivarfs directory");
  daemon_cmd->add_option("--state-file", daemon.state_file,
                         "State file (default /run/byoi-agent/state.json)");
  daemon_cmd->add_option("--reboot", daemon.reboot, "none|reboot|poweroff|kexec (default reboot)")
      ->check(CLI::IsMember({"none", "reboot", "poweroff", "kexec"}));
  daemon_cmd->add_option("--memory-limit", daemon.memory_limit, "RAM budget for the image")
      ->check(SizeValidator());
  daemon_cmd
      ->add_option("--efi-boot-order", daemon.efi_boot_order, "first|after-network|bootnext|none")
      ->check(CLI::IsMember({"first", "after-network", "bootnext", "none"}));
  daemon_cmd->add_option("--log-level", daemon.log_level, "trace|debug|info|warn|error");
  daemon_cmd->add_option("--ca-bundle", daemon.ca_bundle, "PEM CA certificates for https images");
  bool daemon_insecure = false;
  daemon_cmd->add_flag("--insecure", daemon_insecure, "Do not verify TLS certificates (labs only)");
  daemon_cmd->add_option("--stall-timeout", daemon.stall_timeout, "Seconds without data")
      ->group("Download tuning");
  daemon_cmd->add_option("--retry-delay", daemon.retry_delay, "Seconds before the first retry")
      ->group("Download tuning");
  daemon_cmd
      ->add_option("--download-attempts", daemon.download_attempts,
                   "Attempts in a row without progress")
      ->group("Download tuning");
  daemon_cmd
      ->add_option("--connections", daemon.connections,
                   "Connections at once when the server answers Range requests")
      ->group("Download tuning");

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

  if (*deploy_cmd) {
    deploy.job.memory_limit = OptionalSize(deploy_memory);
    return byoi::RunDeploy(deploy);
  }
  if (*daemon_cmd) {
    if (daemon_insecure) daemon.insecure = "true";
    return byoi::RunDaemon(daemon);
  }
  if (*convert_cmd) {
    convert.memory_limit = OptionalSize(convert_memory);
    return byoi::RunConvert(convert);
  }
  if (*inspect_cmd) return byoi::RunInspect(inspect);
  if (*disks_cmd) return byoi::RunDisks(disks);
  if (*validate_cmd) return byoi::RunValidate(validate);
  if (*status_cmd) return byoi::RunStatus(status);
  return byoi::kExitUsage;
}
