// The pipeline runner: one job, top to bottom (design.md §1): plan → fetch → verify → write →
// repartition → boot → finish. Each step calls one stage's narrow interface and reports into the
// StatusBoard; the failure policy lives in runner.cpp, where the order happens.
#pragma once

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/commands.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/status.hpp"

namespace byoi {

struct RunOptions {
  JobOptions job;
  bool dry_run = false;  // stop after verify: no disk is opened
};

// Runs `manifest` to the end. The board was Start()ed by the caller and holds the outcome: done,
// or error with the catalogue message. Returns the same outcome as a Status. On failure before
// writing the disk is untouched; after writing began, its first and last MiB are zeroed.
Status RunJob(const Manifest& manifest, const RunOptions& options, StatusBoard& board,
              const CancelToken& cancel);

}  // namespace byoi
