#include "agent/disk/zero_runs.hpp"

#include <algorithm>
#include <iterator>

#include "agent/base/bytes.hpp"

namespace byoi {

std::vector<std::pair<size_t, size_t>> FindHoles(std::span<const uint8_t> bytes, size_t block,
                                                 size_t min_length) {
  std::vector<std::pair<size_t, size_t>> holes;
  const size_t n = bytes.size();
  size_t hole = n;  // where the current run of zero blocks began (n: none)
  for (size_t at = 0; at < n; at += block) {
    const size_t len = std::min(block, n - at);
    if (IsAllZero(bytes.data() + at, len)) {
      if (hole == n) hole = at;
      continue;
    }
    if (hole != n && at - hole >= min_length) holes.emplace_back(hole, at);
    hole = n;
  }
  if (hole != n && (hole == 0 || n - hole >= min_length)) holes.emplace_back(hole, n);
  return holes;
}

std::vector<ZeroRuns::Request> ZeroRuns::Add(uint64_t begin, uint64_t end) {
  std::vector<Request> due;
  if (begin >= end) return due;
  if (auto after = runs_.find(end); after != runs_.end()) {
    end = after->second;
    runs_.erase(after);
  }
  if (auto it = runs_.lower_bound(begin); it != runs_.begin()) {
    if (auto before = std::prev(it); before->second == begin) {
      begin = before->first;
      runs_.erase(before);
    }
  }
  if (const uint64_t whole = (end - begin) / max_request_ * max_request_; whole > 0) {
    Split(begin, begin + whole, due);
    begin += whole;
  }
  if (begin < end) runs_[begin] = end;
  if (runs_.size() > max_pending_) {
    Split(runs_.begin()->first, runs_.begin()->second, due);
    runs_.erase(runs_.begin());
  }
  return due;
}

std::vector<ZeroRuns::Request> ZeroRuns::TakeAll() {
  std::vector<Request> due;
  for (const auto& [begin, end] : runs_) Split(begin, end, due);
  runs_.clear();
  return due;
}

void ZeroRuns::Split(uint64_t begin, uint64_t end, std::vector<Request>& out) const {
  for (uint64_t pos = begin; pos < end; pos += max_request_) {
    out.push_back({pos, std::min(max_request_, end - pos)});
  }
}

}  // namespace byoi
