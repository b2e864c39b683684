// Runs of zeros on their way to becoming zeroing requests (docs/pipeline.md, step 4). Both
// writers find an image's zeros in pieces (a chunk, a lent block, a qcow2 cluster), in order or a
// few pieces apart, and zero each run of them with as few requests as the cap allows.
//
// A piece joins the pending runs it touches. Whole requests of `max_request` bytes are due as
// soon as a run holds them (a long run does not wait for its end; its rest goes on growing), and
// the lowest run is due whole when more than `max_pending` wait. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <utility>
#include <vector>

namespace byoi {

// Zeroing requests are capped so a cancellation is seen within a fraction of a second even on a
// device that zeroes by writing.
inline constexpr uint64_t kMaxZeroRequest = 256ull << 20;

// Both writers look for zeros among an image's bytes in blocks of kHoleBlock (on the sector grid
// of every target), and zero a run of them from kMinHole: a shorter one goes with the data around
// it, a request of its own costing more than writing it.
inline constexpr uint64_t kHoleBlock = 64ull << 10;
inline constexpr uint64_t kMinHole = 256ull << 10;

// The holes of a buffer of image bytes (a raw image's free space): runs of whole `block`s, counted
// from its start, that are all zeros and at least `min_length` long, as [begin, end) offsets in
// order; a buffer of zeros is one hole, whatever its length. A block of data costs a few bytes'
// look (its first non-zero one), a block of zeros a full one.
std::vector<std::pair<size_t, size_t>> FindHoles(std::span<const uint8_t> bytes, size_t block,
                                                 size_t min_length);

class ZeroRuns {
 public:
  struct Request {
    uint64_t offset = 0;
    uint64_t length = 0;
    bool operator==(const Request&) const = default;
  };

  explicit ZeroRuns(size_t max_pending, uint64_t max_request = kMaxZeroRequest)
      : max_pending_(max_pending), max_request_(max_request) {}

  // [begin, end) reads as zeros; it overlaps no pending run. Returns the requests due now.
  std::vector<Request> Add(uint64_t begin, uint64_t end);
  // Everything pending, in requests of at most max_request; nothing waits afterwards.
  std::vector<Request> TakeAll();

 private:
  // [begin, end) in requests of at most max_request.
  void Split(uint64_t begin, uint64_t end, std::vector<Request>& out) const;

  const size_t max_pending_;
  const uint64_t max_request_;
  std::map<uint64_t, uint64_t> runs_;  // begin -> end
};

}  // namespace byoi
