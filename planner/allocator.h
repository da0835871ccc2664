// Greedy bit allocation over RoPE blocks.
//
// Minimises sum_i s_i 4^(-b_i) under a total budget of floor(L * avg_bits)
// bits per block: each extra bit on block i gains 0.75 s_i 4^(-b_i), a
// decreasing amount, so taking the largest gain every step is optimal.
//
// Thread safety: pure function.
#ifndef ROPEKV_PLANNER_ALLOCATOR_H_
#define ROPEKV_PLANNER_ALLOCATOR_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace ropekv::planner {

inline constexpr int kMinBits = 1;
inline constexpr int kMaxBits = 8;

struct AllocationOptions {
  // Average width per block (= bits per dimension); fractions allowed.
  double avg_bits = 3.0;
  // Every block gets at least min_bits and at most max_bits.
  int min_bits = 1;
  int max_bits = 8;
};

// Total bits the greedy may hand out: floor(num_blocks * avg_bits), with a
// 1e-9 guard so that e.g. 10 x 2.1 counts as 21, not 20.
int BitBudget(int num_blocks, double avg_bits);

// Widths per block. Starts from min_bits everywhere, then while budget is
// left gives one bit to argmax_i s_i 4^(-b_i) (blocks at max_bits excluded;
// lowest index on ties) and stops early once the best priority is <= 0.
// Uniform TQ-MSE is min_bits = max_bits = avg_bits.
// INVALID_ARGUMENT for empty or non-finite/negative scores, bits outside
// [1, 8], min_bits > max_bits, or avg_bits outside [min_bits, max_bits].
absl::StatusOr<std::vector<int>> AllocateBits(absl::Span<const double> scores,
                                              const AllocationOptions& options);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_ALLOCATOR_H_
