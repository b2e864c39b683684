#include "agent/base/cancel.hpp"

namespace byoi {

Status CancelToken::Check() const {
  if (!cancelled()) return Status::Ok();
  return Status::Error(Code::kCancelled, "cancelled on request", kCancelledMessage);
}

}  // namespace byoi
