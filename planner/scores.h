// Block energy scores from calibration samples.
//
// For every (layer, KV head) the accumulator keeps, per RoPE block, the sum
// of squared Q and K entries over the samples it has seen, so calibration
// data can arrive in any number of batches. GQA-aware: each query head is its
// own sample of the KV head it shares (queries are never averaged over the
// group). A 2-D rotation preserves a block's energy, so samples may be taken
// before or after RoPE.
//
// Thread safety: const methods may run concurrently; Add* need external
// synchronisation.
#ifndef ROPEKV_PLANNER_SCORES_H_
#define ROPEKV_PLANNER_SCORES_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "planner/geometry.h"

namespace ropekv::planner {

enum class ScoreKind {
  // s_i = (e_q(i) + e_k(i)) / 2, the paper's score.
  kEnergy,
  // s_i = e_q(i) * e_k(i): the logit error of block i scales with
  // |q_i| |k_i| 2^-b_i, so the product tracks it more directly.
  kLogit,
};

const char* ScoreKindName(ScoreKind kind);

class ScoreAccumulator {
 public:
  // INVALID_ARGUMENT when the geometry is not valid.
  static absl::StatusOr<ScoreAccumulator> Create(const ModelGeometry& geometry);

  // Adds `num_rows` query rows of query head `q_head` (row-major
  // [num_rows, head_dim] fp32) to the KV head that head belongs to.
  // OUT_OF_RANGE for a bad layer or head; INVALID_ARGUMENT for a negative
  // count, a null pointer with rows, or any NaN/Inf (then nothing is added).
  absl::Status AddQueries(int layer, int q_head, const float* rows,
                          int64_t num_rows);
  // Same for key rows of KV head `kv_head`.
  absl::Status AddKeys(int layer, int kv_head, const float* rows,
                       int64_t num_rows);

  // Per-block score of one (layer, KV head), head_dim/2 entries.
  // FAILED_PRECONDITION when no query or no key sample was added for it.
  absl::StatusOr<std::vector<double>> Scores(int layer, int kv_head,
                                             ScoreKind kind) const;

  // Mean block energies (e_q or e_k) of one (layer, KV head).
  absl::StatusOr<std::vector<double>> QueryEnergy(int layer, int kv_head) const;
  absl::StatusOr<std::vector<double>> KeyEnergy(int layer, int kv_head) const;

  int64_t num_query_samples(int layer, int kv_head) const;
  int64_t num_key_samples(int layer, int kv_head) const;
  const ModelGeometry& geometry() const { return geometry_; }

 private:
  struct HeadSums {
    std::vector<double> q_energy;  // sum over samples, per block
    std::vector<double> k_energy;
    int64_t q_count = 0;
    int64_t k_count = 0;
  };
  ScoreAccumulator(const ModelGeometry& geometry,
                   std::vector<RopeBlock> blocks);
  absl::Status Add(int layer, int kv_head, const float* rows, int64_t num_rows,
                   bool is_query);
  absl::Status CheckHead(int layer, int kv_head) const;
  HeadSums& sums(int layer, int kv_head) {
    return sums_[layer * geometry_.num_kv_heads + kv_head];
  }
  const HeadSums& sums(int layer, int kv_head) const {
    return sums_[layer * geometry_.num_kv_heads + kv_head];
  }

  ModelGeometry geometry_;
  std::vector<RopeBlock> blocks_;
  std::vector<HeadSums> sums_;  // [layer * num_kv_heads + kv_head]
};

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_SCORES_H_
