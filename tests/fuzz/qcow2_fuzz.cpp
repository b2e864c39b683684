// libFuzzer target for the qcow2 reader: the validating open on arbitrary bytes, then every check
// of layout_checks.hpp on the layout it gives.
#include <cstddef>
#include <cstdint>
#include <span>

#include "agent/image/qcow2.hpp"
#include "tests/fuzz/layout_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto image = byoi::ReadQcow2(std::span<const uint8_t>(data, size));
  if (!image.ok()) return 0;
  byoi::fuzz::CheckLayout(image->layout, data, size);
  return 0;
}
