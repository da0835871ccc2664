// The compression plan: what the kernels execute.
//
// "Plan on the host, run on the device": from a geometry, a budget and
// per-block widths the planner derives, once per (layer, KV head), the key
// permutation and width groups, one rotation and codebook per group, the
// value rotation and codebook, and the byte layout of one token's packed
// record (planner/packed_layout.md). A ModelProfile holds the plans of every
// layer and head; profile_io.h turns it into the versioned protobuf.
//
// Thread safety: plain values and pure functions; build functions may run
// concurrently.
#ifndef ROPEKV_PLANNER_PLAN_H_
#define ROPEKV_PLANNER_PLAN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "planner/codebook.h"
#include "planner/geometry.h"
#include "planner/scores.h"

namespace ropekv::planner {

// Default seed of every profile's rotations.
inline constexpr uint64_t kDefaultSeed = 0x726F70656B76ull;  // "ropekv"

struct Budget {
  // Average bits per key dimension; fractions such as 2.5 allowed.
  double key_avg_bits = 3.0;
  // Bits per value dimension, uniform.
  int value_bits = 3;
  // Bounds on the width of any key block.
  int min_bits = 1;
  int max_bits = 8;
  // Score that drives the allocation.
  ScoreKind score = ScoreKind::kLogit;
  // Base seed of every rotation of the profile.
  uint64_t seed = kDefaultSeed;
  // Key groups of fewer dimensions keep the identity (0 = rotate all).
  int min_rotation_dim = 0;
  // > 0: a budget in bytes instead: each head's key part of a token takes
  // at most this many bytes, its norms counted (AllocateBitsForBytes), and
  // key_avg_bits is only informational (it may then be 0). Uniform Kb at
  // head_dim d is ceil(d b / 8) + 2 bytes.
  int key_bytes = 0;
  // With key_bytes: at most this many key groups per head, and group sizes
  // in multiples of this many dimensions.
  int max_key_groups = 8;
  int key_group_multiple = 2;
};

// Uniform TQ-MSE: every key block at key_bits (min = max = key_bits).
Budget UniformBudget(int key_bits, int value_bits);

// INVALID_ARGUMENT naming the field when a bound is violated.
absl::Status ValidateBudget(const Budget& budget);

// Byte layout of one token's record for one KV head (offsets from the start
// of the record). See planner/packed_layout.md.
struct TokenLayout {
  int key_norms_offset = 0;    // fp16 x num key groups
  int value_norm_offset = 0;   // fp16 x 1
  int key_codes_offset = 0;    // ceil(key_code_bits / 8) bytes
  int key_code_bits = 0;       // sum over groups of dim x bits
  int value_codes_offset = 0;  // ceil(value_code_bits / 8) bytes
  int value_code_bits = 0;     // head_dim x value_bits
  int record_bytes = 0;

  bool operator==(const TokenLayout&) const = default;
};

// The layout formula: 2 x (groups + 1) + ceil(key bits / 8) + ceil(value
// bits / 8) bytes, norms first so they stay 2-byte aligned.
TokenLayout ComputeTokenLayout(int num_key_groups, int key_code_bits,
                               int value_code_bits);

struct KeyGroupPlan {
  int bits = 0;    // width of each coordinate
  int offset = 0;  // first slot in the permuted key
  int dim = 0;     // slots in the group (2 x blocks)
  int code_bit_offset = 0;  // first bit of the group in the key code stream
  uint64_t rotation_seed = 0;
  std::vector<float> rotation;  // dim x dim, row-major: y = R u
  Codebook codebook;            // Lloyd-Max for N(0, 1/dim)

  bool operator==(const KeyGroupPlan&) const = default;
};

struct HeadPlan {
  int head_dim = 0;
  std::vector<int> block_bits;   // per RoPE block, block order
  std::vector<int> permutation;  // slot j takes original dim permutation[j]
  std::vector<KeyGroupPlan> key_groups;  // ascending width
  int value_bits = 0;
  uint64_t value_rotation_seed = 0;
  std::vector<float> value_rotation;  // head_dim x head_dim, row-major
  Codebook value_codebook;
  TokenLayout layout;

  // sum(block_bits) * 2 / head_dim.
  double key_bits_per_dim() const;

  bool operator==(const HeadPlan&) const = default;
};

struct LayerPlan {
  std::vector<HeadPlan> heads;  // one per KV head
  // Identifies this plan's content within the process: the builders and
  // the profile reader give every plan they make a fresh id (NewPlanId),
  // so two plans with the same nonzero id are equal. A backend keys what
  // it derives from a plan (device copies, tables) by it. Plans are values
  // that are not edited once built; code that edits one must give it a
  // new id. 0: no id (a backend then compares content).
  uint64_t id = 0;

  // Content and id.
  bool operator==(const LayerPlan&) const = default;
};

// A process-wide unique, nonzero plan id. Thread-safe.
uint64_t NewPlanId();

// Where each KV head's records sit in a page of `page_tokens` tokens of one
// (session, layer): head h's records are contiguous, token-major, starting
// at head_offsets[h].
struct PageLayout {
  int page_tokens = 0;
  std::vector<int64_t> head_offsets;
  int64_t page_bytes = 0;
};
PageLayout MakePageLayout(const LayerPlan& layer, int page_tokens);

struct ModelProfile {
  std::string name;
  ModelGeometry geometry;
  Budget budget;
  std::vector<LayerPlan> layers;

  // Packed bytes of one token over all layers and KV heads.
  int64_t packed_bytes_per_token() const;
  // The same token in fp16 (K and V): layers x kv_heads x head_dim x 4.
  int64_t fp16_bytes_per_token() const;
};

// The plan of one head from its block widths. `blocks` from RopeBlocks().
// INVALID_ARGUMENT when widths or the budget are out of range.
absl::StatusOr<HeadPlan> BuildHeadPlan(absl::Span<const RopeBlock> blocks,
                                       absl::Span<const int> block_bits,
                                       const Budget& budget, int layer,
                                       int kv_head);

// [layer][kv_head][block] nested values.
using PerHead = std::vector<std::vector<std::vector<double>>>;
using PerHeadBits = std::vector<std::vector<std::vector<int>>>;

// Asked between heads while a profile is built; true stops the build with
// CANCELLED (a large model's plan takes seconds to minutes). Empty: never.
using CancelCheck = std::function<bool()>;

// A profile from explicit widths; `budget.key_avg_bits` is informational.
absl::StatusOr<ModelProfile> BuildProfileFromAllocation(
    const ModelGeometry& geometry, const Budget& budget,
    const PerHeadBits& block_bits, const CancelCheck& cancelled = {});
// A profile by greedy allocation of precomputed scores.
absl::StatusOr<ModelProfile> BuildProfileFromScores(
    const ModelGeometry& geometry, const Budget& budget, const PerHead& scores,
    const CancelCheck& cancelled = {});
// A profile from calibration samples (budget.score picks the score).
absl::StatusOr<ModelProfile> BuildProfile(const ScoreAccumulator& calibration,
                                          const Budget& budget,
                                          const CancelCheck& cancelled = {});

// An upper bound on the host memory a profile of `geometry` takes while it
// is built and once stored: per (layer, KV head) the value rotation
// (head_dim^2 floats), the key groups' rotations (at most head_dim^2 floats
// together), codebooks, widths and the calibration sums. Callers bound it
// before building anything. Saturates instead of overflowing.
int64_t ProfileBytesUpperBound(const ModelGeometry& geometry);

// Checks a plan that came from outside (a file, the wire) against the
// geometry: widths in range, permutation, groups and layout equal to what
// the widths imply, codebooks equal to the Lloyd-Max ones, matrices of the
// right size with unit-norm rows. INVALID_ARGUMENT naming what is wrong.
absl::Status ValidateProfile(const ModelProfile& profile);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_PLAN_H_
