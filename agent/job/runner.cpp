#include "agent/job/runner.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/base/messages.hpp"
#include "agent/base/units.hpp"
#include "agent/fetch/fetch.hpp"
#include "agent/image/format.hpp"
#include "agent/image/image_buffer.hpp"

namespace byoi {

namespace {

// Without a checksum in the manifest we still compute one, so the status shows the operator what
// was installed.
constexpr HashAlgo kDefaultReportedHash = HashAlgo::kSha256;

HashAlgo ReportedHash(const Manifest& manifest) {
  return manifest.checksum ? manifest.checksum->algo : kDefaultReportedHash;
}

Result<FetchOptions> MakeFetchOptions(const JobOptions& job) {
  FetchOptions opts;
  if (job.memory_limit) {
    opts.memory_budget = *job.memory_limit;
  } else {
    BYOI_ASSIGN_OR_RETURN(opts.memory_budget, DefaultMemoryBudget());
  }
  opts.attempts = job.download_attempts;
  opts.retry_delay = std::chrono::milliseconds(static_cast<int64_t>(job.retry_delay * 1000));
  opts.stall_timeout = std::chrono::milliseconds(static_cast<int64_t>(job.stall_timeout * 1000));
  opts.ca_bundle = job.ca_bundle;
  opts.insecure = job.insecure;
  opts.on_retry = [](std::string_view notice) { spdlog::warn("download: {}", notice); };
  return opts;
}

// Step 2: the image into RAM, hashed on the way.
Result<FetchResult> Download(const Manifest& manifest, const RunOptions& options,
                             StatusBoard& board, const CancelToken& cancel) {
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
  BYOI_ASSIGN_OR_RETURN(FetchResult fetched, FetchImage(req, opts, progress, cancel));
  spdlog::info("download: {} in {:.1f} s, {} request(s), {} restart(s) from byte 0",
               HumanBytes(fetched.image.size()), fetched.seconds, fetched.requests,
               fetched.restarts);
  board.FinishStep(Step::kDownload);
  return fetched;
}

// Step 3: the checksum, then the format against the declared type. (The disk-size check joins
// here once a disk is chosen.)
Result<FormatInfo> Verify(const Manifest& manifest, const FetchResult& fetched,
                          StatusBoard& board) {
  board.BeginStep(Step::kVerify, "verifying image");
  const HashAlgo algo = ReportedHash(manifest);
  const std::string actual = fetched.DigestOf(algo);
  board.SetChecksum(actual);
  if (manifest.checksum && actual != manifest.checksum->hex) {
    return Status::Error(
        Code::kInvalid,
        fmt::format("{} of {} bytes differs", HashAlgoName(algo), fetched.image.size()),
        msg::ChecksumMismatch(HashAlgoName(algo), actual, manifest.checksum->hex));
  }
  FormatInfo info = DetectFormat(fetched.image.bytes());
  BYOI_RETURN_IF_ERROR(CheckDeclaredType(info, manifest.type));
  std::string table = info.table == PartitionTable::kGpt   ? " (GPT)"
                      : info.table == PartitionTable::kMbr ? " (MBR)"
                                                           : "";
  std::string checksum = manifest.checksum
                             ? fmt::format("{} matches", HashAlgoName(algo))
                             : fmt::format("no checksum given, {} computed", HashAlgoName(algo));
  board.FinishStep(Step::kVerify,
                   fmt::format("{}{}, virtual size {} ({} bytes); {}", info.name, table,
                               HumanBytes(info.virtual_size), info.virtual_size, checksum));
  return info;
}

Status RunSteps(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
                const CancelToken& cancel) {
  // Until the write stage exists, only a dry run can succeed; refuse before downloading anything.
  if (!options.dry_run) return Status::Error(Code::kUnsupported, "writing is not built yet");
  BYOI_ASSIGN_OR_RETURN(FetchResult fetched, Download(manifest, options, board, cancel));
  BYOI_RETURN_IF_ERROR(cancel.Check());
  BYOI_ASSIGN_OR_RETURN(FormatInfo info, Verify(manifest, fetched, board));
  // A dry run stops here: no disk was opened.
  for (Step step :
       {Step::kWrite, Step::kPartition, Step::kConfigDrive, Step::kBootloader, Step::kReboot}) {
    board.SkipStep(step, "dry run");
  }
  board.Done();
  return Status::Ok();
}

}  // namespace

Status RunJob(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
              const CancelToken& cancel) {
  Status s = RunSteps(manifest, options, board, cancel);
  if (!s.ok()) {
    spdlog::error("job failed: {}", s.ToString());
    board.Fail(s);
  }
  return s;
}

}  // namespace byoi
