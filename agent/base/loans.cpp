#include "agent/base/loans.hpp"

#include <functional>

namespace byoi {

void Loans::Open(std::span<const uint8_t> region) {
  std::lock_guard lock(mu_);
  region_ = region;
}

void Loans::Close() {
  std::unique_lock lock(mu_);
  region_ = {};
  returned_cv_.wait(lock, [&] { return out_.empty(); });
}

bool Loans::Lends(const uint8_t* p, size_t n) const {
  std::lock_guard lock(mu_);
  // std::less: a total order even for pointers into different objects.
  std::less<const uint8_t*> before;
  return !region_.empty() && !before(p, region_.data()) &&
         !before(region_.data() + region_.size(), p) &&
         n <= static_cast<size_t>(region_.data() + region_.size() - p);
}

uint64_t Loans::Borrow() {
  std::lock_guard lock(mu_);
  out_.insert(++taken_);
  return taken_;
}

void Loans::Return(uint64_t id) {
  {
    std::lock_guard lock(mu_);
    out_.erase(id);
  }
  returned_cv_.notify_all();
}

uint64_t Loans::Mark() const {
  std::lock_guard lock(mu_);
  return taken_;
}

bool Loans::Returned(uint64_t mark) const {
  std::lock_guard lock(mu_);
  return ReturnedLocked(mark);
}

void Loans::WaitReturned(uint64_t mark) const {
  std::unique_lock lock(mu_);
  returned_cv_.wait(lock, [&] { return ReturnedLocked(mark); });
}

}  // namespace byoi
