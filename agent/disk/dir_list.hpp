// Listing a sysfs directory, shared by the inventory and the safety gates.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace byoi {

// The entry names of `dir`, sorted; empty when it does not exist or cannot be read (a sysfs
// attribute directory such as holders/ is absent on some devices).
std::vector<std::string> ListDir(const std::filesystem::path& dir);

}  // namespace byoi
