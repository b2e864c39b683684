#include "agent/commands.hpp"

namespace byoi {

int RunDeploy(const DeployArgs&) { return NotYetAvailable("deploy"); }

}  // namespace byoi
