// libFuzzer target for stream mode's OVA and VMDK readers (through StreamImage, as convert and a
// job use them): the input's first two bytes pick a memory budget and the size of the pieces the
// file arrives in, the rest is the file (an OVA or a VMDK; other inputs are left to the other
// targets). The sink traps on anything that breaks the VirtualDiskSink contract, a successful read
// must have given every byte, and the RAM reader must then accept the same file (its manifest
// digests and compressed grains included) and, where the disk is small, give the same disk.
// Bounded: the readers' budget is at most 32 MiB; the disk is kept in memory only up to 16 MiB.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "agent/image/format.hpp"
#include "agent/image/open_image.hpp"
#include "agent/image/stream_image.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"
#include "tests/fuzz/checking_sink.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace byoi;
  if (size < 2) return 0;
  std::span<const uint8_t> file(data + 2, size - 2);
  const ImageFormat format = SourceFormat(file);
  if (format != ImageFormat::kOva && format != ImageFormat::kVmdk) return 0;
  StreamImageOptions options;
  options.memory_budget = uint64_t{1024} << (data[0] % 16);  // 1 KiB .. 32 MiB
  options.threads = 1;
  const size_t piece = data[1] == 0 ? SIZE_MAX : size_t{data[1]} * 37;

  fuzz::CheckingSink sink;
  StreamImage reader(sink, options, [&](const StreamHead& head) {
    if (!head.virtual_size) __builtin_trap();
    sink.SetSize(*head.virtual_size);
    return Status::Ok();
  });
  auto vsize = fuzz::FeedInPieces(reader, file, piece, data[1] % 2);
  if (!vsize.ok()) return 0;

  // The RAM reader must agree: it accepts the file (its manifest's digests too), and its disk is
  // the same.
  auto image = OpenImage(file);
  if (!image.ok()) __builtin_trap();
  CancelToken cancel;
  if (image->ova && !VerifyOvaManifest(file, *image->ova, cancel).ok()) __builtin_trap();
  fuzz::CheckSameDisk(image->layout, *vsize, sink);
  return 0;
}
