// Proof, before the first byte is written, that every compressed cluster of an image inflates
// (docs/pipeline.md step 3): the writer inflates clusters as it writes, so a corrupt one found then
// would leave a half-written disk; found here, the disk stays untouched. When RAM allows, the
// clusters inflated here are kept, and the writer copies them instead of inflating them again.
#pragma once

#include "agent/base/cancel.hpp"
#include "agent/base/status.hpp"
#include "agent/image/extent.hpp"
#include "agent/image/image_buffer.hpp"
#include "agent/image/open_image.hpp"

namespace byoi {

// Inflates every compressed cluster of `layout` into a scratch buffer, on `threads` threads (0:
// one per core), each thread taking 16 MiB slices of the virtual disk in turn and checking
// `cancel` before each. Returns Ok when each inflates to exactly one cluster; otherwise kInvalid
// with the detail of the failing cluster at the lowest virtual offset ("compressed cluster at
// virtual offset 0x280000: corrupt deflate stream"), or kCancelled. Memory: one cluster and one
// decompressor per thread. Images without compressed clusters cost one walk of their map.
// `layout` and its bytes must outlive the call.
// With `keep` (an empty buffer of at least the virtual size), each cluster's bytes of the virtual
// disk are also stored in it at their virtual offset, for InflatedLayout; its memory grows by the
// virtual bytes stored compressed (OpenedImage::compressed_bytes), which the caller checks
// against the RAM budget first.
Status VerifyCompressedClusters(const ImageLayout& layout, unsigned threads,
                                const CancelToken& cancel, ImageBuffer* keep = nullptr);

// `layout` whose compressed extents read, as data extents, the clusters VerifyCompressedClusters
// kept in `kept` (at their virtual offsets): the same virtual disk, written without a second
// inflate. Owns both; the image bytes `layout` borrows must outlive the result.
ImageLayout InflatedLayout(ImageLayout layout, ImageBuffer kept);

// Ram mode's verify of an opened image: VerifyCompressedClusters on all cores, keeping what they
// inflate to when it fits in `room` bytes (the RAM budget left beside the image): `image.layout`
// then reads the kept clusters (InflatedLayout). Returns whether they were kept; errors as
// VerifyCompressedClusters, `image` unchanged.
Result<bool> VerifyAndKeepCompressedClusters(OpenedImage& image, uint64_t room,
                                             const CancelToken& cancel);

}  // namespace byoi
