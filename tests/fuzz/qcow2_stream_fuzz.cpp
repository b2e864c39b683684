// libFuzzer target for stream mode's qcow2 reader: the input's first two bytes pick a memory
// budget and the size of the pieces the file arrives in, the rest is the file. The sink traps on
// anything that breaks the VirtualDiskSink contract (a byte given twice, a byte past the virtual
// size), a successful read must have given every byte, and where the RAM reader accepts the same
// file and the disk is small, both readers must produce the same disk. Bounded: the reader's own
// budget is at most 32 MiB; the disk is kept in memory only up to 16 MiB.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <vector>

#include "agent/image/qcow2.hpp"
#include "agent/image/qcow2_stream.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"
#include "tests/fuzz/checking_sink.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace byoi;
  if (size < 2) return 0;
  Qcow2StreamOptions options;
  options.memory_budget = uint64_t{1024} << (data[0] % 16);  // 1 KiB .. 32 MiB
  options.threads = 1;
  const size_t piece = data[1] == 0 ? SIZE_MAX : size_t{data[1]} * 37;
  std::span<const uint8_t> file(data + 2, size - 2);

  fuzz::CheckingSink sink;
  Qcow2StreamReader reader(sink, options, [&](const Qcow2Info& info) {
    sink.SetSize(info.virtual_size);
    return Status::Ok();
  });
  auto vsize = fuzz::FeedInPieces(reader, file, piece, data[1] % 2);
  if (!vsize.ok()) return 0;

  // The RAM reader must agree: it accepts the file, and its disk is the same.
  auto image = ReadQcow2(file);
  if (!image.ok()) __builtin_trap();
  fuzz::CheckSameDisk(image->layout, *vsize, sink);
  return 0;
}
