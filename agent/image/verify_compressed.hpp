// Proof, before the first byte is written, that every compressed cluster of an image inflates
// (docs/pipeline.md step 3): the writer inflates clusters as it writes, so a corrupt one found then
// would leave a half-written disk; found here, the disk stays untouched.
#pragma once

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"

namespace byoi {

// Inflates every compressed cluster of `layout` into a scratch buffer, on `threads` threads (0:
// one per core), each thread taking 16 MiB slices of the virtual disk in turn and checking
// `cancel` before each. Returns Ok when each inflates to exactly one cluster; otherwise kInvalid
// with the detail of the failing cluster at the lowest virtual offset ("compressed cluster at
// virtual offset 0x280000: corrupt deflate stream"), or kCancelled. Memory: one cluster and one
// decompressor per thread. Images without compressed clusters cost one walk of their map.
// `layout` and its bytes must outlive the call.
Status VerifyCompressedClusters(const ImageLayout& layout, unsigned threads,
                                const CancelToken& cancel);

}  // namespace byoi
