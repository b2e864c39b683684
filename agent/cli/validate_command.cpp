// `byoi-agent validate MANIFEST`: the normalised manifest on stdout (secrets masked), or the
// catalogue message on stderr and exit 1.
#include <boost/json.hpp>
#include <cstdio>

#include "agent/cli/cli_util.hpp"
#include "agent/cli/commands.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

int RunValidate(const ValidateArgs& args) {
  auto text = ReadManifestText(args.manifest);
  if (!text.ok()) {
    // An oversized body is a bad manifest (its catalogue message, exit 1); a file that cannot be
    // read is a usage error (exit 2).
    const Status& s = text.status();
    bool invalid = s.code() == Code::kInvalid;
    std::fprintf(stderr, "%s\n", invalid ? s.message().c_str() : s.ToString().c_str());
    return invalid ? kExitJobError : kExitUsage;
  }
  auto manifest = ParseManifest(*text);
  if (!manifest.ok()) {
    std::fprintf(stderr, "%s\n", manifest.status().message().c_str());
    return kExitJobError;
  }
  std::string out = boost::json::serialize(ManifestToJson(*manifest));
  std::printf("%s\n", out.c_str());
  return kExitOk;
}

}  // namespace byoi
