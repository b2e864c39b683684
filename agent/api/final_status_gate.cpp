#include "agent/api/final_status_gate.hpp"

#include <spdlog/spdlog.h>

namespace byoi {

void FinalStatusGate::OnEvent(const JobEvent& event) {
  if (event.status == nullptr) return;
  std::unique_lock lock(mu_);
  if (event.status->state == JobState::kDoing) {
    if (!armed_) served_ = false;
    armed_ = true;
    return;
  }
  if (!armed_) return;
  armed_ = false;
  if (event.status->state != JobState::kDone) return;  // no reboot follows an error
  if (!cv_.wait_for(lock, wait_, [this] { return served_; })) {
    spdlog::warn("no API client read the final status within {} s; rebooting anyway",
                 std::chrono::duration_cast<std::chrono::seconds>(wait_).count());
  }
}

void FinalStatusGate::Served() {
  {
    std::lock_guard lock(mu_);
    served_ = true;
  }
  cv_.notify_all();
}

}  // namespace byoi
