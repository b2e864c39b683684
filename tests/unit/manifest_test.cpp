#include "agent/job/manifest.hpp"

#include <gtest/gtest.h>

namespace byoi {
namespace {

TEST(Manifest, Placeholder) { EXPECT_TRUE(ParseManifest("{}").status().code() == Code::kInvalid); }

}  // namespace
}  // namespace byoi
