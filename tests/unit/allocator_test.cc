#include "planner/allocator.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ropekv::planner {
namespace {

double Objective(const std::vector<double>& s, const std::vector<int>& b) {
  double total = 0;
  for (size_t i = 0; i < s.size(); ++i) total += s[i] * std::pow(4.0, -b[i]);
  return total;
}

TEST(AllocatorTest, HandWorkedTieGoesToLowestIndex) {
  // Start {1,1}, 2 bits left. Priorities 4/4=1 vs 1/4: block 0 -> 2. Then
  // 4/16 = 0.25 vs 0.25: a tie, block 0 -> 3.
  absl::StatusOr<std::vector<int>> b = AllocateBits({4.0, 1.0}, {2.0, 1, 8});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, (std::vector<int>{3, 1}));
}

TEST(AllocatorTest, HandWorkedFractionalAverage) {
  // Budget floor(4 * 2.5) = 10: equal scores spread 6 extra bits round-robin
  // from the lowest index.
  absl::StatusOr<std::vector<int>> b = AllocateBits({1, 1, 1, 1}, {2.5, 1, 8});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, (std::vector<int>{3, 3, 2, 2}));
  EXPECT_EQ(BitBudget(4, 2.5), 10);
  EXPECT_EQ(BitBudget(10, 2.1), 21);  // 10 * 2.1 is 20.999... in binary
  EXPECT_EQ(BitBudget(3, 2.5), 7);
}

TEST(AllocatorTest, HandWorkedMaxBitsAndEarlyStop) {
  // Only block 2 has energy: it climbs to max_bits, then every priority is
  // <= 0 and the greedy stops with budget left.
  absl::StatusOr<std::vector<int>> b = AllocateBits({0, 0, 5}, {4.0, 1, 6});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, (std::vector<int>{1, 1, 6}));
}

TEST(AllocatorTest, UniformModeIsMinEqualsMax) {
  for (int bits = 1; bits <= 8; ++bits) {
    absl::StatusOr<std::vector<int>> b =
        AllocateBits({9, 0.1, 3, 0, 7}, {static_cast<double>(bits), bits, bits});
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(*b, std::vector<int>(5, bits));
  }
}

// Enumerates every width vector in [min, max]^L using at most B bits.
void BruteForce(const std::vector<double>& s, int min_bits, int max_bits,
                int budget, double* best) {
  std::vector<int> b(s.size(), min_bits);
  *best = INFINITY;
  std::function<void(size_t, int)> rec = [&](size_t i, int used) {
    if (i == s.size()) {
      *best = std::min(*best, Objective(s, b));
      return;
    }
    for (int w = min_bits; w <= max_bits && used + w <= budget; ++w) {
      b[i] = w;
      rec(i + 1, used + w);
    }
  };
  rec(0, 0);
}

TEST(AllocatorTest, OptimalAgainstBruteForceOnSmallProblems) {
  std::mt19937 gen(7);
  std::exponential_distribution<double> score(1.0);
  const double avgs[] = {1.0, 1.5, 2.0, 2.5, 3.0, 3.25, 4.0};
  int checked = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int L = 1 + trial % 5;
    const int min_bits = 1 + trial % 2;
    const int max_bits = min_bits + 1 + trial % 4;
    std::vector<double> s(L);
    for (double& x : s) x = trial % 7 == 0 ? std::floor(score(gen) * 2) : score(gen);
    for (double avg : avgs) {
      if (avg < min_bits || avg > max_bits) continue;
      absl::StatusOr<std::vector<int>> b = AllocateBits(s, {avg, min_bits, max_bits});
      ASSERT_TRUE(b.ok()) << b.status();
      double best;
      BruteForce(s, min_bits, max_bits, BitBudget(L, avg), &best);
      EXPECT_NEAR(Objective(s, *b), best, 1e-12 * std::max(1.0, best))
          << "trial " << trial << " avg " << avg;
      ++checked;
    }
  }
  EXPECT_GT(checked, 500);
}

TEST(AllocatorTest, BudgetAndBoundsAlwaysRespected) {
  std::mt19937 gen(11);
  std::lognormal_distribution<double> score(0.0, 3.0);
  for (int trial = 0; trial < 500; ++trial) {
    const int L = 1 + trial % 64;
    const int min_bits = 1 + trial % 3;
    const int max_bits = std::min(8, min_bits + trial % 6);
    const double avg = min_bits + (max_bits - min_bits) * ((trial * 37) % 101) / 100.0;
    std::vector<double> s(L);
    for (double& x : s) x = score(gen);
    absl::StatusOr<std::vector<int>> b = AllocateBits(s, {avg, min_bits, max_bits});
    ASSERT_TRUE(b.ok()) << b.status();
    const int used = std::accumulate(b->begin(), b->end(), 0);
    EXPECT_LE(used, BitBudget(L, avg));
    // All scores are positive, so the greedy only stops when the budget is
    // spent or every block is at max_bits.
    EXPECT_TRUE(used == BitBudget(L, avg) || used == L * max_bits);
    for (int w : *b) {
      EXPECT_GE(w, min_bits);
      EXPECT_LE(w, max_bits);
    }
  }
}

TEST(AllocatorTest, HigherScoreNeverGetsFewerBits) {
  std::vector<double> s = {0.5, 8.0, 2.0, 32.0, 1.0, 0.01};
  absl::StatusOr<std::vector<int>> b = AllocateBits(s, {3.0, 1, 8});
  ASSERT_TRUE(b.ok());
  for (size_t i = 0; i < s.size(); ++i) {
    for (size_t j = 0; j < s.size(); ++j) {
      if (s[i] > s[j]) {
        EXPECT_GE((*b)[i], (*b)[j]);
      }
    }
  }
}

TEST(AllocatorTest, BadInputGivesInvalidArgument) {
  const AllocationOptions ok{3.0, 1, 8};
  EXPECT_EQ(AllocateBits({}, ok).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0, NAN}, ok).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0, INFINITY}, ok).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0, -1.0}, ok).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0}, {3.0, 0, 8}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0}, {3.0, 1, 9}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0}, {3.0, 4, 2}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0}, {9.0, 1, 8}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits({1.0}, {0.5, 1, 8}).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = AllocateBits({1.0}, {3.0, 1, 9}).status();
  EXPECT_NE(s.message().find("max_bits"), std::string::npos) << s;
}

}  // namespace
}  // namespace ropekv::planner

namespace ropekv::planner {
namespace {

double EstimatedError(absl::Span<const double> s, absl::Span<const int> b) {
  double e = 0;
  for (size_t i = 0; i < s.size(); ++i) e += s[i] * std::ldexp(1.0, -2 * b[i]);
  return e;
}

int Groups(absl::Span<const int> b) { return static_cast<int>(std::set<int>(b.begin(), b.end()).size()); }

// Key bytes with the first group's norm in fp16 and every further group's
// in norm_bits: ceil((code bits + 16 + (G - 1) norm_bits) / 8).
int KeyBytesWithNorms(absl::Span<const int> b, int norm_bits) {
  int code = 0;
  for (int x : b) code += 2 * x;
  return (code + 16 + (Groups(b) - 1) * norm_bits + 7) / 8;
}

// Every group's size in dimensions a multiple of `m`, but for the
// narrowest, which takes the rest.
bool GroupSizesOk(absl::Span<const int> b, int m) {
  std::map<int, int> count;
  for (int x : b) ++count[x];
  for (auto it = std::next(count.begin()); it != count.end(); ++it) {
    if ((2 * it->second) % m != 0) return false;
  }
  return true;
}

// The exact optimum, by trying every allocation of a small head.
TEST(ByteBudgetTest, MatchesBruteForceOnSmallHeads) {
  std::mt19937 gen(7);
  std::lognormal_distribution<double> score(0, 1.5);
  for (int trial = 0; trial < 120; ++trial) {
    const int n = 3 + trial % 4;  // 3..6 blocks
    std::vector<double> s(n);
    for (double& x : s) x = score(gen);
    if (trial % 10 == 0) s[1] = s[0];  // ties
    ByteBudgetOptions o;
    o.min_bits = 1;
    o.max_bits = 4 + trial % 2;
    o.max_groups = trial % 3 == 0 ? 2 : 8;
    o.group_multiple = trial % 5 == 0 ? 4 : 2;
    o.key_bytes = 3 + trial % 5;
    const int norm_bits[] = {16, 6, 2, 10};
    o.group_norm_bits = norm_bits[(trial / 7) % 4];
    // Brute force over every width vector.
    double best = std::numeric_limits<double>::infinity();
    std::vector<int> b(n, o.min_bits);
    for (;;) {
      if (KeyBytesWithNorms(b, o.group_norm_bits) <= o.key_bytes && Groups(b) <= o.max_groups &&
          GroupSizesOk(b, o.group_multiple)) {
        best = std::min(best, EstimatedError(s, b));
      }
      int k = 0;
      while (k < n && b[k] == o.max_bits) b[k++] = o.min_bits;
      if (k == n) break;
      ++b[k];
    }
    absl::StatusOr<std::vector<int>> got = AllocateBitsForBytes(s, o);
    if (!std::isfinite(best)) {
      EXPECT_FALSE(got.ok()) << "trial " << trial;
      continue;
    }
    ASSERT_TRUE(got.ok()) << "trial " << trial << ": " << got.status();
    EXPECT_LE(KeyBytesWithNorms(*got, o.group_norm_bits), o.key_bytes) << "trial " << trial;
    EXPECT_LE(Groups(*got), o.max_groups) << "trial " << trial;
    EXPECT_TRUE(GroupSizesOk(*got, o.group_multiple)) << "trial " << trial;
    EXPECT_NEAR(EstimatedError(s, *got), best, 1e-12 * (1 + best)) << "trial " << trial;
  }
}

// At a uniform allocation's bytes the result is never worse than uniform
// (uniform is one of the allocations it chooses among), and with flat
// scores it is uniform.
TEST(ByteBudgetTest, NeverWorseThanUniformAtItsBytes) {
  std::mt19937 gen(11);
  std::lognormal_distribution<double> score(0, 2.0);
  for (int bits : {2, 3, 4}) {
    std::vector<double> s(64);
    for (double& x : s) x = score(gen);
    const std::vector<int> uniform(64, bits);
    ByteBudgetOptions o;
    o.key_bytes = KeyBytesOf(uniform);  // 128 x bits / 8 + 2
    absl::StatusOr<std::vector<int>> got = AllocateBitsForBytes(s, o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(KeyBytesOf(*got), o.key_bytes);
    EXPECT_LE(EstimatedError(s, *got), EstimatedError(s, uniform));
    EXPECT_LT(EstimatedError(s, *got), 0.8 * EstimatedError(s, uniform)) << "skewed scores should gain";
    const std::vector<double> flat(64, 1.0);
    EXPECT_EQ(*AllocateBitsForBytes(flat, o), uniform);
  }
}

TEST(ByteBudgetTest, BadOptionsAreRefused) {
  const std::vector<double> s(8, 1.0);
  ByteBudgetOptions o;
  o.key_bytes = 3;  // 8 blocks at 1 bit need 2 code bytes + 2
  EXPECT_EQ(AllocateBitsForBytes(s, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.key_bytes = 10;
  o.group_multiple = 3;
  EXPECT_EQ(AllocateBitsForBytes(s, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.group_multiple = 2;
  o.max_groups = 0;
  EXPECT_EQ(AllocateBitsForBytes(s, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_groups = 8;
  for (int bad : {0, 7, 18}) {
    o.group_norm_bits = bad;
    absl::Status st = AllocateBitsForBytes(s, o).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("group_norm_bits"), std::string::npos) << st;
  }
}

}  // namespace
}  // namespace ropekv::planner
