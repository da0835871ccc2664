#include "proto/routing.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ropekv::routing {
namespace {

std::vector<std::string> Members(int n) {
  std::vector<std::string> m;
  for (int i = 0; i < n; ++i) m.push_back(absl::StrCat("ropekv-", i, ".ropekv:50051"));
  return m;
}

TEST(RoutingTest, ScoresAreTheContractsValues) {
  // Computed by an independent Python implementation of the contract.
  struct Case {
    const char* member;
    const char* id;
    uint64_t score;
  };
  for (const Case& c : {Case{"ropekv-0.ropekv:50051", "session-1", 0x8191d2cfd81705a3ULL},
                        Case{"127.0.0.1:50051", "abc", 0x77c7d91fa0eb72dfULL},
                        Case{"", "", 0x25fc6dd36ce04b20ULL},
                        Case{"a", "", 0xd0137a57d0ef408fULL}}) {
    EXPECT_EQ(Score(c.member, c.id), c.score) << c.member << " / " << c.id;
  }
  // The separator keeps ("ab", "c") and ("a", "bc") apart.
  EXPECT_NE(Score("ab", "c"), Score("a", "bc"));
}

TEST(RoutingTest, OwnerDoesNotDependOnListOrder) {
  std::vector<std::string> m = Members(5);
  std::vector<std::string> reversed(m.rbegin(), m.rend());
  for (int i = 0; i < 2000; ++i) {
    const std::string id = absl::StrCat("s", i);
    EXPECT_EQ(m[Owner(m, id)], reversed[Owner(reversed, id)]);
    const std::vector<size_t> rank = Ranking(m, id);
    EXPECT_EQ(rank.front(), Owner(m, id));
    for (size_t r = 1; r < rank.size(); ++r) {
      EXPECT_GE(Score(m[rank[r - 1]], id), Score(m[rank[r]], id));
    }
  }
}

TEST(RoutingTest, SpreadsEvenlyAndAddingAMemberMovesOnlyItsShare) {
  const int kIds = 30000;
  std::vector<std::string> three = Members(3);
  std::vector<std::string> four = Members(4);
  std::map<size_t, int> count;
  int moved = 0;
  for (int i = 0; i < kIds; ++i) {
    const std::string id = absl::StrCat("session-", i);
    const size_t before = Owner(three, id);
    const size_t after = Owner(four, id);
    ++count[before];
    if (three[before] != four[after]) {
      ++moved;
      EXPECT_EQ(after, 3u) << "a session moved between two old members";
    }
  }
  for (const auto& [member, n] : count) {
    EXPECT_NEAR(n, kIds / 3, kIds * 0.02) << "member " << member;  // about 6 sigma
  }
  EXPECT_NEAR(moved, kIds / 4, kIds * 0.02);
}

}  // namespace
}  // namespace ropekv::routing
