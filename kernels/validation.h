// Argument checks shared by every backend, so the CPU and CUDA backends
// refuse the same calls with the same codes and messages.
//
// Thread safety: pure functions.
#ifndef ROPEKV_KERNELS_VALIDATION_H_
#define ROPEKV_KERNELS_VALIDATION_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace ropekv::kernels {

// INVALID_ARGUMENT for an empty plan or an inconsistent page view.
absl::Status CheckView(const planner::LayerPlan& plan, const PagedLayerView& cache);

// Tokens [first, first + n) to be written: OUT_OF_RANGE unless they fit
// the pages' slots.
absl::Status CheckWriteRange(const PagedLayerView& cache, int64_t first, int64_t n);

// Tokens [first, first + n) to be read: OUT_OF_RANGE unless within the
// valid tokens.
absl::Status CheckReadRange(const PagedLayerView& cache, int64_t first, int64_t n);

// Packed records from outside (WriteRecords), head-major: INVALID_ARGUMENT
// naming the head and token when a stored norm is not a finite fp16 value
// >= 0 (codes are any bits, so only the norms can be malformed).
absl::Status CheckRecords(const planner::LayerPlan& plan, const uint8_t* records, int64_t num_tokens);

// The whole AttentionParams contract (backend.h); returns the resolved
// token_end.
absl::StatusOr<int64_t> CheckAttention(const planner::LayerPlan& plan,
                                       const PagedLayerView& cache,
                                       const AttentionParams& params);

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_VALIDATION_H_
