// How the image readers word what they refuse (docs/pipeline.md, "Untrusted input"): kInvalid for a
// damaged or hostile file, kUnsupported for a sound one this agent does not read, offsets in hex as
// qemu-img shows them. Internal to the image stage.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <utility>

#include "agent/base/status.hpp"

namespace byoi::image_refusal {

inline std::string Hex(uint64_t v) { return fmt::format("{:#x}", v); }

inline Status Invalid(std::string detail) {
  return Status::Error(Code::kInvalid, std::move(detail));
}

inline Status Unsupported(std::string detail) {
  return Status::Error(Code::kUnsupported, std::move(detail));
}

// [offset, offset + length) lies within a file of `size` bytes (no overflow on hostile values).
inline bool InRange(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace byoi::image_refusal
