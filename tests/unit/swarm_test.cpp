// The swarm stage's own parts (agent/swarm/): finding the image buffer's memfd, the in-order
// front of the pieces that passed, finding and starting the helper. The swarm itself is tested with
// real peers in tests/integration/test_swarm.py.
#include "agent/swarm/swarm.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "agent/image/image_buffer.hpp"
#include "agent/swarm/swarm.hpp"
#include "agent/swarm/swarm_helper.hpp"

namespace byoi {
namespace {

TEST(SwarmImageBuffer, ItsFdIsTheMemfdBehindTheMapping) {
  Result<ImageBuffer> a = ImageBuffer::Create(64 << 20);
  Result<ImageBuffer> b = ImageBuffer::Create(32 << 20);
  ASSERT_TRUE(a.ok() && b.ok());
  const uint8_t bytes[] = {1, 2, 3};
  ASSERT_TRUE(a->WriteAt(4096, bytes).ok());
  // What is written through the descriptor is what the buffer's mapping shows.
  const uint8_t other[] = {9, 8, 7};
  ASSERT_EQ(::pwrite(a->fd(), other, sizeof other, 4096), 3);
  EXPECT_EQ(a->data()[4096], 9);
  EXPECT_EQ(a->data()[4098], 7);
  EXPECT_NE(a->fd(), b->fd());
  struct stat st {};
  ASSERT_EQ(::fstat(b->fd(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), b->capacity());
}

TEST(SwarmPassedFront, MovesPastWhatPassedInOrderOnly) {
  PassedFront front;
  EXPECT_FALSE(front.started());
  front.Start(5);
  ASSERT_TRUE(front.started());
  std::vector<int> arrived = {1, 3, -1, 5, 99};  // out of order; outside the image: ignored
  EXPECT_EQ(front.Advance(arrived), 0u);
  EXPECT_TRUE(arrived.empty());
  EXPECT_EQ(front.front(), 0u);  // piece 0 has not passed
  arrived = {0};
  EXPECT_EQ(front.Advance(arrived), 0u);
  EXPECT_EQ(front.front(), 2u);  // 0 and 1
  arrived = {2, 4};
  EXPECT_EQ(front.Advance(arrived), 2u);
  EXPECT_EQ(front.front(), 5u);  // the whole image
}

TEST(SwarmHelperPath, TheEnvironmentWinsAndAMissingHelperIsNamed) {
  ASSERT_EQ(::setenv("BYOI_SWARM_HELPER", "/bin/true", 1), 0);
  Result<std::string> path = SwarmHelperPath();
  ASSERT_TRUE(path.ok());
  EXPECT_EQ(*path, "/bin/true");
  ASSERT_EQ(::setenv("BYOI_SWARM_HELPER", "/nonexistent/byoi-swarm", 1), 0);
  path = SwarmHelperPath();
  // The unit tests' binary has no byoi-swarm beside it (build/tests/), and none is installed here.
  if (::access("/usr/lib/byoi-agent/byoi-swarm", X_OK) != 0) {
    ASSERT_FALSE(path.ok());
    EXPECT_EQ(path.status().code(), Code::kNotFound);
    EXPECT_NE(path.status().detail().find("the swarm helper byoi-swarm is not installed (tried "
                                          "/nonexistent/byoi-swarm, "),
              std::string::npos)
        << path.status().detail();
  }
  ::unsetenv("BYOI_SWARM_HELPER");
}

TEST(SwarmStartHelper, GivesTheDescriptorsInOrderAndStopsOnStdinClose) {
  // A shell stands for the helper: it reports what descriptors 3 and 4 hold, then waits for its
  // stdin to close.
  Result<ImageBuffer> image = ImageBuffer::Create(1 << 20);
  ASSERT_TRUE(image.ok());
  const uint8_t x[] = {'X'};
  ASSERT_TRUE(image->WriteAt(0, x).ok());
  const int fd = image->fd();
  HelperProcess helper;
  ASSERT_TRUE(StartHelper({"/bin/sh", "-c",
                           "head -c 1 <&3; head -c 1 /proc/self/fd/4; cat >/dev/null; exit 7"},
                          {fd, fd}, helper)
                  .ok());
  helper.in.Reset();
  char out[8] = {};
  ssize_t n = 0, got = 0;
  while ((n = ::read(helper.out.get(), out + got, sizeof out - 1 - got)) > 0) got += n;
  EXPECT_EQ(std::string(out, got), "XX");
  EXPECT_EQ(helper.Stop(), 7);
}

}  // namespace
}  // namespace byoi
