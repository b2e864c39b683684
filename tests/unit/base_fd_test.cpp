// TempDir (fd.hpp): where the agent and its helper make scratch directories.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "agent/base/fd.hpp"

namespace byoi {
namespace {

// Sets TMPDIR (or unsets it, for nullopt) and puts the old value back at the end of the scope.
class TmpdirScope {
 public:
  explicit TmpdirScope(const std::optional<std::string>& value) {
    if (const char* old = std::getenv("TMPDIR")) old_ = old;
    if (value) {
      ::setenv("TMPDIR", value->c_str(), 1);
    } else {
      ::unsetenv("TMPDIR");
    }
  }
  ~TmpdirScope() {
    if (old_) {
      ::setenv("TMPDIR", old_->c_str(), 1);
    } else {
      ::unsetenv("TMPDIR");
    }
  }

 private:
  std::optional<std::string> old_;
};

TEST(TempDir, IsTmpdirWhenSetElseTmp) {
  {
    TmpdirScope scope(std::string("/var/scratch"));
    EXPECT_EQ(TempDir(), "/var/scratch");
  }
  {
    TmpdirScope scope(std::string(""));
    EXPECT_EQ(TempDir(), "/tmp");
  }
  {
    TmpdirScope scope(std::nullopt);
    EXPECT_EQ(TempDir(), "/tmp");
  }
}

}  // namespace
}  // namespace byoi
