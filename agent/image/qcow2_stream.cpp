#include "agent/image/qcow2_stream.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "agent/base/bytes.hpp"
#include "agent/base/messages.hpp"
#include "agent/image/refusal.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi {

using image_refusal::Hex;
using image_refusal::Invalid;

namespace {

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint64_t kV3HeaderLength = 104;
constexpr uint32_t kNoBadWord = UINT32_MAX;

Status Truncated(uint64_t virt, std::string_view what, uint64_t host, uint64_t size) {
  return Invalid(fmt::format(
      "image is truncated: the {} at virtual {} maps to {}, past the end of the file ({} bytes)",
      what, Hex(virt), Hex(host), size));
}

Status CompressedUsedTwice(uint64_t virt, uint64_t host) {
  return Invalid(fmt::format(
      "the compressed cluster at virtual {} maps to {}, whose bytes were already used by another "
      "mapping",
      Hex(virt), Hex(host)));
}

// A compressed stream may end inside its last sector when the file ends there (qemu-img ends
// the file where the stream ends); a file that ends before that sector lost data.
bool CompressedInRange(uint64_t host, uint64_t compressed_length, uint64_t size) {
  const uint64_t last_sector = host + compressed_length - 512;
  return host < size && size > last_sector;
}

}  // namespace

// Inflates compressed clusters on worker threads; the reader's thread submits jobs and takes the
// finished ones (it alone calls the sink). At most limit() jobs are in flight.
class Qcow2StreamReader::Pool {
 public:
  Pool(unsigned threads, uint32_t cluster_size, Compression compression)
      : cluster_size_(cluster_size), compression_(compression), limit_(2 * threads) {
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  size_t limit() const { return limit_; }
  size_t in_flight() const {
    std::lock_guard lock(mu_);
    return in_flight_;
  }

  void Submit(InflateJob job) {
    {
      std::lock_guard lock(mu_);
      ++in_flight_;
      queue_.push_back(std::move(job));
    }
    work_cv_.notify_one();
  }

  // The finished jobs; with `wait`, waits until there is at least one (REQUIRES: in_flight() > 0).
  std::deque<InflateJob> Take(bool wait) {
    std::unique_lock lock(mu_);
    if (wait) done_cv_.wait(lock, [&] { return !done_.empty(); });
    std::deque<InflateJob> out = std::move(done_);
    done_.clear();
    in_flight_ -= out.size();
    return out;
  }

 private:
  void Loop() {
    ClusterDecompressor decompressor;
    std::unique_lock lock(mu_);
    while (true) {
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      InflateJob job = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      Extent e;
      e.kind = Extent::Kind::kCompressed;
      e.offset = job.virt;
      e.length = job.length;
      e.data = job.in.data();
      e.compressed_length = job.in.size();
      e.cluster_size = cluster_size_;
      e.compression = compression_;
      job.out.resize(cluster_size_);
      job.status = decompressor.Decompress(e, job.out, &job.consumed);
      lock.lock();
      done_.push_back(std::move(job));
      done_cv_.notify_one();
    }
  }

  const uint32_t cluster_size_;
  const Compression compression_;
  const size_t limit_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<InflateJob> queue_, done_;
  size_t in_flight_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

Qcow2StreamReader::Qcow2StreamReader(VirtualDiskSink& sink, Qcow2StreamOptions options,
                                     HeaderFn on_header)
    : sink_(sink), options_(options), on_header_(std::move(on_header)) {}

Qcow2StreamReader::~Qcow2StreamReader() = default;

Status Qcow2StreamReader::Fail(Status s) {
  if (!s.ok() && error_.ok()) error_ = s;
  return s;
}

Status Qcow2StreamReader::Charge(uint64_t n) {
  if (n > options_.memory_budget || used_ > options_.memory_budget - n) {
    return Status::Error(
        Code::kTooBig,
        fmt::format("the qcow2 stream reader needs more than its memory budget of {} bytes "
                    "(at file offset {}: {} bytes held, {} more wanted)",
                    options_.memory_budget, frontier_, used_, n),
        msg::TooBigForMemory("qcow2"));
  }
  used_ += n;
  peak_ = std::max(peak_, used_);
  return Status::Ok();
}

void Qcow2StreamReader::Release(uint64_t n) { used_ -= std::min(n, used_); }

Status Qcow2StreamReader::Start(std::optional<uint64_t> total) {
  total_ = total;
  return Status::Ok();
}

Status Qcow2StreamReader::Write(std::span<const uint8_t> bytes) {
  if (!error_.ok()) return error_;
  // 104 bytes tell the cluster size; the first cluster holds the header and its extensions.
  auto head_need = [&]() -> uint64_t {
    if (head_.size() < kV3HeaderLength || Be32(head_.data()) != kMagic) return kV3HeaderLength;
    const uint32_t bits = Be32(head_.data() + 20);
    return bits >= 9 && bits <= 21 ? uint64_t{1} << bits : kV3HeaderLength;
  };
  size_t taken = 0;
  while (!opened_) {
    const uint64_t need = head_need();
    if (head_.size() >= need) {
      BYOI_RETURN_IF_ERROR(Fail(OpenHeader(false)));
      break;
    }
    if (taken == bytes.size()) return Status::Ok();
    const size_t take =
        static_cast<size_t>(std::min<uint64_t>(need - head_.size(), bytes.size() - taken));
    BYOI_RETURN_IF_ERROR(Fail(Charge(take)));
    head_.insert(head_.end(), bytes.begin() + taken, bytes.begin() + taken + take);
    taken += take;
    pos_ += take;
  }
  if (taken == bytes.size()) return Status::Ok();
  const uint64_t at = pos_;
  pos_ += bytes.size() - taken;
  return Fail(Pass(at, bytes.subspan(taken)));
}

Status Qcow2StreamReader::OpenHeader(bool at_end) {
  BYOI_ASSIGN_OR_RETURN(open_, OpenQcow2Header(head_, at_end ? std::optional(pos_) : total_));
  opened_ = true;
  info_ = open_.info;
  g_ = open_.geometry;
  const Qcow2Header& h = open_.header;
  l1_begin_ = h.l1_table_offset;
  l1_end_ = l1_begin_ + open_.l1_needed * 8;
  if (open_.l1_needed == 0) {
    l1_done_ = true;
  } else {
    BYOI_RETURN_IF_ERROR(Charge(open_.l1_needed * 8));
    l1_.resize(open_.l1_needed * 8);
  }
  snapshot_pos_ = h.snapshots_offset;
  if (on_header_) BYOI_RETURN_IF_ERROR(on_header_(info_));
  // Everything the first cluster holds passes now, as any later byte will.
  std::vector<uint8_t> head = std::move(head_);
  head_.clear();
  Status s = Pass(0, head);
  Release(head.size());
  return s;
}

uint64_t Qcow2StreamReader::NextBoundary(uint64_t q, uint64_t end) const {
  uint64_t next = end;
  if (!l1_done_ && l1_end_ > q) next = std::min(next, l1_end_);
  const uint64_t cs = g_.cluster_size;
  auto it = l2_.lower_bound(q >= cs ? q - cs + 1 : 0);
  if (it != l2_.end()) next = std::min(next, std::max(q + 1, it->first + cs));
  if (open_.bitmaps.present && !bitmap_dir_parsed_) {
    const uint64_t dir_end = open_.bitmaps.directory_offset + open_.bitmaps.directory_size;
    if (dir_end > q) next = std::min(next, dir_end);
  }
  return next;
}

Status Qcow2StreamReader::Pass(uint64_t offset, std::span<const uint8_t> bytes) {
  if (offset != frontier_) return Status::Error(Code::kInternal, "qcow2 stream out of order");
  const uint64_t end = offset + bytes.size();
  for (uint64_t q = offset; q < end;) {
    const uint64_t e = NextBoundary(q, end);
    BYOI_RETURN_IF_ERROR(ProcessSpan(q, bytes.subspan(q - offset, e - q)));
    frontier_ = e;
    BYOI_RETURN_IF_ERROR(Completions());
    q = e;
  }
  return DrainPool(false);
}

Status Qcow2StreamReader::ProcessSpan(uint64_t q, std::span<const uint8_t> bytes) {
  const uint64_t end = q + bytes.size();
  // Byte ranges taken by the tables, or written: the rest waits (until every L2 table is seen).
  std::vector<std::pair<uint64_t, uint64_t>> used;
  if (!l1_done_ && l1_begin_ < end && l1_end_ > q) {
    const uint64_t a = std::max(q, l1_begin_), b = std::min(end, l1_end_);
    std::memcpy(l1_.data() + (a - l1_begin_), bytes.data() + (a - q), b - a);
    used.emplace_back(a, b);
  }
  const uint64_t cs = g_.cluster_size;
  for (auto it = l2_.lower_bound(q >= cs ? q - cs + 1 : 0); it != l2_.end() && it->first < end;
       ++it) {
    BYOI_RETURN_IF_ERROR(FeedL2(it->first, it->second, q, bytes));
    used.emplace_back(std::max(q, it->first), std::min(end, it->first + cs));
  }
  BYOI_RETURN_IF_ERROR(FeedSnapshots(q, bytes));
  BYOI_RETURN_IF_ERROR(FeedBitmaps(q, bytes));
  BYOI_RETURN_IF_ERROR(ServeData(q, bytes, used));
  BYOI_RETURN_IF_ERROR(ServeCompressed(q, bytes, used));
  return Retain(q, bytes, used);
}

Status Qcow2StreamReader::FeedL2(uint64_t host, PendingL2& t, uint64_t q,
                                 std::span<const uint8_t> bytes) {
  const uint64_t cs = g_.cluster_size;
  const uint64_t a = std::max(q, host + t.bytes.size());
  const uint64_t b = std::min(q + bytes.size(), host + cs);
  if (a >= b) return Status::Ok();
  if (a != host + t.bytes.size()) {
    return Status::Error(Code::kInternal,
                         fmt::format("L2 table at {} fed out of order", Hex(host)));
  }
  if (t.bytes.empty()) {
    BYOI_RETURN_IF_ERROR(Charge(cs));
    t.bytes.reserve(cs);
  }
  t.bytes.insert(t.bytes.end(), bytes.begin() + (a - q), bytes.begin() + (b - q));
  return Status::Ok();
}

Status Qcow2StreamReader::ServeData(uint64_t q, std::span<const uint8_t> bytes,
                                    std::vector<std::pair<uint64_t, uint64_t>>& used) {
  const uint64_t end = q + bytes.size();
  auto it = data_.upper_bound(q);
  if (it != data_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.length > q) it = prev;
  }
  while (it != data_.end() && it->first < end) {
    const uint64_t need_end = it->first + it->second.length;
    const uint64_t a = std::max(q, it->first), b = std::min(end, need_end);
    BYOI_RETURN_IF_ERROR(GiveData(it->second.virt + (a - it->first), bytes.subspan(a - q, b - a)));
    used.emplace_back(a, b);
    if (b == need_end) {
      it = data_.erase(it);
      Release(kNodeCost);
      continue;
    }
    // The rest of the run comes with the next bytes.
    DataNeed rest{need_end - b, it->second.virt + (b - it->first), it->second.origin};
    data_.erase(it);
    data_.emplace(b, rest);
    break;
  }
  return Status::Ok();
}

Status Qcow2StreamReader::ServeCompressed(uint64_t q, std::span<const uint8_t> bytes,
                                          std::vector<std::pair<uint64_t, uint64_t>>& used) {
  const uint64_t end = q + bytes.size();
  auto it = compressed_.lower_bound(q > max_compressed_ ? q - max_compressed_ : 0);
  while (it != compressed_.end() && it->first < end) {
    CompressedNeed& n = it->second;
    const uint64_t have_end = it->first + n.bytes.size();
    const uint64_t a = std::max(q, have_end);
    const uint64_t b = std::min(end, it->first + n.compressed_length);
    if (a < b) {
      n.bytes.insert(n.bytes.end(), bytes.begin() + (a - q), bytes.begin() + (b - q));
      const uint64_t own_end = std::min(b, LastSector(it->first, n.compressed_length));
      if (a < own_end) used.emplace_back(a, own_end);
    }
    if (n.bytes.size() == n.compressed_length) {
      CompressedNeed done = std::move(n);
      it = compressed_.erase(it);
      BYOI_RETURN_IF_ERROR(Dispatch(std::move(done)));
      continue;
    }
    ++it;
  }
  return Status::Ok();
}

Status Qcow2StreamReader::Retain(uint64_t q, std::span<const uint8_t> bytes,
                                 const std::vector<std::pair<uint64_t, uint64_t>>& used_in) {
  if (all_l2_seen_) return Status::Ok();
  std::vector<std::pair<uint64_t, uint64_t>> used = used_in;
  std::sort(used.begin(), used.end());
  uint64_t at = q;
  const uint64_t end = q + bytes.size();
  auto keep = [&](uint64_t a, uint64_t b) -> Status {
    if (a >= b) return Status::Ok();
    BYOI_RETURN_IF_ERROR(Charge(b - a + kNodeCost));
    retained_.emplace(a, std::vector<uint8_t>(bytes.begin() + (a - q), bytes.begin() + (b - q)));
    return Status::Ok();
  };
  for (const auto& [a, b] : used) {
    if (a > at) BYOI_RETURN_IF_ERROR(keep(at, a));
    at = std::max(at, b);
  }
  return keep(at, end);
}

template <typename Fn>
uint64_t Qcow2StreamReader::FromRetained(uint64_t begin, uint64_t end,
                                         std::pair<uint64_t, uint64_t> drop, Fn&& fn) {
  uint64_t found = 0;
  auto it = retained_.upper_bound(begin);
  if (it != retained_.begin()) --it;
  for (; it != retained_.end() && it->first < end; ++it) {
    const uint64_t s = it->first, e = s + it->second.size();
    const uint64_t a = std::max(s, begin), b = std::min(e, end);
    if (a >= b) continue;
    fn(a, std::span<const uint8_t>(it->second.data() + (a - s), b - a));
    found += b - a;
  }
  DropRetained(std::max(begin, drop.first), std::min(end, drop.second));
  return found;
}

void Qcow2StreamReader::DropRetained(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  auto it = retained_.upper_bound(begin);
  if (it != retained_.begin()) --it;
  while (it != retained_.end() && it->first < end) {
    const uint64_t s = it->first, e = s + it->second.size();
    if (e <= begin) {
      ++it;
      continue;
    }
    // What is left of the piece before and after [begin, end) stays retained.
    std::vector<uint8_t> bytes = std::move(it->second);
    it = retained_.erase(it);
    Release(bytes.size() + kNodeCost);
    if (s < begin) {
      retained_.emplace(s, std::vector<uint8_t>(bytes.begin(), bytes.begin() + (begin - s)));
      used_ += (begin - s) + kNodeCost;
    }
    if (e > end) {
      it = retained_.emplace(end, std::vector<uint8_t>(bytes.begin() + (end - s), bytes.end()))
               .first;
      used_ += (e - end) + kNodeCost;
      ++it;
    }
  }
}

uint64_t Qcow2StreamReader::LastSector(uint64_t host, uint64_t compressed_length) {
  return std::max(host, (host + compressed_length - 1) / 512 * 512);
}

void Qcow2StreamReader::DropRetained() {
  for (const auto& [offset, bytes] : retained_) Release(bytes.size() + kNodeCost);
  retained_.clear();
}

Status Qcow2StreamReader::Completions() {
  if (!l1_done_ && frontier_ >= l1_end_) BYOI_RETURN_IF_ERROR(ProcessL1());
  const uint64_t cs = g_.cluster_size;
  while (!l2_.empty() && l2_.begin()->first + cs <= frontier_) {
    auto it = l2_.begin();
    if (it->second.bytes.size() != cs) {
      return Status::Error(Code::kInternal,
                           fmt::format("L2 table at {} incomplete", Hex(it->first)));
    }
    BYOI_RETURN_IF_ERROR(DecodeL2(it->first, it->second));
  }
  if (open_.bitmaps.present && !bitmap_dir_parsed_ &&
      frontier_ >= open_.bitmaps.directory_offset + open_.bitmaps.directory_size) {
    BYOI_RETURN_IF_ERROR(ParseBitmapDirectory());
  }
  if (l1_done_ && l2_.empty() && !all_l2_seen_) {
    // Nothing that passes from now on can be mapped by a table not seen yet.
    all_l2_seen_ = true;
    DropRetained();
  }
  return Status::Ok();
}

Status Qcow2StreamReader::ProcessL1() {
  l1_done_ = true;
  const uint64_t n = open_.l1_needed;
  const uint64_t cs = g_.cluster_size;
  // Each L2 table of the active L1 is referenced once in a sound image: find the first entry (in
  // L1 order) that repeats an earlier one, as the RAM reader's walk would meet it.
  uint64_t repeat = n;
  {
    std::vector<std::pair<uint64_t, uint64_t>> sorted;
    BYOI_RETURN_IF_ERROR(Charge(n * 16));
    sorted.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t off = Be64(l1_.data() + i * 8) & kQcow2OffsetMask;
      if (off != 0) sorted.emplace_back(off, i);
    }
    std::sort(sorted.begin(), sorted.end());
    for (size_t k = 1; k < sorted.size(); ++k) {
      if (sorted[k].first == sorted[k - 1].first) repeat = std::min(repeat, sorted[k].second);
    }
    Release(n * 16);
  }
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t off = Be64(l1_.data() + i * 8) & kQcow2OffsetMask;
    const uint64_t start = i * g_.l2_coverage;
    const uint64_t table_end = std::min(g_.virtual_size, start + g_.l2_coverage);
    if (off == 0) {
      info_.unallocated_bytes += table_end - start;
      BYOI_RETURN_IF_ERROR(ZeroRun(start, table_end - start));
      continue;
    }
    const std::string where = fmt::format("L2 table at {} (L1 index {})", Hex(off), i);
    if (off & (cs - 1)) return Invalid(where + " is not aligned to the cluster size");
    if (total_ && !InQcow2File(off, cs, *total_)) {
      return Invalid(where + " lies outside the image");
    }
    if (i == repeat) return Invalid(where + " is referenced twice");
    BYOI_RETURN_IF_ERROR(Charge(kNodeCost));
    auto emplaced = l2_.emplace(off, PendingL2{i, {}});
    if (!emplaced.second) return Status::Error(Code::kInternal, where + " registered twice");
    auto it = emplaced.first;
    // A table that passed before the L1 table waits among the retained bytes.
    const uint64_t below = std::min(off + cs, frontier_);
    if (off < below) {
      Status fed;
      const uint64_t found =
          FromRetained(off, below, {off, below}, [&](uint64_t a, std::span<const uint8_t> b) {
            if (fed.ok()) fed = FeedL2(off, it->second, a, b);
          });
      BYOI_RETURN_IF_ERROR(fed);
      if (found != below - off) {
        return Invalid(where + " overlaps bytes already used as something else");
      }
      if (it->second.bytes.size() == cs) BYOI_RETURN_IF_ERROR(DecodeL2(off, it->second));
    }
  }
  Release(l1_.size());
  l1_.clear();
  l1_.shrink_to_fit();
  return FlushZeros();
}

Status Qcow2StreamReader::DecodeL2(uint64_t host, PendingL2& t) {
  const uint64_t start = t.l1_index * g_.l2_coverage;
  const uint64_t end = std::min(g_.virtual_size, start + g_.l2_coverage);
  ++info_.l2_tables;
  // The table leaves the pending set first: pieces may be fed from bytes retained around it.
  std::vector<uint8_t> bytes = std::move(t.bytes);
  const uint64_t l1_index = t.l1_index;
  l2_.erase(host);
  Status s =
      DecodeQcow2L2Table(g_, bytes.data(), l1_index, host, start, end,
                         [&](uint64_t offset, const Qcow2Piece& p) { return AddPiece(offset, p); });
  Release(g_.cluster_size + kNodeCost);
  return s;
}

Status Qcow2StreamReader::AddPiece(uint64_t offset, const Qcow2Piece& p) {
  switch (p.kind) {
    case Qcow2Piece::Kind::kUnallocated:
      info_.unallocated_bytes += p.length;
      return ZeroRun(offset + p.start, p.length);
    case Qcow2Piece::Kind::kZero:
      info_.zero_bytes += p.length;
      return ZeroRun(offset + p.start, p.length);
    case Qcow2Piece::Kind::kData:
      if (total_ && !InQcow2File(p.host, p.length, *total_)) {
        return Truncated(offset + p.start, "cluster", p.host, *total_);
      }
      info_.data_bytes += p.length;
      return AddData(p.host, p.length, offset + p.start);
    case Qcow2Piece::Kind::kCompressed:
      if (total_ && !CompressedInRange(p.host, p.compressed_length, *total_)) {
        return Truncated(offset, "compressed cluster", p.host, *total_);
      }
      info_.compressed_bytes += p.length;
      return AddCompressed(p.host, p.compressed_length, offset, p.length);
  }
  return Status::Ok();
}

Status Qcow2StreamReader::AddData(uint64_t host, uint64_t length, uint64_t virt) {
  // What already passed waits among the retained bytes.
  const uint64_t below = std::min(host + length, std::max(frontier_, host));
  if (host < below) {
    Status given;
    const uint64_t found =
        FromRetained(host, below, {host, below}, [&](uint64_t a, std::span<const uint8_t> b) {
          if (given.ok()) given = GiveData(virt + (a - host), b);
        });
    BYOI_RETURN_IF_ERROR(given);
    if (found != below - host) {
      return Invalid(fmt::format(
          "the cluster at virtual {} maps to {}, whose bytes were already used by another "
          "mapping (a host cluster mapped twice)",
          Hex(virt), Hex(host)));
    }
    virt += below - host;
    length -= below - host;
    host = below;
  }
  if (length == 0) return Status::Ok();
  auto twice = [&](uint64_t other) {
    return Invalid(fmt::format("host bytes at {} are mapped twice (virtual {} and {})", Hex(host),
                               Hex(virt), Hex(other)));
  };
  auto next = data_.upper_bound(host);
  if (next != data_.end() && next->first < host + length) return twice(next->second.virt);
  if (next != data_.begin()) {
    auto prev = std::prev(next);
    const uint64_t prev_end = prev->first + prev->second.length;
    if (prev_end > host) return twice(prev->second.virt + (host - prev->first));
    // Consecutive clusters mapped to consecutive host clusters make one run (a preallocated
    // image is one run per L2 table).
    if (prev_end == host && prev->second.virt + prev->second.length == virt) {
      prev->second.length += length;
      return Status::Ok();
    }
  }
  BYOI_RETURN_IF_ERROR(Charge(kNodeCost));
  data_.emplace_hint(next, host, DataNeed{length, virt, virt});
  return Status::Ok();
}

Status Qcow2StreamReader::AddCompressed(uint64_t host, uint64_t clen, uint64_t virt,
                                        uint64_t length) {
  BYOI_RETURN_IF_ERROR(Charge(clen + kNodeCost));
  CompressedNeed n;
  n.virt = virt;
  n.length = length;
  n.compressed_length = clen;
  const uint64_t below = std::min(host + clen, std::max(frontier_, host));
  if (host < below) {
    n.bytes.reserve(static_cast<size_t>(clen));
    // What lies before its last sector is its own and is dropped now (a second mapping of it is
    // refused); the last sector stays until the stream has inflated (DrainPool), when it is
    // known how much of it was its own. Its end may be gone already, taken by the next stream:
    // lacking it is fine if the stream inflates without it.
    FromRetained(host, below, {host, LastSector(host, clen)},
                 [&](uint64_t a, std::span<const uint8_t> b) {
                   if (a == host + n.bytes.size())
                     n.bytes.insert(n.bytes.end(), b.begin(), b.end());
                 });
    n.short_input = below == host + clen && !n.bytes.empty() && n.bytes.size() < clen;
    if (n.bytes.size() != below - host && !n.short_input) {
      return CompressedUsedTwice(virt, host);
    }
  }
  n.host = host;
  if (n.bytes.size() == clen || n.short_input) return Dispatch(std::move(n));
  max_compressed_ = std::max(max_compressed_, clen);
  compressed_.emplace(host, std::move(n));
  return Status::Ok();
}

Status Qcow2StreamReader::Dispatch(CompressedNeed need) {
  if (!pool_) {
    unsigned threads = options_.threads;
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    pool_ = std::make_unique<Pool>(threads, static_cast<uint32_t>(g_.cluster_size), g_.compression);
  }
  // The output cluster; the input was charged when the need was made.
  BYOI_RETURN_IF_ERROR(Charge(g_.cluster_size));
  while (pool_->in_flight() >= pool_->limit()) BYOI_RETURN_IF_ERROR(DrainPool(true));
  InflateJob job;
  job.charged = need.compressed_length + kNodeCost + g_.cluster_size;
  job.host = need.host;
  job.short_input = need.short_input;
  job.virt = need.virt;
  job.length = need.length;
  job.in = std::move(need.bytes);
  pool_->Submit(std::move(job));
  return Status::Ok();
}

Status Qcow2StreamReader::DrainPool(bool wait) {
  if (!pool_ || pool_->in_flight() == 0) return Status::Ok();
  for (InflateJob& job : pool_->Take(wait)) {
    if (!job.status.ok() && job.short_input) {
      return CompressedUsedTwice(job.virt, job.host);
    }
    BYOI_RETURN_IF_ERROR(job.status);
    DropRetained(job.host, job.host + job.consumed);
    BYOI_RETURN_IF_ERROR(GiveData(job.virt, std::span<const uint8_t>(job.out).first(job.length)));
    Release(job.charged);
  }
  return Status::Ok();
}

Status Qcow2StreamReader::GiveData(uint64_t virt, std::span<const uint8_t> bytes) {
  given_ += bytes.size();
  return sink_.Write(virt, bytes);
}

Status Qcow2StreamReader::ZeroRun(uint64_t virt, uint64_t length) {
  if (length == 0) return Status::Ok();
  if (zero_end_ != zero_begin_ && virt == zero_end_) {
    zero_end_ += length;
    return Status::Ok();
  }
  BYOI_RETURN_IF_ERROR(FlushZeros());
  zero_begin_ = virt;
  zero_end_ = virt + length;
  return Status::Ok();
}

Status Qcow2StreamReader::FlushZeros() {
  if (zero_end_ == zero_begin_) return Status::Ok();
  const uint64_t begin = zero_begin_, length = zero_end_ - zero_begin_;
  zero_begin_ = zero_end_ = 0;
  given_ += length;
  return sink_.Zero(begin, length);
}

Status Qcow2StreamReader::FeedSnapshots(uint64_t q, std::span<const uint8_t> bytes) {
  const Qcow2Header& h = open_.header;
  const uint64_t end = q + bytes.size();
  while (snapshot_index_ < h.nb_snapshots) {
    const uint64_t at = snapshot_pos_ + snapshot_filled_;
    if (at >= end) break;
    if (at < q) return Status::Error(Code::kInternal, "snapshot table walked backwards");
    const uint64_t n = std::min(kQcow2SnapshotHeaderSize - snapshot_filled_, end - at);
    std::memcpy(snapshot_entry_ + snapshot_filled_, bytes.data() + (at - q), n);
    snapshot_filled_ += n;
    if (snapshot_filled_ < kQcow2SnapshotHeaderSize) break;
    BYOI_ASSIGN_OR_RETURN(
        snapshot_pos_, CheckQcow2SnapshotEntry(h, snapshot_index_, snapshot_pos_, snapshot_entry_));
    ++snapshot_index_;
    snapshot_filled_ = 0;
  }
  return Status::Ok();
}

Status Qcow2StreamReader::FeedBitmaps(uint64_t q, std::span<const uint8_t> bytes) {
  const Qcow2Bitmaps& bm = open_.bitmaps;
  if (!bm.present) return Status::Ok();
  const uint64_t end = q + bytes.size();
  const uint64_t cs = g_.cluster_size;
  // Calls check(file offset, value) for each whole 8-byte word of [a, b) (a word split between
  // two calls is completed from the carry); check returns false to skip to the next cluster.
  auto words = [&](uint64_t a, uint64_t b, auto&& check) -> Status {
    uint64_t w = a;
    if (carry_filled_ > 0) {
      const uint64_t word_at = a - carry_filled_;
      if (word_at % 8 == 0 && a == q) {
        const uint64_t n = std::min<uint64_t>(8 - carry_filled_, b - a);
        std::memcpy(carry_ + carry_filled_, bytes.data() + (a - q), n);
        carry_filled_ += n;
        w = a + n;
        if (carry_filled_ < 8) return Status::Ok();
        BYOI_RETURN_IF_ERROR(check(word_at, Be64(carry_), nullptr));
      }
      carry_filled_ = 0;
    }
    w = (w + 7) & ~uint64_t{7};
    while (w + 8 <= b) {
      bool skip = false;
      BYOI_RETURN_IF_ERROR(check(w, Be64(bytes.data() + (w - q)), &skip));
      w = skip ? std::max(w + 8, ((w >> g_.cluster_bits) + 1) << g_.cluster_bits) : w + 8;
    }
    if (w < b && b == end) {
      carry_filled_ = b - w;
      std::memcpy(carry_, bytes.data() + (w - q), carry_filled_);
    }
    return Status::Ok();
  };
  if (!bitmap_dir_parsed_) {
    const uint64_t d0 = bm.directory_offset, d1 = d0 + bm.directory_size;
    const uint64_t a = std::max(q, d0 + bitmap_dir_.size()), b = std::min(end, d1);
    if (a < b) {
      BYOI_RETURN_IF_ERROR(Charge(b - a));
      bitmap_dir_.insert(bitmap_dir_.end(), bytes.begin() + (a - q), bytes.begin() + (b - q));
    }
    // Tables may have passed before the directory: remember, per cluster, the first word that
    // would make an invalid entry.
    const uint64_t clusters = (end + cs - 1) >> g_.cluster_bits;
    if (clusters > bad_word_.size()) {
      BYOI_RETURN_IF_ERROR(Charge((clusters - bad_word_.size()) * 12));
      bad_word_.resize(clusters, kNoBadWord);
      bad_value_.resize(clusters, 0);
    }
    return words(q, end, [&](uint64_t w, uint64_t v, bool* skip) {
      const uint64_t c = w >> g_.cluster_bits;
      if (bad_word_[c] != kNoBadWord) {
        if (skip) *skip = true;
        return Status::Ok();
      }
      if (!IsValidQcow2BitmapTableEntry(v, cs)) {
        bad_word_[c] = static_cast<uint32_t>((w & (cs - 1)) / 8);
        bad_value_[c] = v;
        if (skip) *skip = true;
      }
      return Status::Ok();
    });
  }
  for (const Qcow2BitmapTable& t : bitmap_tables_) {
    const uint64_t t_end = t.offset + uint64_t{t.entries} * 8;
    const uint64_t a = std::max(q, t.offset), b = std::min(end, t_end);
    if (a >= b) continue;
    BYOI_RETURN_IF_ERROR(words(a, b, [&](uint64_t w, uint64_t v, bool*) {
      return CheckQcow2BitmapTableEntry((w - t.offset) / 8, v, cs).Context(t.name);
    }));
  }
  return Status::Ok();
}

Status Qcow2StreamReader::ParseBitmapDirectory() {
  bitmap_dir_parsed_ = true;
  const Qcow2Bitmaps& bm = open_.bitmaps;
  BYOI_ASSIGN_OR_RETURN(
      bitmap_tables_, CheckQcow2BitmapDirectory(bitmap_dir_, bm.directory_offset, open_.header, bm,
                                                g_.virtual_size));
  Release(bitmap_dir_.size());
  bitmap_dir_ = {};
  // The RAM reader's bound: a sound image stores each table once, in the file.
  if (total_) {
    uint64_t budget = *total_;
    for (const Qcow2BitmapTable& t : bitmap_tables_) {
      uint64_t in_file = 0;
      if (t.offset < *total_) in_file = std::min<uint64_t>(t.entries, (*total_ - t.offset) / 8);
      if (in_file * 8 > budget) {
        return Invalid("bitmap tables add up to more than the image").Context(t.name);
      }
      budget -= in_file * 8;
    }
  }
  BYOI_RETURN_IF_ERROR(CheckPassedBitmapTables());
  Release(bad_word_.size() * 12);
  bad_word_ = {};
  bad_value_ = {};
  carry_filled_ = 0;
  return Status::Ok();
}

Status Qcow2StreamReader::CheckPassedBitmapTables() {
  const uint64_t bits = g_.cluster_bits;
  for (const Qcow2BitmapTable& t : bitmap_tables_) {
    const uint64_t passed_end = std::min(t.offset + uint64_t{t.entries} * 8, frontier_);
    for (uint64_t c = t.offset >> bits; (c << bits) < passed_end && c < bad_word_.size(); ++c) {
      if (bad_word_[c] == kNoBadWord) continue;
      const uint64_t w = (c << bits) + uint64_t{bad_word_[c]} * 8;
      if (w + 8 > passed_end || w < t.offset) continue;
      return CheckQcow2BitmapTableEntry((w - t.offset) / 8, bad_value_[c], g_.cluster_size)
          .Context(t.name);
    }
  }
  return Status::Ok();
}

Status Qcow2StreamReader::FinishTruncation() {
  // The first missing byte in virtual order, as the RAM reader's walk would meet it.
  std::optional<Status> first;
  uint64_t first_virt = UINT64_MAX;
  const uint64_t cs = g_.cluster_size;
  for (const auto& [host, n] : data_) {
    // The piece holding the need's first missing byte starts at the cluster's start, or at the
    // need's own start (a run of subclusters) when that is later.
    const uint64_t piece = std::max(n.origin, n.virt & ~(cs - 1));
    if (piece < first_virt) {
      first_virt = piece;
      first = Truncated(piece, "cluster", host - (n.virt - piece), pos_);
    }
  }
  for (const auto& [host, n] : compressed_) {
    if (!CompressedInRange(host, n.compressed_length, pos_) && n.virt < first_virt) {
      first_virt = n.virt;
      first = Truncated(n.virt, "compressed cluster", host, pos_);
    }
  }
  if (first) return *first;
  // The rest end inside their last sector, where the file ends.
  while (!compressed_.empty()) {
    CompressedNeed n = std::move(compressed_.begin()->second);
    compressed_.erase(compressed_.begin());
    BYOI_RETURN_IF_ERROR(Dispatch(std::move(n)));
  }
  return Status::Ok();
}

Result<uint64_t> Qcow2StreamReader::Finish() {
  if (!error_.ok()) return error_;
  Status s = [&]() -> Status {
    if (!opened_) BYOI_RETURN_IF_ERROR(OpenHeader(true));
    const Qcow2Header& h = open_.header;
    // What lies past the end of the file reads as zeros, as qemu's block layer returns it.
    static constexpr uint8_t kZeros[kQcow2SnapshotHeaderSize] = {};
    while (snapshot_index_ < h.nb_snapshots) {
      std::memcpy(snapshot_entry_ + snapshot_filled_, kZeros,
                  kQcow2SnapshotHeaderSize - snapshot_filled_);
      BYOI_ASSIGN_OR_RETURN(snapshot_pos_, CheckQcow2SnapshotEntry(h, snapshot_index_,
                                                                   snapshot_pos_, snapshot_entry_));
      ++snapshot_index_;
      snapshot_filled_ = 0;
    }
    if (open_.bitmaps.present && !bitmap_dir_parsed_) BYOI_RETURN_IF_ERROR(ParseBitmapDirectory());
    if (h.l1_size > 0 && !InQcow2File(h.l1_table_offset, uint64_t{h.l1_size} * 8, pos_)) {
      return Invalid(fmt::format("L1 table at {} lies outside the image", Hex(h.l1_table_offset)));
    }
    if (!l2_.empty()) {
      auto it = std::min_element(l2_.begin(), l2_.end(), [](const auto& a, const auto& b) {
        return a.second.l1_index < b.second.l1_index;
      });
      return Invalid(fmt::format("L2 table at {} (L1 index {}) lies outside the image",
                                 Hex(it->first), it->second.l1_index));
    }
    BYOI_RETURN_IF_ERROR(FinishTruncation());
    BYOI_RETURN_IF_ERROR(FlushZeros());
    while (pool_ && pool_->in_flight() > 0) BYOI_RETURN_IF_ERROR(DrainPool(true));
    if (given_ != g_.virtual_size) {
      return Status::Error(
          Code::kInternal,
          fmt::format("qcow2 stream reader gave {} of {} virtual bytes", given_, g_.virtual_size));
    }
    return Status::Ok();
  }();
  BYOI_RETURN_IF_ERROR(Fail(std::move(s)));
  return g_.virtual_size;
}

}  // namespace byoi
