#include "planner/geometry.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ropekv::planner {

absl::Status ValidateGeometry(const ModelGeometry& g) {
  if (g.num_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("geometry.num_layers: expected >= 1, got ", g.num_layers));
  }
  if (g.num_kv_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry.num_kv_heads: expected >= 1, got ", g.num_kv_heads));
  }
  if (g.num_q_heads < 1 || g.num_q_heads % g.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry.num_q_heads: expected a positive multiple of num_kv_heads (",
        g.num_kv_heads, "), got ", g.num_q_heads));
  }
  if (g.head_dim < 2 || g.head_dim > kMaxHeadDim || g.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("geometry.head_dim: expected an even number in [2, ",
                     kMaxHeadDim, "], got ", g.head_dim));
  }
  if (g.rotary_dim < 2 || g.rotary_dim > g.head_dim || g.rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("geometry.rotary_dim: expected an even number in [2, ",
                     g.head_dim, "], got ", g.rotary_dim));
  }
  if (!std::isfinite(g.rope_theta) || g.rope_theta <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry.rope_theta: expected a finite value > 0, got ", g.rope_theta));
  }
  if (g.rope_layout != RopeLayout::kSplitHalf &&
      g.rope_layout != RopeLayout::kInterleaved) {
    return absl::InvalidArgumentError(
        "geometry.rope_layout: expected split-half or interleaved");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RopeBlock>> RopeBlocks(const ModelGeometry& g) {
  if (absl::Status s = ValidateGeometry(g); !s.ok()) return s;
  const int r = g.rotary_dim;
  std::vector<RopeBlock> blocks;
  blocks.reserve(g.num_blocks());
  for (int i = 0; i < r / 2; ++i) {
    RopeBlock b;
    if (g.rope_layout == RopeLayout::kSplitHalf) {
      b.dim_a = i;
      b.dim_b = i + r / 2;
    } else {
      b.dim_a = 2 * i;
      b.dim_b = 2 * i + 1;
    }
    b.frequency = std::pow(g.rope_theta, -2.0 * i / r);
    blocks.push_back(b);
  }
  for (int dim = r; dim < g.head_dim; dim += 2) {
    blocks.push_back(RopeBlock{dim, dim + 1, 0.0});
  }
  return blocks;
}

const char* RopeLayoutName(RopeLayout layout) {
  switch (layout) {
    case RopeLayout::kSplitHalf:
      return "split-half";
    case RopeLayout::kInterleaved:
      return "interleaved";
  }
  return "unknown";
}

}  // namespace ropekv::planner
