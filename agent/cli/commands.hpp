// The subcommands of `byoi-agent` (docs/cli.md). main.cpp parses the command line into these
// option structs and calls one function; each returns the process exit code: 0 done, 1 job error,
// 2 usage.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace byoi {

inline constexpr int kExitOk = 0;
inline constexpr int kExitJobError = 1;
inline constexpr int kExitUsage = 2;

struct DeployArgs {
  std::string manifest;     // path, or "-" for standard input
  bool dry_run = false;     // stop after verify; touch no disk
  std::string status_file;  // keep the status JSON here while running
  bool json = false;        // print the final status as JSON on stdout
  // --config FILE: the job options of a daemon's config file (disk_groups, proxy, ...) under the
  // command line's; none when empty.
  std::string config;
  // The job options given on the command line, by key (agent/cli/options.hpp), unchecked.
  std::map<std::string, std::string> options;
};

struct DaemonArgs {
  std::string config;  // --config FILE
  // Every other daemon option given on the command line, by key (agent/cli/options.hpp),
  // unchecked; unset ones come from the kernel command line (byoi.<key>=) and the config file.
  std::map<std::string, std::string> options;
};

struct ConvertArgs {
  std::string source;
  std::string target;
  std::string type;  // "", "qcow2" or "raw": when given, must match the detected format
  std::optional<uint64_t> memory_limit;
  // "ram" (the file is held in memory, verified whole, then written), "stream" (written while it
  // is read, with bounded memory), "auto" (ram when the file fits the memory budget).
  std::string write_mode = "auto";
};

struct InspectArgs {
  std::string image;
  bool json = false;
};

struct DisksArgs {
  bool json = false;
  std::string config;  // for an explicit disk group mapping
};

struct ValidateArgs {
  std::string manifest;  // path, or "-"
};

struct TorrentArgs {
  std::string image;                  // the image file to describe
  std::string web_seed;               // --web-seed URL: where the image is published
  std::vector<std::string> trackers;  // --tracker URL, repeatable
  std::string output;                 // --output FILE; IMAGE.torrent when empty
  std::string piece_length;           // --piece-length SIZE; empty: libtorrent's choice
};

struct StatusArgs {
  std::string url = "http://127.0.0.1:9999";
  std::string token;
};

int RunDeploy(const DeployArgs& args);
int RunDaemon(const DaemonArgs& args);
int RunConvert(const ConvertArgs& args);
int RunInspect(const InspectArgs& args);
int RunDisks(const DisksArgs& args);
int RunValidate(const ValidateArgs& args);
int RunStatus(const StatusArgs& args);
int RunTorrent(const TorrentArgs& args);

}  // namespace byoi
