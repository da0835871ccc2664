// The paper's per-layer fidelity diagnostic: RoPE logit MAE.
//
// For each query row q and the key k of the same token, and for offsets
// delta evenly spaced on [-1024, 1024], the raw RoPE logit
//   sum_i q_i^T R(delta theta_i) k_i
// (no 1/sqrt(d), no softmax; static blocks contribute their plain dot
// product) is computed with k and with its reconstruction k_hat, and
//   err(delta) = mean over pairs |logit(k) - logit(k_hat)|,
//   MAE = mean over delta of err(delta).
// A layer's MAE is the mean of this over its KV heads.
//
// Thread safety: pure functions.
#ifndef ROPEKV_PLANNER_FIDELITY_H_
#define ROPEKV_PLANNER_FIDELITY_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "planner/geometry.h"

namespace ropekv::planner {

// `count` offsets evenly spaced on [lo, hi] (numpy.linspace).
std::vector<double> LogitOffsets(int count = 50, double lo = -1024.0,
                                 double hi = 1024.0);

// MAE of one KV head. q: [group, tokens, head_dim] (each query head of the
// group is its own row); k and k_hat: [tokens, head_dim]; all fp32
// row-major. REQUIRES: blocks from RopeBlocks() of the same head_dim.
double RopeLogitMae(absl::Span<const RopeBlock> blocks, const float* q,
                    int group, const float* k, const float* k_hat,
                    int64_t tokens, absl::Span<const double> offsets);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_FIDELITY_H_
