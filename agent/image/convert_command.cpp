#include "agent/commands.hpp"

namespace byoi {

int RunConvert(const ConvertArgs&) { return NotYetAvailable("convert"); }
int RunInspect(const InspectArgs&) { return NotYetAvailable("inspect"); }

}  // namespace byoi
