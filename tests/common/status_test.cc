#include "common/status.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <memory>

#include "common/check.h"

namespace spark {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "ok");
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status s = NotFound("tensor model.norm.weight is missing");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "not_found: tensor model.norm.weight is missing");
  EXPECT_EQ(s.WithContext("loading").message(), "loading: tensor model.norm.weight is missing");
}

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  SPARK_ASSIGN_OR_RETURN(int h, Half(x));
  SPARK_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(ResultTest, ValueAndErrorPropagation) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.value_or(-1), -1);
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
}

Status FailIfNegative(int x) {
  if (x < 0) return OutOfRange("negative");
  return Status::Ok();
}

Status Chain(int x) {
  SPARK_RETURN_IF_ERROR(FailIfNegative(x));
  return Status::Ok();
}

TEST(StatusTest, ReturnIfError) {
  EXPECT_TRUE(Chain(1).ok());
  EXPECT_EQ(Chain(-1).code(), StatusCode::kOutOfRange);
}

TEST(CheckTest, SyscallReportsErrno) {
  Status s = SPARK_SYSCALL(::close(-1));
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("close(-1)"), std::string::npos);
  EXPECT_NE(s.message().find("Bad file descriptor"), std::string::npos);
}

TEST(CheckDeathTest, CheckAbortsWithMessage) {
  EXPECT_DEATH({ SPARK_CHECK(1 + 1 == 3) << "arithmetic"; },
               "check failed: 1 \\+ 1 == 3 arithmetic");
}

}  // namespace
}  // namespace spark
