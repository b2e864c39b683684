#include "agent/base/heap.hpp"

#include <malloc.h>

namespace byoi {

void SetHeapPolicy() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

}  // namespace byoi
