// Loans (loans.hpp): what lies in the region lent, and marks that come back only once every loan
// taken before them did, whatever the order the loans are returned in.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "agent/base/loans.hpp"

namespace byoi {
namespace {

TEST(Loans, OnlyBytesInsideTheOpenRegionAreLent) {
  std::vector<uint8_t> buffer(100);
  Loans loans;
  EXPECT_FALSE(loans.Lends(buffer.data(), 1));  // nothing open
  loans.Open(std::span(buffer).subspan(10, 80));
  EXPECT_TRUE(loans.Lends(buffer.data() + 10, 80));
  EXPECT_TRUE(loans.Lends(buffer.data() + 50, 40));
  EXPECT_FALSE(loans.Lends(buffer.data() + 9, 2));    // starts before
  EXPECT_FALSE(loans.Lends(buffer.data() + 50, 41));  // ends after
  EXPECT_FALSE(loans.Lends(buffer.data() + 95, 1));   // after
  loans.Close();
  EXPECT_FALSE(loans.Lends(buffer.data() + 10, 80));
}

TEST(Loans, AMarkComesBackWhenEveryEarlierLoanDid) {
  Loans loans;
  EXPECT_TRUE(loans.Returned(loans.Mark()));  // none taken
  const uint64_t a = loans.Borrow(), b = loans.Borrow();
  const uint64_t after_b = loans.Mark();
  const uint64_t c = loans.Borrow();
  const uint64_t after_c = loans.Mark();
  loans.Return(b);  // out of order: a is still out
  EXPECT_FALSE(loans.Returned(after_b));
  loans.Return(a);
  EXPECT_TRUE(loans.Returned(after_b));
  EXPECT_FALSE(loans.Returned(after_c));
  std::thread returner([&] { loans.Return(c); });
  loans.WaitReturned(after_c);
  returner.join();
  EXPECT_TRUE(loans.Returned(after_c));
  loans.Close();  // nothing out: returns at once
}

}  // namespace
}  // namespace byoi
