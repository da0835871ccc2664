// The CPU codec of one token of one KV head: the spec in code.
//
// Key (planner/ALGORITHM.md section 3): x = k[permutation]; per width group g,
// n_g = |x_g|, y_g = R_g x_g / n_g, code = nearest centroid (boundary
// search), stored norm n'_g = n_g / |c[code_g]| in fp16 so the decoded group
// keeps its norm. Value (section 4): the same with one head_dim rotation and
// one width. Records follow planner::TokenLayout.
//
// Thread safety: pure functions.
#ifndef ROPEKV_KERNELS_CPU_CODEC_H_
#define ROPEKV_KERNELS_CPU_CODEC_H_

#include <cstdint>

#include "absl/status/status.h"
#include "planner/allocator.h"
#include "planner/plan.h"

namespace ropekv::kernels {

// Index of the nearest centroid of y: the number of boundaries <= y, so an
// exact tie goes to the upper level.
int NearestCode(const planner::Codebook& codebook, float y);

// Writes the key norms and key codes of `record`.
// INVALID_ARGUMENT for NaN/Inf or a corrected norm beyond fp16 range.
absl::Status EncodeKey(const planner::HeadPlan& plan, const float* key,
                       uint8_t* record);
// Writes the value norm and value codes of `record`.
absl::Status EncodeValue(const planner::HeadPlan& plan, const float* value,
                         uint8_t* record);

// k_hat = unpermute(n'_g R_g^T c[code_g]); [head_dim] fp32.
void DecodeKey(const planner::HeadPlan& plan, const uint8_t* record, float* key);
// v_hat = n' R_v^T c[code]; [head_dim] fp32.
void DecodeValue(const planner::HeadPlan& plan, const uint8_t* record,
                 float* value);

// The query in the key's quantized space: q~ = blockdiag(R_g) q[permutation],
// so that q~ . (n'_g c[code_g]) summed over groups equals q . k_hat.
void RotateQuery(const planner::HeadPlan& plan, const float* query,
                 float* rotated);

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_CPU_CODEC_H_
