#include "agent/job/runner.hpp"

namespace byoi {

Status RunJob(const Manifest&, const RunOptions&, StatusBoard& board, const CancelToken&) {
  Status s = Status::Error(Code::kUnsupported, "the pipeline is not built yet");
  board.Fail(s);
  return s;
}

}  // namespace byoi
