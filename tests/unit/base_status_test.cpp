// Status and Result: codes, the message/detail split, context chaining and the macros.
#include <gtest/gtest.h>

#include <cerrno>
#include <memory>

#include "agent/base/status.hpp"

namespace byoi {
namespace {

TEST(BaseStatus, OkAndError) {
  Status ok = Status::Ok();
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.code(), Code::kOk);
  EXPECT_EQ(ok.ToString(), "ok");
  Status e =
      Status::Error(Code::kNotFound, "looking up /dev/sdz", "No disk found in disk group 2.");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.code(), Code::kNotFound);
  EXPECT_EQ(e.message(), "No disk found in disk group 2.");
  EXPECT_EQ(e.detail(), "looking up /dev/sdz");
  EXPECT_EQ(e.ToString(), "No disk found in disk group 2. (looking up /dev/sdz)");
  EXPECT_EQ(Status::Error(Code::kIo, "d").ToString(), "d");
  EXPECT_EQ(Status::Error(Code::kIo, "", "m").ToString(), "m");
  EXPECT_EQ(Status::Error(Code::kBusy, "").ToString(), "busy");
}

TEST(BaseStatus, ContextPrependsAndDefaultMessageKeepsTheFirst) {
  Status s = Status::Error(Code::kIo, "offset past end of image");
  s.Context("reading L2 table at 0x30000").Context("converting qcow2");
  EXPECT_EQ(s.detail(), "converting qcow2: reading L2 table at 0x30000: offset past end of image");
  s.DefaultMessage("Can't write qcow2 on disk.").DefaultMessage("something else");
  EXPECT_EQ(s.message(), "Can't write qcow2 on disk.");
  EXPECT_EQ(Status::Error(Code::kIo, "").Context("opening x").detail(), "opening x");
  // Neither touches an Ok status.
  Status ok;
  ok.Context("x").DefaultMessage("y");
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.detail(), "");
  EXPECT_EQ(ok.message(), "");
}

TEST(BaseStatus, FromErrno) {
  Status s = Status::FromErrno("opening /dev/sda", EBUSY);
  EXPECT_EQ(s.code(), Code::kIo);
  EXPECT_EQ(s.detail(), "opening /dev/sda: Device or resource busy");
  EXPECT_EQ(Status::FromErrno("x", ENOENT, Code::kNotFound).code(), Code::kNotFound);
}

TEST(BaseStatus, CodeNames) {
  EXPECT_EQ(CodeName(Code::kOk), "ok");
  EXPECT_EQ(CodeName(Code::kInvalid), "invalid");
  EXPECT_EQ(CodeName(Code::kTooBig), "too_big");
  EXPECT_EQ(CodeName(Code::kNotFound), "not_found");
  EXPECT_EQ(CodeName(Code::kIo), "io");
  EXPECT_EQ(CodeName(Code::kInternal), "internal");
  EXPECT_EQ(CodeName(Code::kCancelled), "cancelled");
}

Result<int> Half(int x) {
  if (x % 2 != 0) return Status::Error(Code::kInvalid, std::to_string(x) + " is odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  BYOI_ASSIGN_OR_RETURN(int h, Half(x));
  BYOI_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckQuarter(int x, int* out) {
  BYOI_ASSIGN_OR_RETURN(*out, Quarter(x));
  BYOI_RETURN_IF_ERROR(Status::Ok());
  return Status::Ok();
}

Result<std::unique_ptr<int>> MoveOnly(bool ok) {
  if (!ok) return Status::Error(Code::kInternal, "no");
  return std::make_unique<int>(7);
}

TEST(BaseStatus, ResultAndMacros) {
  EXPECT_EQ(*Quarter(12), 3);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().detail(), "3 is odd");
  int out = 0;
  EXPECT_TRUE(CheckQuarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = CheckQuarter(2, &out);
  EXPECT_EQ(s.detail(), "1 is odd");
  auto m = MoveOnly(true);
  ASSERT_TRUE(m.ok());
  std::unique_ptr<int> p = std::move(m).value();
  EXPECT_EQ(*p, 7);
  EXPECT_EQ(MoveOnly(false).status().code(), Code::kInternal);
  // status() of an rvalue Ok result is Ok.
  EXPECT_TRUE(Result<int>(1).status().ok());
}

}  // namespace
}  // namespace byoi
