// `byoi-agent convert SOURCE TARGET [--type qcow2|raw|ova|vmdk] [--write-mode auto|ram|stream]`
// and `byoi-agent inspect IMAGE [--json]` (docs/cli.md): the image engine and the writer, outside
// a job. convert writes an image's virtual disk to a block device or a file (created or resized to
// the virtual size), in one of the two write modes of a job (docs/pipeline.md): ram holds SOURCE
// in memory under the same budget as a download and verifies it whole (metadata, an OVA's
// manifest digests, every compressed cluster) before the first write; stream reads it front to
// back and writes while it reads, with bounded memory. inspect describes an image (an OVA's files
// and the disk it installs too), its partitions and the boot loader UEFI firmware would start from
// its ESP.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/base/units.hpp"
#include "agent/boot/esp.hpp"
#include "agent/cli/commands.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/stream_writer.hpp"
#include "agent/disk/target.hpp"
#include "agent/disk/writer.hpp"
#include "agent/image/image_buffer.hpp"  // DefaultMemoryBudget
#include "agent/image/open_image.hpp"
#include "agent/image/partition_table.hpp"
#include "agent/image/raw_source.hpp"
#include "agent/image/stream_image.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

CancelToken g_cancel;

extern "C" void OnSignal(int) { g_cancel.Cancel(); }

int Fail(const Status& s) {
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return kExitJobError;
}

// The source image held in memory for the commands: the file mapped read-only (its page-cache
// pages, no copy), under the same budget rule as a download. A copy into an ImageBuffer (what
// LoadFile does) costs more than the whole write for a large image, and the commands gain
// nothing from it: the runner's image is already in RAM when it is written.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept
      : fd_(std::move(o.fd_)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }

  static Result<MappedFile> Open(const std::string& path, uint64_t budget) {
    BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("examining " + path, errno);
    if (!S_ISREG(st.st_mode)) return Status::Error(Code::kInvalid, path + " is not a file");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > budget) {
      return Status::Error(Code::kTooBig, fmt::format("{} has {} bytes, more than the memory "
                                                      "budget of {}",
                                                      path, size, budget));
    }
    MappedFile m;
    m.fd_ = std::move(fd);
    if (size == 0) return m;
    // Not MAP_POPULATE: the writer's threads fault pages in as they write them, in parallel.
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, m.fd_.get(), 0);
    if (p == MAP_FAILED) return Status::FromErrno("mapping " + path, errno);
    m.data_ = static_cast<uint8_t*>(p);
    m.size_ = size;
    return m;
  }

  std::span<const uint8_t> bytes() const { return {data_, static_cast<size_t>(size_)}; }
  uint64_t size() const { return size_; }
  // The file, open: for a decoder, which reads it with FeedFile rather than through the mapping.
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

Result<uint64_t> Budget(std::optional<uint64_t> limit) {
  if (limit) return *limit;
  return DefaultMemoryBudget();
}

// How a file is read through StreamImage: the budget, and the declared type for the catalogue's
// sentences.
Result<StreamImageOptions> ImageOptions(const ConvertArgs& args) {
  StreamImageOptions options;
  BYOI_ASSIGN_OR_RETURN(options.memory_budget, Budget(args.memory_limit));
  if (!args.type.empty()) options.type = args.type;
  return options;
}

Result<MappedFile> Load(const std::string& path, std::optional<uint64_t> limit) {
  BYOI_ASSIGN_OR_RETURN(uint64_t budget, Budget(limit));
  return MappedFile::Open(path, budget);
}

// libblkid's view of [offset, offset + size) of the virtual disk; nothing found when the range
// lies outside it.
Result<Signature> ProbeVirtualDisk(VirtualReader& reader, uint64_t offset, uint64_t size) {
  const uint64_t vsize = reader.layout().virtual_size();
  if (size == 0 || offset > vsize) return Signature{};
  return ProbeFilesystem(
      [&reader](uint64_t at, std::span<uint8_t> out) { return reader.Read(at, out); }, offset,
      std::min(size, vsize - offset));
}

// "qcow2", "vmdk", "ova" or "raw" from the first bytes of a file too big to load, for the message.
std::string SniffType(const std::string& path) {
  auto fd = OpenFile(path, O_RDONLY);
  auto size = fd.ok() ? FileSize(fd->get(), path) : Result<uint64_t>(fd.status());
  if (!size.ok()) return "raw";
  std::vector<uint8_t> head(std::min<uint64_t>(*size, 64 << 10));
  if (!PreadAll(fd->get(), head, 0).ok()) return "raw";
  return std::string(FormatName(SourceFormat(head)));
}

void PrintProgress(uint64_t done, uint64_t total) {
  static uint64_t last_percent = 101;
  uint64_t percent = total == 0 ? 100 : done * 100 / total;
  if (percent == last_percent) return;
  last_percent = percent;
  std::fprintf(stderr, "\rwriting: %3u%% (%s of %s)", static_cast<unsigned>(percent),
               HumanBytes(done).c_str(), HumanBytes(total).c_str());
  if (done == total) std::fprintf(stderr, "\n");
}

// The loader the agent would pick on the image's ESP (docs/boot.md order), found by the same code
// as a job, reading the image's virtual disk in place.
Result<BootLoader> FindImageBootLoader(VirtualReader& reader, const PartitionTable& table) {
  ReadAtFn read = [&reader](uint64_t offset, std::span<uint8_t> out) {
    return reader.Read(offset, out);
  };
  BYOI_ASSIGN_OR_RETURN(EspLocation esp, LocateEsp(read, table, "the image"));
  return FindBootLoader(read, esp, "", "the image");
}

// "qcow2", "vmdk", "ova" or "raw", the names of the catalogue messages, for what the head shows.
std::string HeadType(const StreamHead& head) { return std::string(FormatName(head.format.format)); }

// The --type rule of a job (format.hpp CheckDeclaredType) for what the head shows; a declared
// vmdk (no manifest type) must be one.
Status CheckType(const std::string& declared, const StreamHead& head) {
  if (declared.empty()) return Status::Ok();
  if (declared == "vmdk") {
    if (head.format.format == ImageFormat::kVmdk) return Status::Ok();
    return Status::Error(Code::kInvalid, "detected " + head.format.contents,
                         msg::FormatMismatch(head.format.name, "vmdk"));
  }
  const ImageType type = declared == "qcow2" ? ImageType::kQcow2
                         : declared == "ova" ? ImageType::kOva
                                             : ImageType::kRaw;
  return CheckDeclaredType(head.format, type);
}

// Takes the virtual disk and drops it: the verify pass of a compressed file in ram mode.
class DiscardSink : public VirtualDiskSink {
 public:
  Status Write(uint64_t, std::span<const uint8_t>) override { return g_cancel.Check(); }
  Status Zero(uint64_t, uint64_t) override { return Status::Ok(); }
};

// The StreamWriter of a convert, made in the head callback (once the virtual size is known and
// the declared type checked); StreamImage is given this sink before it exists.
class TargetSink : public VirtualDiskSink {
 public:
  explicit TargetSink(const std::string& path) : path_(path) {}

  // Opens the target and the writer. `virtual_size` 0: unknown (a compressed raw file), so a
  // file target is made as large as its file system allows and cut to size by Finish.
  Status Open(const StreamHead& head) {
    type_ = HeadType(head);
    const uint64_t vsize = head.virtual_size.value_or(0);
    Target::Options topts;
    topts.file_size = vsize;
    struct stat st {};
    const bool is_file = ::stat(path_.c_str(), &st) != 0 || S_ISREG(st.st_mode);
    if (!head.virtual_size && is_file) {
      // ext4 takes files up to 16 TiB; others more. The file stays sparse until written.
      for (uint64_t size : {uint64_t{1} << 50, (uint64_t{16} << 40) - (uint64_t{1} << 20)}) {
        topts.file_size = size;
        auto t = Target::Open(path_, topts);
        if (t.ok() || t.status().code() != Code::kIo) {
          target_ = std::move(t);
          break;
        }
      }
      cut_ = true;
    } else {
      target_ = Target::Open(path_, topts);
    }
    if (!target_ || !target_->ok()) {
      return Status(target_ ? target_->status() : Status::Error(Code::kIo, "opening " + path_))
          .DefaultMessage(msg::CantWrite(type_));
    }
    StreamWriteOptions wopts;
    wopts.image_type = type_;
    BYOI_ASSIGN_OR_RETURN(writer_, StreamWriter::Create(**target_, vsize, wopts, g_cancel));
    return Status::Ok();
  }

  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
    return writer_->Write(offset, bytes);
  }
  Status Zero(uint64_t offset, uint64_t length) override { return writer_->Zero(offset, length); }

  // Everything arrived: writes the rest, then the held-back first MiB, then cuts a file made
  // larger than the image to its size.
  Result<StreamWriteStats> Finish(uint64_t virtual_size) {
    if (!writer_) {
      return Status::Error(Code::kInternal, "the image ended before its head was known");
    }
    BYOI_RETURN_IF_ERROR(writer_->Flush(virtual_size));
    BYOI_RETURN_IF_ERROR(writer_->Commit());
    if (cut_ && ::truncate(path_.c_str(), static_cast<off_t>(virtual_size)) != 0) {
      return Status::FromErrno("cutting " + path_ + " to the image's size", errno)
          .DefaultMessage(msg::CantWrite(type_));
    }
    return writer_->stats();
  }

  uint64_t accepted() const { return writer_ ? writer_->bytes_accepted() : 0; }

 private:
  std::string path_;
  std::string type_ = "raw";
  std::optional<Result<Target>> target_;
  std::unique_ptr<StreamWriter> writer_;
  bool cut_ = false;
};

void PrintWritten(const std::string& target, uint64_t vsize, double seconds,
                  const StreamWriteStats& stats) {
  double rate = seconds > 0 ? vsize / seconds : 0;
  std::fprintf(stderr, "wrote %s to %s in %.2f s (%s): %s of data, %s zeroed\n",
               HumanBytes(vsize).c_str(), target.c_str(), seconds, HumanRate(rate).c_str(),
               HumanBytes(stats.bytes_written).c_str(), HumanBytes(stats.bytes_zeroed).c_str());
}

// Stream mode: SOURCE read once, front to back, through StreamImage into a StreamWriter; the head
// is checked (--type, the disk's size) before the target is opened.
int ConvertStream(const ConvertArgs& args) {
  auto options = ImageOptions(args);
  if (!options.ok()) return Fail(options.status());
  auto fd = OpenFile(args.source, O_RDONLY);
  if (!fd.ok()) return Fail(fd.status());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0)
    return Fail(Status::FromErrno("examining " + args.source, errno));
  if (!S_ISREG(st.st_mode))
    return Fail(Status::Error(Code::kInvalid, args.source + " is not a file"));
  ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto t0 = std::chrono::steady_clock::now();
  TargetSink sink(args.target);
  StreamImage image(sink, *options, [&](const StreamHead& head) {
    BYOI_RETURN_IF_ERROR(CheckType(args.type, head));
    return sink.Open(head);
  });
  std::string type = SniffType(args.source);
  auto fail = [&](Status s) {
    // The magic names a plain file's type (a qcow2 of a refused version too); a decoded one's
    // is known once its head was.
    if (image.head().container != Compressor::kNone && !image.head().format.name.empty()) {
      type = HeadType(image.head());
    }
    return Fail(
        std::move(s).Context("reading " + args.source).DefaultMessage(msg::CantWrite(type)));
  };
  FeedOptions feed;
  feed.source = args.source;
  feed.drop_cache = true;  // the page cache must not end up holding the file
  Status read = FeedFile(fd->get(), static_cast<uint64_t>(st.st_size), image, g_cancel, feed);
  if (!read.ok()) return fail(std::move(read));
  auto vsize = image.Finish();
  if (!vsize.ok()) return fail(vsize.status());
  auto stats = sink.Finish(*vsize);
  if (!stats.ok()) return fail(stats.status());
  PrintWritten(args.target, *vsize,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               *stats);
  std::fprintf(stderr, "stream mode: the image reader held at most %s\n",
               HumanBytes(image.memory_peak()).c_str());
  return kExitOk;
}

// Ram mode for a compressed file (the RAM reader cannot seek into it): decoded once from memory
// into nothing, to prove it decodes whole and to learn its size, then again into the target. A
// corrupt stream never reaches the target.
int ConvertCompressed(const ConvertArgs& args, const MappedFile& file) {
  auto result = ImageOptions(args);
  if (!result.ok()) return Fail(result.status());
  const StreamImageOptions options = *result;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto decode = [&](StreamImage& image) -> Result<uint64_t> {
    FeedOptions feed;
    feed.source = args.source;
    BYOI_RETURN_IF_ERROR(FeedFile(file.fd(), file.size(), image, g_cancel, feed));
    return image.Finish();
  };
  auto t0 = std::chrono::steady_clock::now();
  DiscardSink discard;
  StreamImage verify(discard, options,
                     [&](const StreamHead& head) { return CheckType(args.type, head); });
  auto vsize = decode(verify);
  std::string type = verify.head().format.name.empty() ? "raw" : HeadType(verify.head());
  if (!vsize.ok()) {
    return Fail(Status(vsize.status())
                    .Context("reading " + args.source)
                    .DefaultMessage(msg::CantWrite(type)));
  }
  std::fprintf(stderr, "decoded %s of %s in %.2f s\n", HumanBytes(*vsize).c_str(),
               std::string(CompressorName(verify.head().container)).c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  t0 = std::chrono::steady_clock::now();
  TargetSink sink(args.target);
  StreamImage image(sink, options, [&](StreamHead head) {
    head.virtual_size = *vsize;  // learnt by the first pass
    return sink.Open(head);
  });
  auto written = decode(image);
  if (written.ok() && *written != *vsize) {
    written = Status::Error(Code::kInternal, "the image decoded to another size the second time");
  }
  Result<StreamWriteStats> stats =
      written.ok() ? sink.Finish(*vsize) : Result<StreamWriteStats>(written.status());
  if (!stats.ok()) {
    return Fail(Status(stats.status())
                    .Context("reading " + args.source)
                    .DefaultMessage(msg::CantWrite(type)));
  }
  PrintWritten(args.target, *vsize,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               *stats);
  return kExitOk;
}

// The parts of a compressed file's virtual disk that inspect reads, decoded into a sparse buffer
// where every other byte reads as zeros: decoding stops once each kept byte came (a large file is
// decoded no further than its last kept range). `complete` says whether the whole file was
// decoded, and then `size` is exact.
struct DecodedDisk {
  ImageBuffer bytes;  // [0, end of the last kept range), or less when the disk ended before
  StreamHead head;
  bool complete = false;
  uint64_t size = 0;
};

// The head of a compressed file's virtual disk that inspect decodes first: its partition table.
constexpr uint64_t kInspectHead = 1 << 20;

// A range of the virtual disk: [begin, end).
struct KeptRange {
  uint64_t begin = 0;
  uint64_t end = 0;
};

Result<DecodedDisk> DecodeRanges(const MappedFile& file, std::vector<KeptRange> keep) {
  std::sort(keep.begin(), keep.end(), [](auto& a, auto& b) { return a.begin < b.begin; });
  std::vector<KeptRange> merged;
  for (const KeptRange& r : keep) {
    if (r.end <= r.begin) continue;
    if (!merged.empty() && r.begin <= merged.back().end) {
      merged.back().end = std::max(merged.back().end, r.end);
    } else {
      merged.push_back(r);
    }
  }
  if (merged.empty()) return Status::Error(Code::kInternal, "nothing to decode");
  BYOI_ASSIGN_OR_RETURN(ImageBuffer buffer, ImageBuffer::Create(merged.back().end));

  class KeepSink : public VirtualDiskSink {
   public:
    KeepSink(const std::vector<KeptRange>& keep, ImageBuffer& out) : keep_(keep), out_(out) {
      for (const KeptRange& r : keep) wanted_ += r.end - r.begin;
    }
    Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
      return Keep(offset, bytes.size(), bytes.data());
    }
    Status Zero(uint64_t offset, uint64_t length) override { return Keep(offset, length, nullptr); }

   private:
    // Pieces never overlap (VirtualDiskSink), so the kept bytes that came can be counted.
    Status Keep(uint64_t offset, uint64_t length, const uint8_t* data) {
      for (const KeptRange& r : keep_) {
        const uint64_t a = std::max(offset, r.begin);
        const uint64_t b = std::min(offset + length, r.end);
        if (a >= b) continue;
        if (data != nullptr) {
          BYOI_RETURN_IF_ERROR(out_.WriteAt(a, {data + (a - offset), static_cast<size_t>(b - a)}));
        }
        came_ += b - a;
      }
      if (came_ == wanted_) return Status::Error(Code::kCancelled, "enough");
      return Status::Ok();
    }
    const std::vector<KeptRange>& keep_;
    ImageBuffer& out_;
    uint64_t wanted_ = 0;
    uint64_t came_ = 0;
  };

  DecodedDisk out;
  KeepSink sink(merged, buffer);
  StreamImage image(sink, {}, nullptr);
  FeedOptions feed;
  feed.piece = 1 << 20;  // pieces small enough that a large file stops soon after its last range
  Status s = FeedFile(file.fd(), file.size(), image, g_cancel, feed);
  if (s.ok()) {
    auto size = image.Finish();
    if (!size.ok() && size.status().code() != Code::kCancelled) return size.status();
    out.complete = size.ok();
    if (size.ok()) out.size = *size;
  } else if (s.code() != Code::kCancelled) {
    return s;
  }
  // The buffer spans the kept ranges (zero ranges wrote nothing), unless the disk ended first.
  const uint64_t end = out.complete ? std::min(out.size, merged.back().end) : merged.back().end;
  if (buffer.size() < end) {
    const uint8_t zero = 0;
    BYOI_RETURN_IF_ERROR(buffer.WriteAt(end - 1, {&zero, 1}));
  }
  out.bytes = std::move(buffer);
  out.head = image.head();
  return out;
}

// What inspect reads of a compressed file's virtual disk, given its first MiB: that MiB (the
// partition table), each partition's first MiB (the file systems' superblocks) and the ESP's
// first GiB (its loaders; an ESP is a few hundred MiB). Ranges past `limit` (the virtual size
// when the container or a qcow2 header records it) are left out.
std::vector<KeptRange> InspectRanges(std::span<const uint8_t> head, uint64_t limit) {
  constexpr uint64_t kEsp = 1ull << 30;
  std::vector<KeptRange> keep = {{0, kInspectHead}};
  auto image = OpenImage(head);
  if (!image.ok()) return keep;
  auto table = ReadPartitionTable(image->layout);
  if (!table.ok()) return keep;
  for (const auto& p : table->partitions) {
    const uint64_t begin = p.offset_bytes();
    if (begin >= limit) continue;
    const uint64_t size = std::min(p.size_bytes(), limit - begin);
    keep.push_back({begin, begin + std::min(size, p.esp ? kEsp : kInspectHead)});
  }
  return keep;
}

// inspect's view of an OVA: its files, each with its role, and the disk it installs.
boost::json::object OvaJson(const OvaInfo& ova) {
  boost::json::array files;
  for (size_t i = 0; i < ova.members.size(); ++i) {
    const OvaMember& m = ova.members[i];
    std::string role = i == ova.descriptor                       ? "descriptor"
                       : i == ova.manifest.value_or(SIZE_MAX)    ? "manifest"
                       : i == ova.certificate.value_or(SIZE_MAX) ? "certificate"
                       : std::find(ova.disks.begin(), ova.disks.end(), i) != ova.disks.end()
                           ? "disk"
                           : "other";
    boost::json::object f{{"name", PrintableText(m.name)}, {"size", m.size}, {"role", role}};
    f["installed"] = i == ova.disk;
    f["digest"] = nullptr;
    for (const OvaDigest& d : ova.digests) {
      if (d.member == i) f["digest"] = d.algo;
    }
    files.push_back(std::move(f));
  }
  boost::json::object disk{{"file", PrintableText(ova.members[ova.disk].name)},
                           {"id", PrintableText(ova.disk_id)},
                           {"format", PrintableText(ova.disk_format)}};
  disk["capacity"] = nullptr;
  if (ova.disk_capacity) disk["capacity"] = *ova.disk_capacity;
  return {{"files", std::move(files)},
          {"virtualSystem", PrintableText(ova.system)},
          {"disks", ova.disks.size()},
          {"disk", std::move(disk)}};
}

boost::json::object VmdkJson(const VmdkInfo& v) {
  return {{"subformat", v.subformat},
          {"createType", v.create_type},
          {"version", v.version},
          {"flags", v.flags},
          {"grainSize", v.grain_size},
          {"footer", v.footer},
          {"grainTables", v.grain_tables},
          {"allocatedBytes", v.data_bytes},
          {"compressedBytes", v.compressed_bytes},
          {"zeroBytes", v.zero_bytes},
          {"unallocatedBytes", v.unallocated_bytes}};
}

}  // namespace

int RunConvert(const ConvertArgs& args) {
  std::string mode = args.write_mode;
  if (mode == "auto") {
    auto budget = Budget(args.memory_limit);
    if (!budget.ok()) return Fail(budget.status());
    struct stat st {};
    mode = ::stat(args.source.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) > *budget
               ? "stream"
               : "ram";
  }
  if (mode == "stream") return ConvertStream(args);
  auto buffer = Load(args.source, args.memory_limit);
  if (!buffer.ok()) {
    Status s = buffer.status();
    if (s.code() == Code::kTooBig) s.DefaultMessage(msg::TooBigForMemory(SniffType(args.source)));
    return Fail(s);
  }
  if (DetectCompressor(buffer->bytes().first(std::min<size_t>(buffer->size(), 6))) !=
      Compressor::kNone) {
    return ConvertCompressed(args, *buffer);
  }
  std::string type(FormatName(SourceFormat(buffer->bytes())));
  // The rule of a job and of stream mode: a declared raw image needs a partition table.
  StreamHead head;
  head.format = DetectFormat(buffer->bytes());
  if (Status s = CheckType(args.type, head); !s.ok()) {
    return Fail(std::move(s).Context("reading " + args.source));
  }
  auto image = OpenImage(buffer->bytes());
  if (!image.ok()) {
    return Fail(Status(image.status())
                    .Context("reading " + args.source)
                    .DefaultMessage(msg::CantWrite(type)));
  }
  // Every compressed cluster inflates, or the target is not even opened (docs/pipeline.md,
  // failure policy: a job that fails before writing leaves the disk untouched).
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  if (image->ova) {
    Status digests = VerifyOvaManifest(buffer->bytes(), *image->ova, g_cancel);
    if (!digests.ok()) {
      return Fail(std::move(digests)
                      .Context("checking the manifest of " + args.source)
                      .DefaultMessage(msg::CantWrite(type)));
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  // The file is mapped, not copied: the budget beside it may hold its inflated clusters.
  Result<uint64_t> budget = Budget(args.memory_limit);
  if (!budget.ok()) return Fail(budget.status());
  Result<bool> kept =
      VerifyAndKeepCompressedClusters(*image, *budget - buffer->bytes().size(), g_cancel);
  if (!kept.ok()) {
    return Fail(Status(kept.status())
                    .Context("reading " + args.source)
                    .DefaultMessage(msg::CantWrite(type)));
  }
  if (image->compressed_bytes() > 0) {
    std::fprintf(stderr, "inflated %s of compressed clusters in %.2f s%s\n",
                 HumanBytes(image->compressed_bytes()).c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 *kept ? ", kept for the writer" : "");
  }
  Target::Options topts;
  topts.file_size = image->layout.virtual_size();
  auto target = Target::Open(args.target, topts);
  if (!target.ok()) return Fail(Status(target.status()).DefaultMessage(msg::CantWrite(type)));

  WriteOptions wopts;
  wopts.image_type = type;
  ProgressFn progress;
  if (::isatty(STDERR_FILENO)) progress = PrintProgress;
  auto stats = WriteImage(image->layout, *target, wopts, progress, g_cancel);
  if (!stats.ok()) return Fail(stats.status());
  double rate = stats->seconds > 0 ? image->layout.virtual_size() / stats->seconds : 0;
  std::fprintf(stderr, "wrote %s to %s in %.2f s (%s): %s of data, %s zeroed\n",
               HumanBytes(image->layout.virtual_size()).c_str(), args.target.c_str(),
               stats->seconds, HumanRate(rate).c_str(), HumanBytes(stats->bytes_written).c_str(),
               HumanBytes(stats->bytes_zeroed).c_str());
  return kExitOk;
}

int RunInspect(const InspectArgs& args) {
  // No memory budget: the mapping is read only where inspect looks (the file's pages come and go
  // with the page cache), and a compressed file's decoded parts are bounded by InspectRanges.
  auto buffer = MappedFile::Open(args.image, std::numeric_limits<uint64_t>::max());
  if (!buffer.ok()) return Fail(buffer.status());
  // A compressed file: the parts of its virtual disk that inspect reads, decoded.
  const Compressor container =
      DetectCompressor(buffer->bytes().first(std::min<size_t>(buffer->size(), 6)));
  DecodedDisk decoded;
  std::optional<uint64_t> virtual_size;
  if (container != Compressor::kNone) {
    // The head first, for the partition table; then what the table says inspect reads.
    auto head = DecodeRanges(*buffer, {{0, kInspectHead}});
    if (!head.ok()) return Fail(Status(head.status()).Context("reading " + args.image));
    // The container's recorded size is the decoded file's: a raw disk's size, not a qcow2's,
    // VMDK's or OVA's (a qcow2's header says its own).
    const ImageFormat inner = head->head.format.format;
    const bool raw = inner == ImageFormat::kRaw || inner == ImageFormat::kOther;
    if (head->complete) {
      virtual_size = head->size;
    } else if (head->head.virtual_size) {
      virtual_size = head->head.virtual_size;
    } else if (auto n = RecordedDecodedSize(container, buffer->bytes()); n && raw) {
      virtual_size = (*n + 511) / 512 * 512;
    }
    decoded = std::move(*head);
    // Partitions far past any real disk (a hostile table) are not decoded.
    constexpr uint64_t kMaxSpan = 1ull << 46;
    std::vector<KeptRange> keep =
        InspectRanges(decoded.bytes.bytes(), std::min(virtual_size.value_or(kMaxSpan), kMaxSpan));
    if (!decoded.complete && keep.size() > 1) {
      auto disk = DecodeRanges(*buffer, std::move(keep));
      if (!disk.ok()) return Fail(Status(disk.status()).Context("reading " + args.image));
      decoded = std::move(*disk);
      if (decoded.complete) virtual_size = decoded.size;
    }
  }
  auto image = OpenImage(container == Compressor::kNone ? buffer->bytes() : decoded.bytes.bytes());
  if (container == Compressor::kNone) virtual_size = image.ok() ? image->layout.virtual_size() : 0;
  if (!image.ok()) return Fail(Status(image.status()).Context("reading " + args.image));
  auto table = ReadPartitionTable(image->layout);
  VirtualReader reader(image->layout);

  boost::json::object out;
  out["format"] = FormatName(image->format);
  if (virtual_size) {
    out["virtualSize"] = *virtual_size;
  } else {
    out["virtualSize"] = nullptr;  // a compressed file that does not record its decoded size
  }
  out["fileSize"] = buffer->size();
  if (container != Compressor::kNone) out["container"] = CompressorName(container);
  if (image->qcow2) {
    const Qcow2Info& q = *image->qcow2;
    out["version"] = q.version;
    out["clusterSize"] = q.cluster_size;
    out["compressionType"] = CompressionName(q.compression);
    out["extendedL2"] = q.extended_l2;
    out["refcountBits"] = q.refcount_bits;
    out["snapshots"] = q.snapshots;
    out["dirty"] = q.dirty;
    out["lazyRefcounts"] = q.lazy_refcounts;
    out["allocatedBytes"] = q.data_bytes;
    out["compressedBytes"] = q.compressed_bytes;
    out["zeroBytes"] = q.zero_bytes;
    out["unallocatedBytes"] = q.unallocated_bytes;
  }
  if (image->ova) out["ova"] = OvaJson(*image->ova);
  if (image->vmdk) out["vmdk"] = VmdkJson(*image->vmdk);
  boost::json::object pt;
  if (!table.ok()) {
    pt["type"] = "invalid";
    pt["error"] = table.status().detail();
  } else {
    pt["type"] = PartitionTableTypeName(table->type);
    if (table->type == PartitionTableType::kGpt) {
      pt["sectorSize"] = table->sector_size;
      pt["diskGuid"] = table->disk_guid;
      pt["fromBackup"] = table->gpt_from_backup;
    } else if (table->type == PartitionTableType::kMbr) {
      pt["diskId"] = fmt::format("{:#010x}", table->mbr_signature);
    }
    boost::json::array parts;
    for (const auto& p : table->partitions) {
      boost::json::object j;
      j["number"] = p.number;
      j["start"] = p.offset_bytes();
      j["size"] = p.size_bytes();
      j["type"] = p.type;
      j["typeName"] = PartitionTypeName(p, table->type);
      if (table->type == PartitionTableType::kGpt) {
        j["guid"] = p.uuid;
        j["name"] = PrintableText(p.name);  // names come from the image
      } else {
        j["bootable"] = p.bootable;
      }
      j["esp"] = p.esp;
      auto fs = ProbeVirtualDisk(reader, p.offset_bytes(), p.size_bytes());
      j["filesystem"] = fs.ok() ? PrintableText(fs->type) : "";
      j["label"] = fs.ok() ? PrintableText(fs->label) : "";
      parts.push_back(std::move(j));
    }
    pt["partitions"] = std::move(parts);
    out["esp"] = nullptr;
    out["bootLoader"] = nullptr;
    if (const Partition* esp = table->Esp()) {
      out["esp"] = esp->number;
      Result<BootLoader> loader = FindImageBootLoader(reader, *table);
      if (loader.ok()) {
        out["bootLoader"] = {{"path", loader->path},
                             {"foundBy", loader->found_by},
                             {"label", PrintableText(loader->csv_label)}};
      } else if (loader.status().code() != Code::kNotFound) {
        out["bootLoaderError"] = PrintableText(loader.status().detail());
      }
    }
    if (table->type == PartitionTableType::kNone) {
      auto fs = ProbeVirtualDisk(reader, 0, image->layout.virtual_size());
      out["contents"] = fs.ok() ? PrintableText(fs->type) : "";
    }
  }
  out["partitionTable"] = std::move(pt);
  const boost::json::object& table_json = out["partitionTable"].as_object();

  if (args.json) {
    std::printf("%s\n", boost::json::serialize(out).c_str());
    return kExitOk;
  }
  auto str = [](const boost::json::value& v) {
    return v.is_string() ? std::string(v.as_string()) : boost::json::serialize(v);
  };
  std::printf("format:          %s\n", str(out["format"]).c_str());
  if (image->qcow2) {
    const Qcow2Info& q = *image->qcow2;
    std::printf("version:         %u\n", q.version);
    std::printf("cluster size:    %s\n", HumanBytes(q.cluster_size).c_str());
    std::printf("compression:     %s%s\n", std::string(CompressionName(q.compression)).c_str(),
                q.extended_l2 ? ", extended L2" : "");
  }
  if (container != Compressor::kNone) {
    std::printf("container:       %s\n", std::string(CompressorName(container)).c_str());
  }
  if (image->ova) {
    const boost::json::object& ova = out["ova"].as_object();
    std::printf("files:\n");
    for (const auto& v : ova.at("files").as_array()) {
      const auto& f = v.as_object();
      std::string role = str(f.at("role"));
      if (f.at("installed").as_bool()) role += ", installed";
      if (f.at("digest").is_string()) role += ", " + str(f.at("digest")) + " in the manifest";
      std::printf("  %-30s %10s  %s\n", str(f.at("name")).c_str(),
                  HumanBytes(f.at("size").to_number<uint64_t>()).c_str(), role.c_str());
    }
    const auto& disk = ova.at("disk").as_object();
    const std::string capacity =
        disk.at("capacity").is_null()
            ? std::string()
            : ", capacity " + HumanBytes(disk.at("capacity").to_number<uint64_t>());
    std::printf("installed disk:  %s (disk %s of virtual system %s; %s disk(s) in the OVA%s)\n",
                str(disk.at("file")).c_str(), str(disk.at("id")).c_str(),
                str(ova.at("virtualSystem")).c_str(), str(ova.at("disks")).c_str(),
                capacity.c_str());
  }
  if (image->vmdk) {
    const VmdkInfo& v = *image->vmdk;
    std::printf("vmdk:            %s, version %u, grain %s%s\n", v.subformat.c_str(), v.version,
                HumanBytes(v.grain_size).c_str(), v.footer ? ", directory in the footer" : "");
  }

  if (virtual_size) {
    std::printf("virtual size:    %s (%llu bytes)\n", HumanBytes(*virtual_size).c_str(),
                static_cast<unsigned long long>(*virtual_size));
  } else {
    std::printf("virtual size:    unknown (the container does not record it)\n");
  }
  auto print_allocated = [](uint64_t data, uint64_t compressed, uint64_t zero, uint64_t none) {
    std::printf("allocated:       %s data, %s compressed, %s zero, %s unallocated\n",
                HumanBytes(data).c_str(), HumanBytes(compressed).c_str(), HumanBytes(zero).c_str(),
                HumanBytes(none).c_str());
  };
  if (const auto& q = image->qcow2) {
    print_allocated(q->data_bytes, q->compressed_bytes, q->zero_bytes, q->unallocated_bytes);
  }
  if (const auto& v = image->vmdk) {
    print_allocated(v->data_bytes, v->compressed_bytes, v->zero_bytes, v->unallocated_bytes);
  }
  if (!table.ok()) {
    std::printf("partition table: invalid (%s)\n", table.status().detail().c_str());
    return kExitOk;
  }
  std::printf("partition table: %s", str(table_json.at("type")).c_str());
  if (table->type == PartitionTableType::kGpt) {
    std::printf(" (%u-byte sectors, disk GUID %s%s)", table->sector_size, table->disk_guid.c_str(),
                table->gpt_from_backup ? ", read from the backup header" : "");
  }
  std::printf("\n");
  if (table->type == PartitionTableType::kNone) {
    std::string contents = str(out["contents"]);
    std::printf("contents:        %s\n", contents.empty() ? "unknown" : contents.c_str());
  }
  for (const auto& v : table_json.at("partitions").as_array()) {
    const auto& j = v.as_object();
    std::printf(
        "  %2s  start %-10s size %-10s %-22s %s%s%s%s\n", str(j.at("number")).c_str(),
        HumanBytes(j.at("start").to_number<uint64_t>()).c_str(),
        HumanBytes(j.at("size").to_number<uint64_t>()).c_str(), str(j.at("typeName")).c_str(),
        j.contains("name") ? ("\"" + str(j.at("name")) + "\" ").c_str() : "",
        str(j.at("filesystem")).c_str(),
        j.at("label").as_string().empty() ? "" : (" \"" + str(j.at("label")) + "\"").c_str(),
        j.contains("guid") ? (" " + str(j.at("guid"))).c_str() : "");
  }
  if (const Partition* esp = table->Esp()) {
    std::printf("EFI system partition: %d\n", esp->number);
    if (const boost::json::value& loader = out["bootLoader"]; loader.is_object()) {
      std::printf("boot loader:     %s (%s)\n", str(loader.at("path")).c_str(),
                  str(loader.at("foundBy")).c_str());
    } else if (out.contains("bootLoaderError")) {
      std::printf("boot loader:     unreadable (%s)\n", str(out["bootLoaderError"]).c_str());
    } else {
      std::printf("boot loader:     none found\n");
    }
  } else {
    std::printf("EFI system partition: none\n");
  }
  return kExitOk;
}

}  // namespace byoi
