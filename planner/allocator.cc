#include "planner/allocator.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ropekv::planner {

int BitBudget(int num_blocks, double avg_bits) {
  return static_cast<int>(std::floor(num_blocks * avg_bits + 1e-9));
}

absl::StatusOr<std::vector<int>> AllocateBits(absl::Span<const double> scores,
                                              const AllocationOptions& o) {
  if (scores.empty()) {
    return absl::InvalidArgumentError("scores: expected at least one block");
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i]) || scores[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scores[", i, "]: expected a finite value >= 0, got ", scores[i]));
    }
  }
  if (o.min_bits < kMinBits || o.min_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_bits: expected [", kMinBits, ", ", kMaxBits, "], got ", o.min_bits));
  }
  if (o.max_bits < o.min_bits || o.max_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat("max_bits: expected [",
                                                   o.min_bits, ", ", kMaxBits,
                                                   "], got ", o.max_bits));
  }
  if (!std::isfinite(o.avg_bits) || o.avg_bits < o.min_bits ||
      o.avg_bits > o.max_bits) {
    return absl::InvalidArgumentError(
        absl::StrCat("avg_bits: expected [", o.min_bits, ", ", o.max_bits,
                     "], got ", o.avg_bits));
  }
  const int num_blocks = static_cast<int>(scores.size());
  std::vector<int> bits(num_blocks, o.min_bits);
  int remaining = BitBudget(num_blocks, o.avg_bits) - num_blocks * o.min_bits;
  while (remaining > 0) {
    int best = -1;
    double best_priority = -1.0;
    for (int i = 0; i < num_blocks; ++i) {
      // s * 4^-b computed with ldexp is exact, so ties are real ties.
      const double priority =
          bits[i] >= o.max_bits ? -1.0 : std::ldexp(scores[i], -2 * bits[i]);
      if (priority > best_priority) {  // strict: lowest index wins ties
        best_priority = priority;
        best = i;
      }
    }
    if (best_priority <= 0) break;
    ++bits[best];
    --remaining;
  }
  return bits;
}

}  // namespace ropekv::planner
