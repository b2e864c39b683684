// The pipeline runner: one job, top to bottom (docs/pipeline.md): plan → fetch → verify → write →
// repartition → boot → finish. Each step calls one stage's narrow interface and reports into the
// StatusBoard; the failure policy lives in runner.cpp, where the order happens.
#pragma once

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/boot/reboot.hpp"
#include "agent/job/job_options.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/status.hpp"

namespace byoi {

struct RunOptions {
  JobOptions job;
  bool dry_run = false;  // stop after verify: no disk is opened
  // What reboots the machine at the end; null means the real one (reboot(2)). Borrowed: it must
  // outlive every RunJob call.
  PowerControl* power = nullptr;
};

// Runs `manifest` to the end. The board was Start()ed by the caller and holds the outcome: done,
// or error with the catalogue message. Returns the same outcome as a Status. On failure before
// writing the disk is untouched; after writing began, its first and last MiB are zeroed.
// Under --reboot other than none a successful job reboots the machine after board.Done() and does
// not return (with a real PowerControl).
Status RunJob(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
              const CancelToken& cancel);

}  // namespace byoi
