// The agent's heap policy: what glibc keeps of freed memory. Set once at start (main); tests that
// measure CPU time set it too, so that they measure what the agent runs.
#pragma once

namespace byoi {

// Freed memory is kept for reuse up to 64 MiB, and only blocks of 32 MiB and more are mapped and
// unmapped (mallopt). With glibc's default thresholds, a block freed and allocated again went
// back to the kernel each time and came back as fresh pages, a fault per page: libcurl (7.88)
// allocates each transfer's 8 MiB receive buffer and frees it at the transfer's end, one transfer
// per piece of a download, and a growing JSON array is reallocated into new mappings. On the VMs
// we measure on, those faults cost more CPU than the copies into the pages.
void SetHeapPolicy();

}  // namespace byoi
