// `byoi-agent validate MANIFEST`: the normalised manifest on stdout (secrets masked), or the
// catalogue message on stderr and exit 1.
#include <boost/json.hpp>
#include <cstdio>

#include "agent/commands.hpp"
#include "agent/job/cli_util.hpp"
#include "agent/job/manifest.hpp"

namespace byoi {

int RunValidate(const ValidateArgs& args) {
  auto text = ReadManifestText(args.manifest);
  if (!text.ok()) {
    std::fprintf(stderr, "%s\n", text.status().ToString().c_str());
    return text.status().code() == Code::kInvalid ? kExitJobError : kExitUsage;
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
