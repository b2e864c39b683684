#include "agent/commands.hpp"

namespace byoi {

int RunDaemon(const DaemonArgs&) { return NotYetAvailable("daemon"); }
int RunStatus(const StatusArgs&) { return NotYetAvailable("status"); }

}  // namespace byoi
