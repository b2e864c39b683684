// Bytes lent down a stream's pipeline instead of copied (docs/pipeline.md, "Write modes"): the
// owner of a buffer (a download's window of RAM) hands its bytes to the next stage, and a stage
// further down (the stream writer) may write them to the disk from where they are, after the call
// that gave them returned, instead of copying them into buffers of its own. The owner reuses a
// byte's room only once every loan taken up to the moment it handed that byte down was returned.
//
// Thread-safe: the owner and the borrower's pipeline thread call Open, Close, Lends, Borrow and
// Mark; a loan may be returned on any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <span>

namespace byoi {

class Loans {
 public:
  Loans() = default;
  Loans(const Loans&) = delete;
  Loans& operator=(const Loans&) = delete;

  // Owner: the bytes of `region` may be borrowed from now on, until Close.
  void Open(std::span<const uint8_t> region);
  // Owner: waits until every loan came back; nothing is lent any more.
  void Close();

  // Borrower: true when [p, p + n) lies in the region lent (then the bytes stay in place until
  // the loan taken for them is returned).
  bool Lends(const uint8_t* p, size_t n) const;
  // Borrower: a loan (its id, > 0) on bytes it was given; Return(id) once done with them.
  uint64_t Borrow();
  void Return(uint64_t id);

  // Owner: a mark of the loans taken so far. Returned(mark): each of them came back.
  uint64_t Mark() const;
  bool Returned(uint64_t mark) const;
  void WaitReturned(uint64_t mark) const;

 private:
  bool ReturnedLocked(uint64_t mark) const { return out_.empty() || *out_.begin() > mark; }

  mutable std::mutex mu_;
  mutable std::condition_variable returned_cv_;
  std::span<const uint8_t> region_;
  uint64_t taken_ = 0;      // ids handed out: 1 .. taken_
  std::set<uint64_t> out_;  // ids not returned yet
};

}  // namespace byoi
