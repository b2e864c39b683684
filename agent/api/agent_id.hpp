// The agent's identity towards the backend (docs/backend.md): `agent_id` from the configuration,
// else the DMI product UUID, else the first permanent MAC address. Both come from sysfs, whose root
// is a parameter so that tests can use a fake tree.
#pragma once

#include <string>

#include "agent/base/status.hpp"

namespace byoi {

// Returns `configured` when it is not empty. Otherwise the DMI product UUID
// (<sysfs>/class/dmi/id/product_uuid, lower case) unless it is missing or a placeholder (all zeros,
// all Fs, not a UUID); otherwise the permanent MAC address (addr_assign_type 0, lower case
// aa:bb:cc:dd:ee:ff) of the first Ethernet interface backed by a device, in name order. kNotFound
// when there is none of them.
Result<std::string> ResolveAgentId(const std::string& configured,
                                   const std::string& sysfs = "/sys");

}  // namespace byoi
