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

// Allocation under a byte budget that counts the norms: every distinct
// key width is a group and stores a 2-byte norm per token, so a width pays
// for its norm only where it gains more than the code bits it displaces.
struct ByteBudgetOptions {
  // Bytes of one token's key part per KV head: code bytes
  // (ceil(sum_i 2 b_i / 8)) plus 2 per key group. Uniform Kb at head_dim
  // d takes ceil(d b / 8) + 2.
  int key_bytes = 0;
  int min_bits = 1;
  int max_bits = 8;
  // At most this many distinct widths (key groups).
  int max_groups = 8;
  // Group sizes in dimensions are multiples of this (even; the narrowest
  // group takes what is left).
  int group_multiple = 2;
  // Bits charged for the norm of every key group after the first (whose
  // fp16 norm always costs 16): 16 for today's records; fewer models a
  // record whose other group norms are coded relative to one fp16 norm
  // (ropekv-eval --group_norm_bits). Even, 2-16.
  int group_norm_bits = 16;
};

// Widths per block minimising the estimated logit error sum_i s_i 4^(-b_i)
// (the greedy's objective) subject to the byte budget, exactly: 4^-b
// decreases with b, so an optimal allocation gives wider codes to higher
// scores; blocks sorted by score then form runs of equal width, and a
// dynamic programme over (block, width, bytes spent) that pays a norm at
// every change of width finds the optimum. Ties between equal scores give
// the wider code to the lower block index.
// INVALID_ARGUMENT for bad scores or options, or a budget below min_bits
// everywhere in one group.
absl::StatusOr<std::vector<int>> AllocateBitsForBytes(absl::Span<const double> scores,
                                                      const ByteBudgetOptions& options);

// The key bytes of `bits` (per block) as ByteBudgetOptions counts them.
int KeyBytesOf(absl::Span<const int> bits);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_ALLOCATOR_H_
