// Model geometry and RoPE block layouts.
//
// Under RoPE a head vector is a sum of 2-D blocks, each rotated by its own
// angle, so the error of each block of a key reaches the attention logit
// separately. This module says which two dimensions form each block.
//
// Thread safety: plain values and pure functions.
#ifndef ROPEKV_PLANNER_GEOMETRY_H_
#define ROPEKV_PLANNER_GEOMETRY_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ropekv::planner {

enum class RopeLayout {
  // Block i = dims (i, i + rotary_dim/2) (HF Llama, Qwen, Mistral).
  kSplitHalf,
  // Block i = dims (2i, 2i+1) (GPT-J, GLM, Moonshine).
  kInterleaved,
};

// Largest head_dim the planner accepts (widest heads in use are 256).
inline constexpr int kMaxHeadDim = 512;

struct ModelGeometry {
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  RopeLayout rope_layout = RopeLayout::kSplitHalf;
  // Number of rotated dimensions; dims rotary_dim..head_dim-1 are static and
  // are paired as (r, r+1), (r+2, r+3), ...
  int rotary_dim = 0;
  double rope_theta = 10000.0;

  // Query heads per KV head (GQA group). REQUIRES: valid geometry.
  int group_size() const { return num_q_heads / num_kv_heads; }
  // Number of 2-D blocks of one head.
  int num_blocks() const { return head_dim / 2; }
};

// OK when every field is in range: positive counts, num_q_heads a multiple
// of num_kv_heads, head_dim even in [2, kMaxHeadDim], rotary_dim even in
// [2, head_dim], rope_theta finite and > 0. Otherwise INVALID_ARGUMENT
// naming the field and the expected value.
absl::Status ValidateGeometry(const ModelGeometry& geometry);

// One 2-D block: the two dims it pairs and its angular frequency
// (theta^(-2i/rotary_dim) for rotary block i, 0 for static pairs).
struct RopeBlock {
  int dim_a = 0;
  int dim_b = 0;
  double frequency = 0.0;
};

// The head_dim/2 blocks of a head: rotary blocks first (block order of the
// layout), then static pairs. Every dimension appears exactly once.
absl::StatusOr<std::vector<RopeBlock>> RopeBlocks(const ModelGeometry& geometry);

const char* RopeLayoutName(RopeLayout layout);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_GEOMETRY_H_
