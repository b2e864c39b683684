// The pieces of one download (fetch.hpp): which bytes a free connection asks for next, what has
// arrived of each piece, and how long the complete prefix of the image is. Bookkeeping only: no
// I/O, no clock of its own (the caller passes `now`).
//
// Before the image's length is known there is one piece, the first request's. Once an answer
// tells the length, the rest is cut into pieces handed out in order. A piece that fails keeps its
// bytes and is asked for again from where it stopped, by whichever connection is free when its
// back-off ends, first pieces first. A piece is never split nor merged once handed out, and is
// forgotten only when complete, so every byte before the first unfinished piece has arrived: that
// prefix is what the hasher and a stream's sink may take.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>

namespace byoi {

// A piece's end while the length of a body is unknown (a 200 without Content-Length).
inline constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

// The first request's piece: small, so that the other connections start as soon as its answer
// tells the length (a 206's Content-Range), and so that a small image is one request.
inline constexpr uint64_t kFirstPiece = 4 << 20;

// The size of the pieces after the first, for `rest` bytes over `connections` connections (>= 1),
// with `window` bytes of RAM ahead of the prefix (0: no limit, the image is in RAM whole):
//   - 1 connection: one piece for the rest (one request, no round trip between pieces);
//   - else about 4 pieces per connection, so that connections of unequal speed end together,
//     but 4 to 64 MiB each: each piece costs a request and a round trip;
//   - with a window, at most window / (2 × connections) (>= 1 MiB), so that every connection
//     can work at once with room to spare while the first piece is still arriving.
uint64_t PieceSize(uint64_t rest, int connections, uint64_t window);

struct Piece {
  using Clock = std::chrono::steady_clock;

  uint64_t start = 0;
  uint64_t end = 0;                // one past its last byte; kUnbounded while the length is unknown
  uint64_t pos = 0;                // [start, pos) has arrived
  uint64_t high_water = 0;         // the largest pos it reached (a 200 to a resume starts it over)
  int fruitless = 0;               // its failed requests in a row that brought no new byte
  Clock::time_point not_before{};  // the end of its back-off
  bool active = false;             // a connection is fetching it

  bool complete() const { return pos == end; }
};

class PiecePlan {
 public:
  using Clock = Piece::Clock;

  // Starts over: one piece [0, end) (end may be kUnbounded), the length unknown, nothing
  // received, not to be asked for before `not_before`. Pointers to pieces from before are
  // invalid.
  void Reset(uint64_t end, Clock::time_point not_before = {});
  // The body has `total` bytes: the pieces are cut there (a piece that reaches past it ends at
  // it; one that starts at or past it goes; the caller has none of those active), and new pieces
  // after them have `piece_size` bytes (> 0).
  void SetTotal(uint64_t total, uint64_t piece_size);
  std::optional<uint64_t> total() const { return total_; }

  // A piece for a free connection at `now`, marked active: the first inactive unfinished piece
  // whose back-off is over; else, when the length is known, a new piece after all others, if it
  // is the first unfinished piece or ends at or before `limit` (the window's end). nullptr when
  // there is none now.
  Piece* Take(Clock::time_point now, uint64_t limit);
  // `n` more bytes of `piece` arrived, at piece.pos.
  void Received(Piece& piece, uint64_t n);
  // The piece starts over at its first byte (a 200 answered its resume with the whole body).
  void StartOver(Piece& piece);
  // `piece`, the only one, runs to the end of the body, whose length is unknown: a 200 answered
  // the first request's Range with the whole body.
  void ExtendToEnd(Piece& piece);
  // A request for `piece` ended: it is inactive, and forgotten when complete (the reference is
  // then invalid). True when it was complete.
  bool Release(Piece& piece);

  // True when `piece` is the first unfinished one: its bytes extend the prefix.
  bool IsFirst(const Piece& piece) const;
  // Every byte before this has arrived.
  uint64_t prefix() const;
  // Bytes arrived in all.
  uint64_t received() const;
  // The length is known and every byte has arrived.
  bool complete() const;
  // The earliest end of a back-off among the inactive pieces; nullopt when none waits.
  std::optional<Clock::time_point> NextWake() const;

 private:
  std::map<uint64_t, Piece> pieces_;  // unfinished pieces by start
  uint64_t next_ = 0;                 // the first byte of no piece
  uint64_t done_ = 0;                 // bytes in finished pieces
  uint64_t piece_size_ = 0;
  std::optional<uint64_t> total_;
};

}  // namespace byoi
