#include "agent/fetch/piece_plan.hpp"

#include <algorithm>

namespace byoi {

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kMinPiece = 4 * kMiB;
constexpr uint64_t kMaxPiece = 64 * kMiB;
constexpr uint64_t kPiecesPerConnection = 4;

}  // namespace

uint64_t PieceSize(uint64_t rest, int connections, uint64_t window) {
  const uint64_t n = static_cast<uint64_t>(std::max(connections, 1));
  if (n == 1) return std::max<uint64_t>(rest, 1);
  uint64_t size = (rest + kPiecesPerConnection * n - 1) / (kPiecesPerConnection * n);
  size = std::clamp(size, kMinPiece, kMaxPiece);
  if (window > 0) size = std::min(size, std::max(window / (2 * n), kMiB));
  return size;
}

void PiecePlan::Reset(uint64_t end, Clock::time_point not_before) {
  pieces_.clear();
  pieces_[0] = Piece{.start = 0, .end = end, .not_before = not_before};
  next_ = end;
  done_ = 0;
  piece_size_ = 0;
  total_.reset();
}

void PiecePlan::SetTotal(uint64_t total, uint64_t piece_size) {
  total_ = total;
  piece_size_ = std::max<uint64_t>(piece_size, 1);
  for (auto it = pieces_.begin(); it != pieces_.end();) {
    Piece& p = it->second;
    if (p.start >= total && p.start > 0) {
      it = pieces_.erase(it);
      continue;
    }
    p.end = std::min(p.end, total);
    p.pos = std::min(p.pos, p.end);
    ++it;
  }
  next_ = std::min(next_, total);
  // An empty body: its one piece [0, 0) is complete as it is.
  for (auto it = pieces_.begin(); it != pieces_.end();) {
    if (it->second.complete() && !it->second.active) {
      done_ += it->second.end - it->second.start;
      it = pieces_.erase(it);
    } else {
      ++it;
    }
  }
}

Piece* PiecePlan::Take(Clock::time_point now, uint64_t limit) {
  for (auto& [start, p] : pieces_) {
    if (!p.active && !p.complete() && p.not_before <= now) {
      p.active = true;
      return &p;
    }
  }
  if (!total_ || next_ >= *total_) return nullptr;
  uint64_t end = std::min(*total_, next_ + std::min(piece_size_, *total_ - next_));
  if (!pieces_.empty() && end > limit) return nullptr;
  Piece& p = pieces_[next_];
  p = Piece{.start = next_, .end = end, .pos = next_, .high_water = next_, .active = true};
  next_ = end;
  return &p;
}

void PiecePlan::Received(Piece& piece, uint64_t n) {
  piece.pos += n;
  piece.high_water = std::max(piece.high_water, piece.pos);
}

void PiecePlan::StartOver(Piece& piece) { piece.pos = piece.start; }

void PiecePlan::ExtendToEnd(Piece& piece) {
  piece.end = kUnbounded;
  next_ = kUnbounded;
  total_.reset();
}

bool PiecePlan::Release(Piece& piece) {
  piece.active = false;
  if (!piece.complete()) return false;
  done_ += piece.end - piece.start;
  pieces_.erase(piece.start);
  return true;
}

bool PiecePlan::IsFirst(const Piece& piece) const {
  return !pieces_.empty() && pieces_.begin()->first == piece.start;
}

uint64_t PiecePlan::prefix() const { return pieces_.empty() ? next_ : pieces_.begin()->second.pos; }

uint64_t PiecePlan::received() const {
  uint64_t n = done_;
  for (const auto& [start, p] : pieces_) n += p.pos - p.start;
  return n;
}

bool PiecePlan::complete() const { return total_ && pieces_.empty() && next_ == *total_; }

std::optional<PiecePlan::Clock::time_point> PiecePlan::NextWake() const {
  std::optional<Clock::time_point> wake;
  for (const auto& [start, p] : pieces_) {
    if (!p.active && !p.complete() && (!wake || p.not_before < *wake)) wake = p.not_before;
  }
  return wake;
}

}  // namespace byoi
