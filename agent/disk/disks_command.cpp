#include "agent/commands.hpp"

namespace byoi {

int RunDisks(const DisksArgs&) { return NotYetAvailable("disks"); }

}  // namespace byoi
