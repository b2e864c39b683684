#include "agent/job/runner.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/boot/boot_entry.hpp"
#include "agent/boot/boot_mode.hpp"
#include "agent/boot/configdrive.hpp"
#include "agent/boot/efi_vars.hpp"
#include "agent/boot/esp.hpp"
#include "agent/boot/reboot.hpp"
#include "agent/disk/gpt.hpp"
#include "agent/disk/inventory.hpp"
#include "agent/disk/partition_add.hpp"
#include "agent/disk/safety.hpp"
#include "agent/disk/stream_writer.hpp"
#include "agent/disk/target.hpp"
#include "agent/disk/wipe.hpp"
#include "agent/disk/writer.hpp"
#include "agent/fetch/fetch.hpp"
#include "agent/image/format.hpp"
#include "agent/image/image_buffer.hpp"
#include "agent/image/open_image.hpp"
#include "agent/image/stream_image.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"
#include "agent/swarm/swarm.hpp"

namespace byoi {

namespace {

// Without a checksum in the manifest we still compute one, so the status shows the operator what
// was installed.
constexpr HashAlgo kDefaultReportedHash = HashAlgo::kSha256;

// Enough of the virtual disk to see a GPT made for 4096-byte sectors (header at LBA 1).
constexpr uint64_t kHeadBytes = 8192 + 512;

HashAlgo ReportedHash(const Manifest& manifest) {
  return manifest.checksum ? manifest.checksum->algo : kDefaultReportedHash;
}

std::string TypeName(const Manifest& manifest) { return std::string(ImageTypeName(manifest.type)); }

// The disk the job writes to, and the other disks of its group (where a stale config drive must
// not survive).
struct TargetDisk {
  Disk disk;
  std::vector<Disk> group_peers;
};

Result<FetchOptions> MakeFetchOptions(const JobOptions& job) {
  FetchOptions opts;
  if (job.memory_limit) {
    opts.memory_budget = *job.memory_limit;
  } else {
    BYOI_ASSIGN_OR_RETURN(opts.memory_budget, DefaultMemoryBudget());
  }
  opts.attempts = job.download_attempts;
  opts.connections = job.connections;
  opts.retry_delay = job.retry_delay;
  opts.stall_timeout = job.stall_timeout;
  opts.ca_bundle = job.ca_bundle;
  opts.proxy = job.proxy;
  opts.insecure = job.insecure;
  opts.on_retry = [](std::string_view notice) { spdlog::warn("download: {}", notice); };
  return opts;
}

// The boot order policy the boot step will apply, or nullopt when it will write no boot entry:
// on legacy BIOS, or under policy none. The manifest's efiBootOrder, when given, wins over the
// agent's --efi-boot-order.
std::optional<BootOrderPolicy> BootEntryPolicy(const Manifest& manifest, const JobOptions& job) {
  if (DetectBootMode(job.efivars) == BootMode::kLegacy) return std::nullopt;
  const BootOrderPolicy policy = manifest.efi_boot_order.value_or(job.efi_boot_order);
  if (policy == BootOrderPolicy::kNone) return std::nullopt;
  return policy;
}

// Step 1: the target, before a byte is downloaded, so that a wrong disk group or a busy disk is
// refused in a second rather than after a 10 GiB download. The firmware's boot variables too,
// when the job will set a boot entry: an NVRAM the boot step could not use (an oversized or
// malformed BootOrder, an unreadable efivarfs) must fail the job while the disk is untouched, not
// after it was written. Reads sysfs, /proc and efivarfs only.
Result<TargetDisk> Plan(const Manifest& manifest, const JobOptions& job) {
  InventoryOptions inventory_options;
  BYOI_ASSIGN_OR_RETURN(inventory_options.mapping, ParseGroupMapping(job.disk_groups));
  Result<Inventory> inventory = ScanDisks(inventory_options);
  TargetDisk target;
  if (!job.disk.empty()) {
    // --disk is the operator's explicit choice and wins over diskGroupId.
    BYOI_ASSIGN_OR_RETURN(target.disk, DescribeTarget(job.disk));
  } else {
    if (!inventory.ok()) return inventory.status();
    BYOI_ASSIGN_OR_RETURN(target.disk, SelectDisk(*inventory, manifest.disk_group_id));
  }
  if (inventory.ok()) target.group_peers = OtherDisksOfGroup(*inventory, target.disk);
  BYOI_RETURN_IF_ERROR(CheckNotInUse(target.disk));
  if (BootEntryPolicy(manifest, job)) {
    EfivarfsVars vars(job.efivars);
    BYOI_RETURN_IF_ERROR(
        CheckBootVariables(vars).Context("reading the EFI boot variables in " + job.efivars));
  }
  spdlog::info("plan: {} ({}, {} bytes, {}-byte sectors){}", target.disk.path,
               target.disk.is_file ? "file" : DiskKindName(target.disk.kind),
               target.disk.size_bytes, target.disk.logical_sector_size,
               job.disk.empty() ? fmt::format(", first disk of group {}", manifest.disk_group_id)
                                : std::string(", given with --disk"));
  return target;
}

// The swarm's options for a job: its figures reach the status as the helper reports them.
SwarmOptions MakeSwarmOptions(const JobOptions& job, StatusBoard& board) {
  SwarmOptions swarm_opts;
  swarm_opts.upload_rate = job.upload_rate;
  swarm_opts.listen = job.swarm_listen;
  swarm_opts.dht_nodes = job.swarm_dht;
  swarm_opts.on_stats = [&board](const SwarmStats& stats, bool seeding) {
    board.SetSwarm(SwarmStatus{stats.peers, stats.from_peers, stats.from_web_seed, stats.uploaded,
                               stats.hash_failures, seeding});
  };
  return swarm_opts;
}

// The download step's comment (and log line) after a swarm download: where the bytes came from.
std::string SwarmComment(uint64_t bytes, double seconds, const SwarmStats& stats) {
  spdlog::info("download: {} through the swarm in {:.1f} s: {} from peers, {} from the web seed",
               HumanBytes(bytes), seconds, HumanBytes(stats.from_peers),
               HumanBytes(stats.from_web_seed));
  std::string comment = fmt::format(
      "{} in {:.0f} s through the swarm: {} from peers, {} from the web seed", HumanBytes(bytes),
      seconds, HumanBytes(stats.from_peers), HumanBytes(stats.from_web_seed));
  if (stats.hash_failures > 0) {
    comment += fmt::format("; {} piece(s) failed their hash check, their senders banned",
                           stats.hash_failures);
  }
  return comment;
}

// Step 2 through the swarm (docs/pipeline.md, "Swarm downloads"): the swarm's figures reach the
// status as the helper reports them, the download step's comment says where the bytes came from.
Result<FetchResult> DownloadThroughSwarm(const std::string& torrent, const FetchRequest& req,
                                         const FetchOptions& opts, const JobOptions& job,
                                         const ProgressFn& progress, StatusBoard& board,
                                         const CancelToken& cancel, std::unique_ptr<Swarm>* swarm) {
  BYOI_ASSIGN_OR_RETURN(
      FetchResult fetched,
      FetchSwarm({req, torrent}, opts, MakeSwarmOptions(job, board), progress, cancel, swarm));
  board.FinishStep(Step::kDownload,
                   SwarmComment(fetched.image.size(), fetched.seconds, (*swarm)->stats()));
  return fetched;
}

// Step 2: the image into RAM, hashed on the way. With a manifest's `torrent`, through the swarm
// (docs/pipeline.md, "Swarm downloads"): `*swarm` then holds the helper, seeding until the job
// ends.
Result<FetchResult> Download(const Manifest& manifest, const RunOptions& options,
                             StatusBoard& board, const CancelToken& cancel,
                             std::unique_ptr<Swarm>* swarm) {
  board.BeginStep(Step::kDownload, "downloading image");
  BYOI_ASSIGN_OR_RETURN(FetchOptions opts, MakeFetchOptions(options.job));
  FetchRequest req;
  req.url = manifest.url;
  req.headers = manifest.headers;
  req.type = manifest.type;
  req.hashes = {ReportedHash(manifest)};
  if (opts.insecure) spdlog::warn("download: TLS certificate verification is off (--insecure)");
  auto progress = [&board](uint64_t done, uint64_t total) {
    board.StepProgress(Step::kDownload, done, total);
  };
  if (!manifest.torrent.empty()) {
    return DownloadThroughSwarm(manifest.torrent, req, opts, options.job, progress, board, cancel,
                                swarm);
  }
  BYOI_ASSIGN_OR_RETURN(FetchResult fetched, FetchImage(req, opts, progress, cancel));
  spdlog::info("download: {} in {:.1f} s, {} request(s), {} restart(s) from byte 0",
               HumanBytes(fetched.image.size()), fetched.seconds, fetched.requests,
               fetched.restarts);
  board.FinishStep(Step::kDownload);
  return fetched;
}

// What the verify step says of an OVA: the disk it installs and the manifest checked; a warning
// when the OVA holds other disks, which are not installed (docs/status.md).
std::string OvaNote(const OvaInfo& ova, const std::optional<VmdkInfo>& vmdk, StatusBoard& board) {
  const std::string& disk = ova.members[ova.disk].name;
  if (ova.disks.size() > 1) {
    std::string warning = fmt::format(
        "the OVA holds {} disks: only {}, the first that VirtualSystem {} attaches, is installed",
        ova.disks.size(), disk, ova.system);
    spdlog::warn("verify: {}", warning);
    board.Warn(std::move(warning));
  }
  const auto number = std::find(ova.disks.begin(), ova.disks.end(), ova.disk) - ova.disks.begin();
  const std::string digests = ova.digests.empty()
                                  ? std::string("no manifest")
                                  : fmt::format("manifest: {} digests match", ova.digests.size());
  return fmt::format(" ({}, disk {} of {}, {} VMDK; {})", disk, number + 1, ova.disks.size(),
                     vmdk ? vmdk->subformat : std::string("?"), digests);
}

// Step 3: the checksum, the format against the declared type, every qcow2 or VMDK metadata table
// and an OVA's manifest digests (a corrupt image is refused here, before the disk is touched), and
// the virtual disk against the target: its size and the sector size its GPT was made for.
// The image's checksum against the manifest's, shown in the status; without one in the manifest
// the operator is warned that nothing vouched for these bytes (docs/status.md, warnings).
Status VerifyChecksum(const Manifest& manifest, const std::string& actual, uint64_t bytes,
                      StatusBoard& board) {
  const HashAlgo algo = ReportedHash(manifest);
  board.SetChecksum(actual);
  if (!manifest.checksum) {
    std::string warning = fmt::format(
        "no checksum given: the image was not verified against a known checksum ({} {} computed)",
        HashAlgoName(algo), actual);
    spdlog::warn("verify: {}", warning);
    board.Warn(std::move(warning));
    return Status::Ok();
  }
  if (actual != manifest.checksum->hex) {
    return Status::Error(Code::kInvalid,
                         fmt::format("{} of {} bytes differs", HashAlgoName(algo), bytes),
                         msg::ChecksumMismatch(HashAlgoName(algo), actual, manifest.checksum->hex));
  }
  return Status::Ok();
}

// The verify step's comment: what the image is (for an OVA, `ova_note`: its disk), its virtual size
// and how it was checked.
std::string VerifyComment(const FormatInfo& info, uint64_t vsize, const Manifest& manifest,
                          std::string_view ova_note = {}) {
  const HashAlgo algo = ReportedHash(manifest);
  std::string table = info.table == PartitionTableType::kGpt   ? " (GPT)"
                      : info.table == PartitionTableType::kMbr ? " (MBR)"
                                                               : "";
  std::string checksum = manifest.checksum
                             ? fmt::format("{} matches", HashAlgoName(algo))
                             : fmt::format("no checksum given, {} computed", HashAlgoName(algo));
  return fmt::format("{}{}{}, virtual size {} ({} bytes); {}", info.name, ova_note, table,
                     HumanBytes(vsize), vsize, checksum);
}

Result<OpenedImage> Verify(const Manifest& manifest, const FetchResult& fetched, const Disk* disk,
                           const std::string& why, StatusBoard& board, const CancelToken& cancel) {
  board.BeginStep(Step::kVerify, "verifying image");
  BYOI_RETURN_IF_ERROR(VerifyChecksum(manifest, fetched.DigestOf(ReportedHash(manifest)),
                                      fetched.image.size(), board));
  FormatInfo info = DetectFormat(fetched.image.bytes());
  BYOI_RETURN_IF_ERROR(CheckDeclaredType(info, manifest.type));
  Result<OpenedImage> opened = OpenImage(fetched.image.bytes());
  if (!opened.ok()) {
    return std::move(opened).status().Context(fmt::format("reading the {} metadata", info.name));
  }
  std::string ova_note;
  if (opened->ova) {
    BYOI_RETURN_IF_ERROR(VerifyOvaManifest(fetched.image.bytes(), *opened->ova, cancel)
                             .Context("checking the OVA's manifest"));
    ova_note = OvaNote(*opened->ova, opened->vmdk, board);
  }
  const uint64_t vsize = opened->layout.virtual_size();
  // The partition table of the virtual disk (a qcow2's first clusters may be compressed).
  std::vector<uint8_t> head(std::min(vsize, kHeadBytes));
  VirtualReader reader(opened->layout);
  BYOI_RETURN_IF_ERROR(reader.Read(0, head).Context("reading the image's first sectors"));
  if (disk != nullptr) {
    BYOI_RETURN_IF_ERROR(CheckImageFits(vsize, *disk));
    BYOI_RETURN_IF_ERROR(CheckImageSectorSize(head, *disk, TypeName(manifest)));
  }
  // Every compressed cluster is inflated once here, on all cores: the writer would find a corrupt
  // one only after the disk's old content is gone. What they inflate to is kept for the writer
  // when it fits the RAM budget beside the image (else the writer inflates them again).
  if (opened->compressed_bytes() > 0) {
    auto t0 = std::chrono::steady_clock::now();
    // The image buffer's capacity is the RAM budget; a dry run writes nothing and keeps nothing.
    const uint64_t room = disk ? fetched.image.capacity() - fetched.image.size() : 0;
    Result<bool> kept = VerifyAndKeepCompressedClusters(*opened, room, cancel);
    if (!kept.ok()) return std::move(kept).status().Context("checking the compressed clusters");
    spdlog::info("verify: {} of compressed clusters inflate in {:.1f} s{}",
                 HumanBytes(opened->compressed_bytes()),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 *kept ? ", kept for the writer" : "");
  }
  board.FinishStep(Step::kVerify,
                   VerifyComment(info, vsize, manifest, ova_note) + "; ram mode: " + why);
  return opened;
}

// The first writes of both modes: old signatures off the disk (file systems, RAID, partition
// tables at both ends) and stale config drives off the other disks of its group, then the disk
// opened for the image. A regular file keeps its size: it stands for a whole disk.
Result<Target> PrepareDisk(const TargetDisk& target) {
  const Disk& disk = target.disk;
  {
    BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenDiskExclusive(disk, O_RDWR | O_CLOEXEC));
    BYOI_ASSIGN_OR_RETURN(std::vector<Signature> wiped, WipeSignatures(disk, fd.get()));
    for (const Signature& s : wiped) spdlog::info("write: erased old {} at {}", s.type, s.offset);
  }
  BYOI_ASSIGN_OR_RETURN(std::vector<std::string> stale,
                        RemoveStaleConfigDrives(target.group_peers));
  for (const std::string& line : stale) spdlog::info("write: {}", line);
  return Target::Open(disk.path, Target::Options{});
}

// Step 4 in ram mode: the image's virtual disk, first MiB last (the writer's order), then read
// back when asked.
Status Write(const Manifest& manifest, const JobOptions& job, const OpenedImage& image,
             const TargetDisk& target, StatusBoard& board, const CancelToken& cancel) {
  board.BeginStep(Step::kWrite, "writing image");
  BYOI_ASSIGN_OR_RETURN(Target out, PrepareDisk(target));
  WriteOptions write_options;
  write_options.image_type = TypeName(manifest);
  auto progress = [&board, vsize = image.layout.virtual_size()](uint64_t done, uint64_t) {
    board.StepProgress(Step::kWrite, done, vsize);
  };
  BYOI_ASSIGN_OR_RETURN(WriteStats stats,
                        WriteImage(image.layout, out, write_options, progress, cancel));
  spdlog::info("write: {} written, {} zeroed in {} requests, in {:.1f} s{}",
               HumanBytes(stats.bytes_written), HumanBytes(stats.bytes_zeroed), stats.zero_requests,
               stats.seconds, out.direct() ? " (O_DIRECT)" : "");
  if (manifest.verify_written.value_or(job.verify_written)) {
    BYOI_RETURN_IF_ERROR(VerifyImageWritten(image.layout, out, write_options, progress, cancel));
    spdlog::info("write: read back and compared, {}", HumanBytes(image.layout.virtual_size()));
  }
  board.FinishStep(Step::kWrite);
  return Status::Ok();
}

// Stream mode's memory (docs/pipeline.md, "Write modes"): everything it holds comes out of the RAM
// budget, at most 512 MiB in all whatever the image: the download's window of pieces and its
// receive buffers, the writer's chunks in flight, the held-back first MiB, and the rest for the
// image reader (qcow2 clusters that wait for their L2 entry, its tables).
struct StreamMemory {
  uint64_t window = 0;          // FetchOptions::window_bytes
  uint64_t receive_buffer = 0;  // FetchOptions::receive_buffer, per connection
  uint64_t chunk = 0;           // StreamWriteOptions::chunk_size
  unsigned writer_threads = 0;  // chunks in flight: threads + 2
  uint64_t reader = 0;          // StreamImageOptions::memory_budget
};

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMaxStreamMemory = 512 * kMiB;

StreamMemory PlanStreamMemory(uint64_t budget, int connections) {
  const uint64_t b = std::min(budget, kMaxStreamMemory);
  StreamMemory m;
  m.writer_threads = b >= 64 * kMiB ? 4 : 2;
  // Large writes: a loop device over a file copies each request as it comes, and 16 MiB ones
  // took a stream raw deploy 0.92 x the time of 4 MiB ones (5 pairs, 0.87-0.95).
  m.chunk = std::clamp<uint64_t>(b / 32 / kMiB * kMiB, kMiB, 16 * kMiB);
  m.window = std::clamp<uint64_t>(b / 4, 2 * kMiB, 64 * kMiB);
  m.receive_buffer = std::clamp<uint64_t>(b / 16 / std::max(connections, 1), 64 << 10, 8 * kMiB);
  const uint64_t fixed = (m.writer_threads + 2) * m.chunk + kMiB /* held */ + m.window +
                         m.receive_buffer * std::max(connections, 1);
  m.reader = b > fixed + kMiB ? b - fixed : kMiB;
  return m;
}

// Where stream mode's reader puts the virtual disk: nowhere until its head passed the checks (then
// the disk is prepared and a StreamWriter made), nowhere at all in a dry run.
class DiskSink : public VirtualDiskSink {
 public:
  Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
    return writer ? writer->Write(offset, bytes) : Status::Ok();
  }
  Status Zero(uint64_t offset, uint64_t length) override {
    return writer ? writer->Zero(offset, length) : Status::Ok();
  }
  uint64_t accepted() const { return writer ? writer->bytes_accepted() : 0; }

  // The first writes: the disk prepared (PrepareDisk) and the writer made, its memory from `mem`.
  // `virtual_size` 0: not known yet (a compressed raw image). `loans`: the download's (or null).
  Status Open(const TargetDisk& disk, uint64_t virtual_size, const Manifest& manifest,
              const JobOptions& job, const StreamMemory& mem, Loans* loans,
              const CancelToken& cancel) {
    BYOI_ASSIGN_OR_RETURN(target, PrepareDisk(disk));
    StreamWriteOptions options;
    options.image_type = TypeName(manifest);
    options.chunk_size = mem.chunk;
    options.threads = mem.writer_threads;
    options.verify_written = manifest.verify_written.value_or(job.verify_written);
    options.loans = loans;
    verify_written = options.verify_written;
    BYOI_ASSIGN_OR_RETURN(writer, StreamWriter::Create(target, virtual_size, options, cancel));
    return Status::Ok();
  }

  // The end of the image: everything but the held-back first MiB on the disk, the partition table
  // in it checked against the disk's sectors, then the first MiB, then the read-back when asked.
  Status Complete(uint64_t virtual_size, const Disk& disk, const std::string& type,
                  const ProgressFn& read_back_progress) {
    BYOI_RETURN_IF_ERROR(writer->Flush(virtual_size));
    BYOI_RETURN_IF_ERROR(CheckImageSectorSize(writer->held(), disk, type));
    BYOI_RETURN_IF_ERROR(writer->Commit());
    if (!verify_written) return Status::Ok();
    BYOI_RETURN_IF_ERROR(writer->VerifyWritten(read_back_progress));
    spdlog::info("write: read back and compared, {}", HumanBytes(virtual_size));
    return Status::Ok();
  }

  Target target;  // outlives `writer`, which borrows it
  std::unique_ptr<StreamWriter> writer;
  bool verify_written = false;
};

// The image reader's and the disk's errors, met while the download feeds them, carry the write's
// message: a failed transfer carries the download's (docs/status.md).
class WriteErrors final : public ByteSink {
 public:
  WriteErrors(ByteSink& inner, std::string message) : inner_(inner), message_(std::move(message)) {}
  Status Start(std::optional<uint64_t> total) override { return Mark(inner_.Start(total)); }
  Status Write(std::span<const uint8_t> bytes) override { return Mark(inner_.Write(bytes)); }

 private:
  Status Mark(Status s) const { return s.ok() ? s : std::move(s).DefaultMessage(message_); }
  ByteSink& inner_;
  const std::string message_;
};

// Steps 2-4 at once in stream mode (docs/pipeline.md, "Write modes"): the image flows from the
// connection (or the swarm's window of pieces: "Swarm downloads") through the hasher and the
// image reader to the disk. Everything the first bytes show
// (the format against the declared type, the virtual size against the disk, a qcow2 header's
// refusals) is checked before the first write; the first MiB reaches the disk only once the whole
// image arrived and its checksum matched. `*touched` tells the caller whether the disk was
// written to, for the failure policy. `target` is null in a dry run: the image is read and
// checked, and goes nowhere.
Status StreamToDisk(const Manifest& manifest, const JobOptions& job, const TargetDisk* target,
                    const std::string& why, StatusBoard& board, const CancelToken& cancel,
                    bool* touched) {
  BYOI_ASSIGN_OR_RETURN(FetchOptions opts, MakeFetchOptions(job));
  const StreamMemory mem = PlanStreamMemory(opts.memory_budget, opts.connections);
  opts.window_bytes = mem.window;
  opts.receive_buffer = mem.receive_buffer;
  board.BeginStep(Step::kDownload, "downloading image");
  spdlog::info("download: stream mode ({}); memory: {} window, {} for the image reader", why,
               HumanBytes(mem.window), HumanBytes(mem.reader));

  // The download's window lends its bytes to the writer, which writes them from there (outlives
  // both).
  Loans loans;
  opts.loans = &loans;
  DiskSink sink;
  std::optional<uint64_t> vsize_known;
  auto on_head = [&](const StreamHead& head) -> Status {
    BYOI_RETURN_IF_ERROR(CheckDeclaredType(head.format, manifest.type));
    vsize_known = head.virtual_size;
    if (target == nullptr) return Status::Ok();
    const Disk& disk = target->disk;
    if (head.virtual_size) BYOI_RETURN_IF_ERROR(CheckImageFits(*head.virtual_size, disk));
    // The disk may have changed while the job was planned (an operator mounted it).
    BYOI_RETURN_IF_ERROR(CheckNotInUse(disk));
    // Until here the disk is untouched, byte for byte.
    *touched = true;
    BYOI_RETURN_IF_ERROR(
        sink.Open(*target, head.virtual_size.value_or(0), manifest, job, mem, &loans, cancel));
    board.BeginStep(Step::kWrite, "writing image while it downloads");
    return Status::Ok();
  };
  StreamImageOptions reader_options;
  reader_options.memory_budget = mem.reader;
  reader_options.type = TypeName(manifest);
  StreamImage image(sink, reader_options, on_head);

  FetchRequest req;
  req.url = manifest.url;
  req.headers = manifest.headers;
  req.type = manifest.type;
  req.hashes = {ReportedHash(manifest)};
  auto progress = [&](uint64_t done, uint64_t total) {
    board.StepProgress(Step::kDownload, done, total);
    if (sink.writer) board.StepProgress(Step::kWrite, sink.accepted(), vsize_known.value_or(0));
  };
  WriteErrors image_errors(image, msg::CantWrite(TypeName(manifest)));
  // Through the swarm (docs/pipeline.md, "Swarm downloads"): the window of pieces ahead of the
  // front is the HTTP download's window; libtorrent's buffers take the receive buffers' share.
  SwarmStats swarm_stats;
  Result<FetchStreamResult> fetched =
      manifest.torrent.empty()
          ? FetchStream(req, opts, image_errors, progress, cancel)
          : StreamSwarm({req, manifest.torrent}, opts, MakeSwarmOptions(job, board), mem.window,
                        image_errors, progress, cancel, &swarm_stats);
  if (!fetched.ok()) {
    return std::move(fetched).status().DefaultMessage(msg::DownloadFailed(manifest.url));
  }
  BYOI_ASSIGN_OR_RETURN(uint64_t vsize, image.Finish());
  spdlog::info("download: {} in {:.1f} s, {} request(s); image reader peak {}",
               HumanBytes(fetched->bytes), fetched->seconds, fetched->requests,
               HumanBytes(image.memory_peak()));
  board.FinishStep(Step::kDownload,
                   manifest.torrent.empty()
                       ? std::string()
                       : SwarmComment(fetched->bytes, fetched->seconds, swarm_stats));

  board.BeginStep(Step::kVerify, "verifying image");
  BYOI_RETURN_IF_ERROR(
      VerifyChecksum(manifest, fetched->DigestOf(ReportedHash(manifest)), fetched->bytes, board));
  const std::string ova_note =
      image.ova() ? OvaNote(*image.ova(), image.head().vmdk, board) : std::string();
  board.FinishStep(Step::kVerify, VerifyComment(image.head().format, vsize, manifest, ova_note) +
                                      "; stream mode: " + why);
  if (!sink.writer) return Status::Ok();  // a dry run

  BYOI_RETURN_IF_ERROR(sink.Complete(
      vsize, target->disk, TypeName(manifest),
      [&board, vsize](uint64_t done, uint64_t) { board.StepProgress(Step::kWrite, done, vsize); }));
  const StreamWriteStats stats = sink.writer->stats();
  spdlog::info("write: {} written, {} zeroed in {} requests while downloading",
               HumanBytes(stats.bytes_written), HumanBytes(stats.bytes_zeroed),
               stats.zero_requests);
  board.FinishStep(Step::kWrite);
  return Status::Ok();
}

// Step 5a: the backup GPT to the disk's real end (MBR disks are left as they are).
Status Repartition(const Disk& disk, StatusBoard& board) {
  board.BeginStep(Step::kPartition, "moving the backup GPT to the end of the disk");
  BYOI_ASSIGN_OR_RETURN(GptRelocation gpt, RelocateBackupGpt(disk));
  std::string comment = !gpt.gpt    ? "MBR or no partition table: nothing to move"
                        : gpt.moved ? "backup GPT moved to the last LBA"
                                    : "backup GPT already at the last LBA";
  board.FinishStep(Step::kPartition,
                   fmt::format("{}; {} partition(s)", comment, gpt.partitions.size()));
  return Status::Ok();
}

// Step 5b: the config-2 partition cloud-init reads at first boot, when the manifest asks for it.
Status AddConfigDrive(const Manifest& manifest, const Disk& disk, StatusBoard& board) {
  if (!manifest.config_drive.enabled) {
    board.SkipStep(Step::kConfigDrive, "the manifest asks for no config drive");
    return Status::Ok();
  }
  board.BeginStep(Step::kConfigDrive, "writing the config drive");
  BYOI_ASSIGN_OR_RETURN(ConfigDrivePartition part, EnsureConfigDrivePartition(disk));
  ConfigDriveContent content = MakeConfigDriveContent(manifest.config_drive);
  BYOI_RETURN_IF_ERROR(WriteConfigDrive(disk, part.partition, content));
  board.FinishStep(Step::kConfigDrive,
                   fmt::format("partition {} ({}{}), instance id {}", part.partition.number,
                               HumanBytes(part.partition.size_bytes()),
                               part.reused ? ", the image's own" : "", content.uuid));
  return Status::Ok();
}

// Step 6: on UEFI, a Boot#### entry for the loader on the image's ESP; on legacy BIOS the image's
// own MBR boot code starts it and there is nothing to do.
Status SetBootEntry(const Manifest& manifest, const JobOptions& job, const Disk& disk,
                    StatusBoard& board) {
  const BootMode mode = DetectBootMode(job.efivars);
  BYOI_ASSIGN_OR_RETURN(std::string warning, BootModeWarning(mode, disk.path));
  if (!warning.empty()) {
    spdlog::warn("bootloader: {}", warning);
    board.Warn(warning);
  }
  if (mode == BootMode::kLegacy) {
    board.SkipStep(Step::kBootloader, LegacySkipReason(job.efivars));
    return Status::Ok();
  }
  const std::optional<BootOrderPolicy> policy = BootEntryPolicy(manifest, job);
  if (!policy) {
    board.SkipStep(Step::kBootloader, !manifest.efi_boot_order
                                          ? "--efi-boot-order none: the boot entries are left alone"
                                          : "efiBootOrder none: the boot entries are left alone");
    return Status::Ok();
  }
  board.BeginStep(Step::kBootloader, "setting the UEFI boot entry");
  Result<EspLocation> esp = FindEsp(disk.path);
  if (!esp.ok() && esp.status().code() == Code::kNotFound && manifest.efi_bootloader_path.empty()) {
    // Already a warning above; an image without an ESP may still boot (a network loader, say).
    board.SkipStep(Step::kBootloader, "the image has no EFI system partition");
    return Status::Ok();
  }
  if (!esp.ok() && esp.status().code() == Code::kIo) return std::move(esp).status();
  if (!esp.ok()) {
    // No ESP, or one without a FAT file system: the loader cannot be on it.
    const std::string shown = manifest.efi_bootloader_path.empty() ? "\\EFI\\BOOT\\BOOTX64.EFI"
                                                                   : manifest.efi_bootloader_path;
    return std::move(esp).status().DefaultMessage(msg::BootloaderNotFound(shown));
  }
  BYOI_ASSIGN_OR_RETURN(BootLoader loader,
                        FindBootLoader(disk.path, *esp, manifest.efi_bootloader_path));
  for (const std::string& note : loader.skipped) {
    spdlog::warn("bootloader: {}", note);
    board.Warn(note);
  }
  BootEntryRequest request;
  request.esp = *esp;
  request.loader_path = loader.path;
  request.label = ChooseBootLabel(loader, manifest.description);
  EfivarfsVars vars(job.efivars);
  BYOI_ASSIGN_OR_RETURN(BootEntryResult entry, InstallBootEntry(vars, request, *policy));
  spdlog::info("bootloader: {} (found by {})", entry.Summary(), loader.found_by);
  board.FinishStep(Step::kBootloader, entry.Summary());
  return Status::Ok();
}

// Step 7: report done, then leave the rescue system. The final status reaches every listener
// (status file, API, backend: the poller holds this thread until the backend has it) inside
// board.Done(), before anything is flushed or rebooted.
// A swarm's helper keeps seeding for --seed-time after done, before the reboot (docs/pipeline.md,
// "Swarm downloads"): the rack's later agents still find the image here.
Status Finish(const JobOptions& job, const Disk& disk, PowerControl& power, StatusBoard& board,
              Swarm* swarm, const CancelToken& cancel) {
  auto seed = [&] {
    if (swarm == nullptr) return;
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(job.seed_time);
    spdlog::info("swarm: seeding for {} s", seconds.count());
    swarm->SeedThenStop(seconds, cancel);
    const SwarmStats stats = swarm->stats();
    spdlog::info("swarm: {} uploaded to peers", HumanBytes(stats.uploaded));
  };
  const RebootMode mode = job.reboot;
  if (mode == RebootMode::kNone) {
    board.SkipStep(Step::kReboot, "--reboot none: the machine stays in the rescue system");
    board.Done();
    seed();
    return Status::Ok();
  }
  board.BeginStep(Step::kReboot, "preparing the reboot");
  RebootPlan plan = PrepareReboot(power, mode, disk.path);
  board.FinishStep(Step::kReboot, plan.note);
  board.Done();
  seed();
  spdlog::info("reboot: {}", plan.note);
  Status s = Reboot(power, plan, disk.path);
  // The job is done and reported: a reboot that fails leaves a working disk behind, so it is
  // logged for the operator rather than turned into a job error.
  if (!s.ok()) spdlog::error("reboot failed: {}", s.ToString());
  return Status::Ok();
}

// The failure policy once writing has begun (docs/pipeline.md): the disk holds a mix of old and
// new bytes, or a new system without its configuration; make it unbootable rather than let the
// next boot find something half-made. The one place this happens: stages return their errors.
void MakeUnbootable(const Disk& disk) {
  Target::Options options;
  Result<Target> target = Target::Open(disk.path, options);
  Status s = target.ok() ? ZeroDiskEnds(*target) : target.status();
  if (s.ok()) {
    spdlog::warn("{}: first and last MiB zeroed after the failure", disk.path);
  } else {
    spdlog::error("{}: could not zero the first and last MiB: {}", disk.path, s.ToString());
  }
}

// True for an image in a gzip, xz, zstd or bzip2 container (compressed raw).
bool IsCompressed(std::span<const uint8_t> bytes) {
  return DetectCompressor(bytes.first(std::min<size_t>(bytes.size(), 6))) != Compressor::kNone;
}

// Steps 3-4 in ram mode for a compressed raw image (gzip, xz, zstd, bzip2): the RAM reader cannot
// seek into it, so it is decoded once, into nothing, before the first write (a corrupt or cut
// stream is found while the disk is untouched, and the decoded disk's size and partition table
// are checked), then decoded again from RAM into the disk through stream mode's reader and writer.
Status WriteCompressedFromRam(const Manifest& manifest, const JobOptions& job,
                              const FetchResult& fetched, const TargetDisk* target,
                              const std::string& why, StatusBoard& board, const CancelToken& cancel,
                              bool* touched) {
  board.BeginStep(Step::kVerify, "verifying image");
  BYOI_RETURN_IF_ERROR(VerifyChecksum(manifest, fetched.DigestOf(ReportedHash(manifest)),
                                      fetched.image.size(), board));
  BYOI_ASSIGN_OR_RETURN(FetchOptions opts, MakeFetchOptions(job));
  // The image in RAM takes its share of the budget; the decode's buffers plan with what is left
  // (at the least, their floor: a few MiB).
  const uint64_t left = opts.memory_budget - std::min(opts.memory_budget, fetched.image.size());
  const StreamMemory mem = PlanStreamMemory(left, opts.connections);
  StreamImageOptions reader_options;
  reader_options.memory_budget = mem.reader;
  reader_options.type = TypeName(manifest);

  // The decode pass keeps the first sectors of the disk: its partition table.
  struct HeadSink : VirtualDiskSink {
    Status Write(uint64_t offset, std::span<const uint8_t> bytes) override {
      for (size_t i = 0; i < bytes.size() && offset + i < head.size(); ++i) {
        head[offset + i] = bytes[i];
      }
      return Status::Ok();
    }
    Status Zero(uint64_t, uint64_t) override { return Status::Ok(); }
    std::vector<uint8_t> head = std::vector<uint8_t>(kHeadBytes, 0);
  } head_sink;
  StreamImage check(head_sink, reader_options, [&](const StreamHead& head) {
    return CheckDeclaredType(head.format, manifest.type);
  });
  auto t0 = std::chrono::steady_clock::now();
  FeedOptions feed;
  feed.source = "the image from RAM";
  BYOI_RETURN_IF_ERROR(FeedFile(fetched.image.fd(), fetched.image.size(), check, cancel, feed));
  BYOI_ASSIGN_OR_RETURN(uint64_t vsize, check.Finish());
  spdlog::info("verify: {} {} decodes to {} in {:.1f} s", CompressorName(check.head().container),
               HumanBytes(fetched.image.size()), HumanBytes(vsize),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (target) {
    BYOI_RETURN_IF_ERROR(CheckImageFits(vsize, target->disk));
    head_sink.head.resize(std::min<uint64_t>(vsize, kHeadBytes));
    BYOI_RETURN_IF_ERROR(CheckImageSectorSize(head_sink.head, target->disk, TypeName(manifest)));
  }
  board.FinishStep(Step::kVerify, VerifyComment(check.head().format, vsize, manifest) +
                                      fmt::format("; {} decoded once; ram mode: {}",
                                                  CompressorName(check.head().container), why));
  if (target == nullptr) return Status::Ok();  // a dry run

  BYOI_RETURN_IF_ERROR(cancel.Check());
  // The disk may have changed while the image downloaded (an operator mounted it).
  BYOI_RETURN_IF_ERROR(CheckNotInUse(target->disk));
  board.BeginStep(Step::kWrite, "writing image");
  *touched = true;
  DiskSink sink;
  BYOI_RETURN_IF_ERROR(sink.Open(*target, vsize, manifest, job, mem, nullptr, cancel));
  StreamImage image(sink, reader_options, nullptr);
  feed.progress = [&](uint64_t) { board.StepProgress(Step::kWrite, sink.accepted(), vsize); };
  BYOI_RETURN_IF_ERROR(FeedFile(fetched.image.fd(), fetched.image.size(), image, cancel, feed));
  BYOI_RETURN_IF_ERROR(image.Finish().status());
  BYOI_RETURN_IF_ERROR(sink.Complete(
      vsize, target->disk, TypeName(manifest),
      [&board, vsize](uint64_t done, uint64_t) { board.StepProgress(Step::kWrite, done, vsize); }));
  board.FinishStep(Step::kWrite);
  return Status::Ok();
}

// Each step's catalogue sentence (docs/status.md) for a failure its stage could not name (an
// unreadable sysfs, a failed system call): `message` is always a catalogue sentence, the cause
// stays in `detail`. A more specific sentence set by the stage (a checksum mismatch, a busy disk)
// is kept.
Status Attach(Status s, std::string_view message) {
  if (!s.ok()) s.DefaultMessage(message);
  return s;
}
template <typename T>
Result<T> Attach(Result<T> r, std::string_view message) {
  if (r.ok()) return r;
  return Attach(std::move(r).status(), message);
}

Status RunSteps(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
                const CancelToken& cancel) {
  const JobOptions& job = options.job;
  // A dry run opens no disk at all: it stops after verify.
  const std::string cant_write = msg::CantWrite(TypeName(manifest));
  std::optional<TargetDisk> target;
  if (!options.dry_run) {
    BYOI_ASSIGN_OR_RETURN(target, Attach(Plan(manifest, job), cant_write));
  }

  // The write mode (docs/pipeline.md, "Write modes"): the manifest's, else the agent's; auto
  // takes the image into RAM and streams it only when it does not fit the RAM budget.
  const WriteMode mode = manifest.write_mode.value_or(job.write_mode);
  std::string why = manifest.write_mode ? fmt::format("writeMode {}", WriteModeName(mode))
                                        : fmt::format("--write-mode {}", WriteModeName(mode));
  std::optional<FetchResult> fetched;
  // The swarm's helper, while it seeds (a manifest with `torrent`, ram mode; in stream mode it
  // stops with the download: what it held is on the disk, not in RAM).
  std::unique_ptr<Swarm> swarm;
  if (mode != WriteMode::kStream) {
    Result<FetchResult> in_ram = Download(manifest, options, board, cancel, &swarm);
    if (mode == WriteMode::kAuto && !in_ram.ok() && in_ram.status().code() == Code::kTooBig) {
      why = "the image does not fit the RAM budget (" + in_ram.status().detail() + ")";
    } else {
      BYOI_ASSIGN_OR_RETURN(fetched, Attach(std::move(in_ram), msg::DownloadFailed(manifest.url)));
      if (mode == WriteMode::kAuto) why = "the image fits the RAM budget";
    }
  }
  BYOI_RETURN_IF_ERROR(cancel.Check());

  // Until the first write the disk is untouched, byte for byte. From then on any failure
  // (cancellation included) leaves its first and last MiB zeroed, here and nowhere else.
  bool touched = false;
  Status s;
  if (fetched && IsCompressed(fetched->image.bytes())) {
    s = Attach(WriteCompressedFromRam(manifest, job, *fetched, target ? &*target : nullptr, why,
                                      board, cancel, &touched),
               cant_write);
  } else if (fetched) {
    BYOI_ASSIGN_OR_RETURN(
        OpenedImage image,
        Attach(Verify(manifest, *fetched, target ? &target->disk : nullptr, why, board, cancel),
               cant_write));
    if (target) {
      BYOI_RETURN_IF_ERROR(cancel.Check());
      // The disk may have changed while the image downloaded (an operator mounted it).
      BYOI_RETURN_IF_ERROR(Attach(CheckNotInUse(target->disk), cant_write));
      touched = true;
      s = Attach(Write(manifest, job, image, *target, board, cancel), cant_write);
    }
  } else {
    s = Attach(
        StreamToDisk(manifest, job, target ? &*target : nullptr, why, board, cancel, &touched),
        cant_write);
  }
  if (options.dry_run) {
    BYOI_RETURN_IF_ERROR(s);
    for (Step step :
         {Step::kWrite, Step::kPartition, Step::kConfigDrive, Step::kBootloader, Step::kReboot}) {
      board.SkipStep(step, "dry run");
    }
    board.Done();
    return Status::Ok();
  }

  const Disk& disk = target->disk;
  if (s.ok()) s = cancel.Check();
  if (s.ok()) s = Attach(Repartition(disk, board), msg::kGptMove);
  if (s.ok()) s = cancel.Check();
  if (s.ok()) s = Attach(AddConfigDrive(manifest, disk, board), msg::kConfigDrive);
  if (s.ok()) s = cancel.Check();
  if (s.ok()) s = Attach(SetBootEntry(manifest, job, disk, board), msg::kBootEntry);
  if (s.ok()) s = cancel.Check();
  if (!s.ok()) {
    if (touched) MakeUnbootable(disk);
    return s;
  }
  RealPowerControl real_power;
  return Finish(job, disk, options.power ? *options.power : real_power, board, swarm.get(), cancel);
}

}  // namespace

Status RunJob(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
              const CancelToken& cancel) {
  Status s = RunSteps(manifest, options, board, cancel);
  if (!s.ok()) board.Fail(s);  // the caller reports the outcome, once
  return s;
}

}  // namespace byoi
