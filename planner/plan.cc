#include "planner/plan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "planner/allocator.h"
#include "planner/rotation.h"

namespace ropekv::planner {
namespace {

constexpr uint64_t kRoleKey = 0;
constexpr uint64_t kRoleValue = 1;

absl::Status CheckWidths(absl::Span<const int> bits, size_t num_blocks,
                         const Budget& budget) {
  if (bits.size() != num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block_bits: expected ", num_blocks, " entries, got ", bits.size()));
  }
  for (size_t i = 0; i < bits.size(); ++i) {
    if (bits[i] < budget.min_bits || bits[i] > budget.max_bits) {
      return absl::InvalidArgumentError(
          absl::StrCat("block_bits[", i, "]: expected [", budget.min_bits, ", ",
                       budget.max_bits, "], got ", bits[i]));
    }
  }
  return absl::OkStatus();
}

// Everything of a head plan except the rotation matrices.
absl::StatusOr<HeadPlan> BuildSkeleton(absl::Span<const RopeBlock> blocks,
                                       absl::Span<const int> block_bits,
                                       const Budget& budget, int layer,
                                       int kv_head) {
  if (absl::Status s = ValidateBudget(budget); !s.ok()) return s;
  if (absl::Status s = CheckWidths(block_bits, blocks.size(), budget); !s.ok()) {
    return s;
  }
  HeadPlan plan;
  plan.head_dim = static_cast<int>(blocks.size()) * 2;
  plan.block_bits.assign(block_bits.begin(), block_bits.end());
  // Blocks by ascending width, stable on block index; a block's two dims
  // stay next to each other.
  std::vector<int> order(blocks.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return block_bits[a] < block_bits[b];
  });
  for (int b : order) {
    plan.permutation.push_back(blocks[b].dim_a);
    plan.permutation.push_back(blocks[b].dim_b);
  }
  int slot = 0;
  int code_bits = 0;
  for (size_t i = 0; i < order.size();) {
    const int width = block_bits[order[i]];
    size_t j = i;
    while (j < order.size() && block_bits[order[j]] == width) ++j;
    KeyGroupPlan g;
    g.bits = width;
    g.offset = slot;
    g.dim = static_cast<int>(2 * (j - i));
    g.code_bit_offset = code_bits;
    g.rotation_seed = DeriveSeed(budget.seed, layer, kv_head, kRoleKey, width);
    absl::StatusOr<Codebook> cb = LloydMaxCodebook(width, g.dim);
    if (!cb.ok()) return cb.status();
    g.codebook = *std::move(cb);
    slot += g.dim;
    code_bits += g.dim * width;
    plan.key_groups.push_back(std::move(g));
    i = j;
  }
  plan.value_bits = budget.value_bits;
  plan.value_rotation_seed =
      DeriveSeed(budget.seed, layer, kv_head, kRoleValue, budget.value_bits);
  absl::StatusOr<Codebook> vcb =
      LloydMaxCodebook(budget.value_bits, plan.head_dim);
  if (!vcb.ok()) return vcb.status();
  plan.value_codebook = *std::move(vcb);
  plan.layout =
      ComputeTokenLayout(static_cast<int>(plan.key_groups.size()), code_bits,
                         plan.head_dim * budget.value_bits);
  return plan;
}

absl::Status CheckMatrix(const std::vector<float>& m, int n,
                         const std::string& what) {
  if (m.size() != static_cast<size_t>(n) * n) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": expected ", n, "x", n, " values, got ", m.size()));
  }
  for (int i = 0; i < n; ++i) {
    double norm2 = 0;
    for (int j = 0; j < n; ++j) {
      const double x = m[static_cast<size_t>(i) * n + j];
      if (!std::isfinite(x)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": expected finite values"));
      }
      norm2 += x * x;
    }
    if (std::abs(norm2 - 1.0) > 1e-4) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": expected orthonormal rows, row ", i, " has norm^2 ", norm2));
    }
  }
  return absl::OkStatus();
}

bool SameCodebook(const Codebook& a, const Codebook& b) {
  return a.bits == b.bits && a.dim == b.dim && a.centroids == b.centroids &&
         a.boundaries == b.boundaries;
}

}  // namespace

Budget UniformBudget(int key_bits, int value_bits) {
  Budget b;
  b.key_avg_bits = key_bits;
  b.min_bits = key_bits;
  b.max_bits = key_bits;
  b.value_bits = value_bits;
  return b;
}

absl::Status ValidateBudget(const Budget& b) {
  if (b.min_bits < kMinBits || b.min_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.min_bits: expected [1, 8], got ", b.min_bits));
  }
  if (b.max_bits < b.min_bits || b.max_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.max_bits: expected [", b.min_bits, ", 8], got ", b.max_bits));
  }
  if (b.key_bytes < 0 || b.key_bytes > (1 << 16)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.key_bytes: expected [0, 65536] (0: a budget in bits), got ", b.key_bytes));
  }
  if (b.max_key_groups < 1 || b.max_key_groups > kMaxBits) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.max_key_groups: expected [1, 8], got ", b.max_key_groups));
  }
  if (b.key_group_multiple < 2 || b.key_group_multiple > 512 || b.key_group_multiple % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.key_group_multiple: expected an even number of dimensions in [2, 512], got ", b.key_group_multiple));
  }
  const bool bits_unused = b.key_bytes > 0 && b.key_avg_bits == 0;
  if (!bits_unused && (!std::isfinite(b.key_avg_bits) || b.key_avg_bits < b.min_bits ||
                       b.key_avg_bits > b.max_bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.key_avg_bits: expected [", b.min_bits, ", ",
                     b.max_bits, "], got ", b.key_avg_bits));
  }
  if (b.value_bits < kMinBits || b.value_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.value_bits: expected [1, 8], got ", b.value_bits));
  }
  if (b.score != ScoreKind::kEnergy && b.score != ScoreKind::kLogit) {
    return absl::InvalidArgumentError("budget.score: expected energy or logit");
  }
  if (b.min_rotation_dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.min_rotation_dim: expected >= 0, got ", b.min_rotation_dim));
  }
  return absl::OkStatus();
}

TokenLayout ComputeTokenLayout(int num_key_groups, int key_code_bits,
                               int value_code_bits) {
  TokenLayout l;
  l.key_norms_offset = 0;
  l.value_norm_offset = 2 * num_key_groups;
  l.key_codes_offset = l.value_norm_offset + 2;
  l.key_code_bits = key_code_bits;
  l.value_codes_offset = l.key_codes_offset + (key_code_bits + 7) / 8;
  l.value_code_bits = value_code_bits;
  l.record_bytes = l.value_codes_offset + (value_code_bits + 7) / 8;
  return l;
}

double HeadPlan::key_bits_per_dim() const {
  return 2.0 * std::accumulate(block_bits.begin(), block_bits.end(), 0) /
         head_dim;
}

PageLayout MakePageLayout(const LayerPlan& layer, int page_tokens) {
  PageLayout p;
  p.page_tokens = page_tokens;
  int64_t offset = 0;
  for (const HeadPlan& h : layer.heads) {
    p.head_offsets.push_back(offset);
    offset += static_cast<int64_t>(page_tokens) * h.layout.record_bytes;
  }
  p.page_bytes = offset;
  return p;
}

int64_t ModelProfile::packed_bytes_per_token() const {
  int64_t total = 0;
  for (const LayerPlan& l : layers) {
    for (const HeadPlan& h : l.heads) total += h.layout.record_bytes;
  }
  return total;
}

int64_t ModelProfile::fp16_bytes_per_token() const {
  return static_cast<int64_t>(geometry.num_layers) * geometry.num_kv_heads *
         geometry.head_dim * 4;
}

absl::StatusOr<HeadPlan> BuildHeadPlan(absl::Span<const RopeBlock> blocks,
                                       absl::Span<const int> block_bits,
                                       const Budget& budget, int layer,
                                       int kv_head) {
  absl::StatusOr<HeadPlan> plan =
      BuildSkeleton(blocks, block_bits, budget, layer, kv_head);
  if (!plan.ok()) return plan.status();
  for (KeyGroupPlan& g : plan->key_groups) {
    g.rotation = g.dim < budget.min_rotation_dim
                     ? IdentityMatrix(g.dim)
                     : HaarRotation(g.rotation_seed, g.dim);
  }
  plan->value_rotation = HaarRotation(plan->value_rotation_seed, plan->head_dim);
  return plan;
}

absl::StatusOr<ModelProfile> BuildProfileFromAllocation(
    const ModelGeometry& geometry, const Budget& budget,
    const PerHeadBits& block_bits, const CancelCheck& cancelled) {
  absl::StatusOr<std::vector<RopeBlock>> blocks = RopeBlocks(geometry);
  if (!blocks.ok()) return blocks.status();
  if (absl::Status s = ValidateBudget(budget); !s.ok()) return s;
  if (block_bits.size() != static_cast<size_t>(geometry.num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("allocation: expected ", geometry.num_layers,
                     " layers, got ", block_bits.size()));
  }
  ModelProfile profile;
  profile.geometry = geometry;
  profile.budget = budget;
  profile.layers.resize(geometry.num_layers);
  for (int layer = 0; layer < geometry.num_layers; ++layer) {
    if (block_bits[layer].size() != static_cast<size_t>(geometry.num_kv_heads)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "allocation[", layer, "]: expected ", geometry.num_kv_heads,
          " KV heads, got ", block_bits[layer].size()));
    }
    for (int h = 0; h < geometry.num_kv_heads; ++h) {
      if (cancelled && cancelled()) {
        return absl::CancelledError(absl::StrCat(
            "profile build cancelled at layer ", layer, " kv_head ", h));
      }
      absl::StatusOr<HeadPlan> plan =
          BuildHeadPlan(*blocks, block_bits[layer][h], budget, layer, h);
      if (!plan.ok()) {
        return absl::Status(plan.status().code(),
                            absl::StrCat("layer ", layer, " kv_head ", h, ": ",
                                         plan.status().message()));
      }
      profile.layers[layer].heads.push_back(*std::move(plan));
    }
    profile.layers[layer].id = NewPlanId();
  }
  return profile;
}

absl::StatusOr<ModelProfile> BuildProfileFromScores(
    const ModelGeometry& geometry, const Budget& budget, const PerHead& scores,
    const CancelCheck& cancelled) {
  if (absl::Status s = ValidateGeometry(geometry); !s.ok()) return s;
  if (absl::Status s = ValidateBudget(budget); !s.ok()) return s;
  if (scores.size() != static_cast<size_t>(geometry.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scores: expected ", geometry.num_layers, " layers, got ", scores.size()));
  }
  PerHeadBits bits(geometry.num_layers);
  const AllocationOptions options{budget.key_avg_bits, budget.min_bits,
                                  budget.max_bits};
  ByteBudgetOptions by_bytes;
  by_bytes.key_bytes = budget.key_bytes;
  by_bytes.min_bits = budget.min_bits;
  by_bytes.max_bits = budget.max_bits;
  by_bytes.max_groups = budget.max_key_groups;
  by_bytes.group_multiple = budget.key_group_multiple;
  for (int layer = 0; layer < geometry.num_layers; ++layer) {
    if (scores[layer].size() != static_cast<size_t>(geometry.num_kv_heads)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scores[", layer, "]: expected ", geometry.num_kv_heads,
          " KV heads, got ", scores[layer].size()));
    }
    for (int h = 0; h < geometry.num_kv_heads; ++h) {
      if (scores[layer][h].size() != static_cast<size_t>(geometry.num_blocks())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "scores[", layer, "][", h, "]: expected ", geometry.num_blocks(),
            " blocks, got ", scores[layer][h].size()));
      }
      absl::StatusOr<std::vector<int>> b = budget.key_bytes > 0 ? AllocateBitsForBytes(scores[layer][h], by_bytes)
                                                                : AllocateBits(scores[layer][h], options);
      if (!b.ok()) return b.status();
      bits[layer].push_back(*std::move(b));
    }
  }
  return BuildProfileFromAllocation(geometry, budget, bits, cancelled);
}

absl::StatusOr<ModelProfile> BuildProfile(const ScoreAccumulator& calibration,
                                          const Budget& budget,
                                          const CancelCheck& cancelled) {
  const ModelGeometry& g = calibration.geometry();
  PerHead scores(g.num_layers);
  for (int layer = 0; layer < g.num_layers; ++layer) {
    for (int h = 0; h < g.num_kv_heads; ++h) {
      absl::StatusOr<std::vector<double>> s =
          calibration.Scores(layer, h, budget.score);
      if (!s.ok()) return s.status();
      scores[layer].push_back(*std::move(s));
    }
  }
  return BuildProfileFromScores(g, budget, scores, cancelled);
}

uint64_t NewPlanId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

int64_t ProfileBytesUpperBound(const ModelGeometry& g) {
  // Each factor is at most 2^31, so the per-head size fits an int64 and
  // the product is computed in double to saturate.
  const int64_t d = std::max(g.head_dim, 0);
  const int64_t per_head = 2 * d * d * 4            // value and key rotations
                           + 2 * (kMaxBits + 1) * 256 * 4  // codebooks
                           + d * 4 * 4                // widths, permutation, sums
                           + 1024;                    // the head's fixed parts
  const double total = static_cast<double>(per_head) * std::max(g.num_layers, 0) *
                       std::max(g.num_kv_heads, 0);
  return total >= 9.0e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(total);
}

absl::Status ValidateProfile(const ModelProfile& p) {
  absl::StatusOr<std::vector<RopeBlock>> blocks = RopeBlocks(p.geometry);
  if (!blocks.ok()) return blocks.status();
  if (absl::Status s = ValidateBudget(p.budget); !s.ok()) return s;
  if (p.layers.size() != static_cast<size_t>(p.geometry.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layers: expected ", p.geometry.num_layers, ", got ", p.layers.size()));
  }
  for (int layer = 0; layer < p.geometry.num_layers; ++layer) {
    const LayerPlan& lp = p.layers[layer];
    if (lp.heads.size() != static_cast<size_t>(p.geometry.num_kv_heads)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", layer, "].heads: expected ",
                       p.geometry.num_kv_heads, ", got ", lp.heads.size()));
    }
    for (int h = 0; h < p.geometry.num_kv_heads; ++h) {
      const HeadPlan& hp = lp.heads[h];
      const std::string where = absl::StrCat("layers[", layer, "].heads[", h, "]");
      absl::StatusOr<HeadPlan> want =
          BuildSkeleton(*blocks, hp.block_bits, p.budget, layer, h);
      if (!want.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": ", want.status().message()));
      }
      if (hp.head_dim != want->head_dim || hp.permutation != want->permutation) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".permutation: does not match the block widths"));
      }
      if (hp.key_groups.size() != want->key_groups.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".key_groups: expected ", want->key_groups.size(),
            " groups, got ", hp.key_groups.size()));
      }
      for (size_t g = 0; g < hp.key_groups.size(); ++g) {
        const KeyGroupPlan& a = hp.key_groups[g];
        const KeyGroupPlan& b = want->key_groups[g];
        const std::string gw = absl::StrCat(where, ".key_groups[", g, "]");
        if (a.bits != b.bits || a.offset != b.offset || a.dim != b.dim ||
            a.code_bit_offset != b.code_bit_offset) {
          return absl::InvalidArgumentError(
              absl::StrCat(gw, ": bits/offset/dim do not match the widths"));
        }
        if (!SameCodebook(a.codebook, b.codebook)) {
          return absl::InvalidArgumentError(
              absl::StrCat(gw, ".codebook: not the Lloyd-Max codebook"));
        }
        if (absl::Status s = CheckMatrix(a.rotation, a.dim, gw + ".rotation");
            !s.ok()) {
          return s;
        }
      }
      if (hp.value_bits != want->value_bits ||
          !SameCodebook(hp.value_codebook, want->value_codebook)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".value_codebook: expected the ", p.budget.value_bits,
            "-bit Lloyd-Max codebook"));
      }
      if (absl::Status s = CheckMatrix(hp.value_rotation, hp.head_dim,
                                       where + ".value_rotation");
          !s.ok()) {
        return s;
      }
      if (!(hp.layout == want->layout)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".layout: does not match the widths"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ropekv::planner
