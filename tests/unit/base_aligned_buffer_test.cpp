// AlignedBuffer (aligned_buffer.hpp): alignment, zero-filling, moves, and an allocation that
// cannot be had answered without ending the process.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "agent/base/aligned_buffer.hpp"
#include "agent/base/bytes.hpp"

// GCC names AddressSanitizer with a macro, clang with a feature.
#if defined(__SANITIZE_ADDRESS__)
#define BYOI_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BYOI_ASAN 1
#endif
#endif
#ifndef BYOI_ASAN
#define BYOI_ASAN 0
#endif

namespace byoi {
namespace {

TEST(AlignedBuffer, IsAlignedAndZeroFilledWhenAsked) {
  for (size_t alignment : {size_t{512}, size_t{4096}, size_t{1} << 16}) {
    AlignedBuffer zeroed(3 * alignment + 5, alignment);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(zeroed.data()) % alignment, 0u);
    EXPECT_EQ(zeroed.size(), 3 * alignment + 5);
    EXPECT_TRUE(IsAllZero(zeroed.data(), zeroed.size()));
    AlignedBuffer raw = AlignedBuffer::Uninitialized(alignment, alignment);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(raw.data()) % alignment, 0u);
  }
}

TEST(AlignedBuffer, AMoveHandsTheBytesOver) {
  AlignedBuffer a(4096, 4096);
  a.data()[7] = 42;
  uint8_t* const bytes = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), bytes);
  EXPECT_EQ(b.data()[7], 42);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state
  EXPECT_EQ(a.size(), 0u);
  AlignedBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.data(), bytes);
  EXPECT_EQ(c.size(), 4096u);
}

TEST(AlignedBuffer, TryUninitializedAnswersNothingWhenTheMemoryCannotBeHad) {
  std::optional<AlignedBuffer> fits = AlignedBuffer::TryUninitialized(1 << 20, 4096);
  ASSERT_TRUE(fits.has_value());
  EXPECT_EQ(fits->size(), size_t{1} << 20);
#if BYOI_ASAN
  GTEST_SKIP() << "AddressSanitizer reports an impossible allocation instead of failing it";
#else
  // More than any address space: posix_memalign fails with ENOMEM.
  EXPECT_FALSE(AlignedBuffer::TryUninitialized(std::numeric_limits<size_t>::max() / 2, 4096));
#endif
}

}  // namespace
}  // namespace byoi
