#include "agent/base/status.hpp"

#include <cstring>

namespace byoi {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kInvalid:
      return "invalid";
    case Code::kNotFound:
      return "not_found";
    case Code::kIo:
      return "io";
    case Code::kUnsupported:
      return "unsupported";
    case Code::kBusy:
      return "busy";
    case Code::kTooBig:
      return "too_big";
    case Code::kCancelled:
      return "cancelled";
    case Code::kInternal:
      return "internal";
  }
  return "unknown";
}

std::optional<Code> CodeFromName(std::string_view name) {
  for (Code c : {Code::kOk, Code::kInvalid, Code::kNotFound, Code::kIo, Code::kUnsupported,
                 Code::kBusy, Code::kTooBig, Code::kCancelled, Code::kInternal}) {
    if (CodeName(c) == name) return c;
  }
  return std::nullopt;
}

Status Status::FromErrno(std::string_view context, int err, Code code) {
  std::string detail(context);
  detail += ": ";
  detail += std::strerror(err);
  return Error(code, std::move(detail));
}

Status& Status::Context(std::string_view what) & {
  if (ok()) return *this;
  if (detail_.empty()) {
    detail_ = what;
  } else {
    detail_ = std::string(what) + ": " + detail_;
  }
  return *this;
}

Status& Status::DefaultMessage(std::string_view message) & {
  if (!ok() && message_.empty()) message_ = message;
  return *this;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  if (message_.empty()) return detail_.empty() ? std::string(CodeName(code_)) : detail_;
  if (detail_.empty()) return message_;
  return message_ + " (" + detail_ + ")";
}

}  // namespace byoi
