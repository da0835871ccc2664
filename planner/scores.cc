#include "planner/scores.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ropekv::planner {

const char* ScoreKindName(ScoreKind kind) {
  switch (kind) {
    case ScoreKind::kEnergy:
      return "energy";
    case ScoreKind::kLogit:
      return "logit";
  }
  return "unknown";
}

absl::StatusOr<ScoreAccumulator> ScoreAccumulator::Create(
    const ModelGeometry& geometry) {
  absl::StatusOr<std::vector<RopeBlock>> blocks = RopeBlocks(geometry);
  if (!blocks.ok()) return blocks.status();
  return ScoreAccumulator(geometry, *std::move(blocks));
}

ScoreAccumulator::ScoreAccumulator(const ModelGeometry& geometry,
                                   std::vector<RopeBlock> blocks)
    : geometry_(geometry), blocks_(std::move(blocks)) {
  sums_.resize(static_cast<size_t>(geometry.num_layers) * geometry.num_kv_heads);
  for (HeadSums& s : sums_) {
    s.q_energy.assign(blocks_.size(), 0.0);
    s.k_energy.assign(blocks_.size(), 0.0);
  }
}

absl::Status ScoreAccumulator::CheckHead(int layer, int kv_head) const {
  if (layer < 0 || layer >= geometry_.num_layers) {
    return absl::OutOfRangeError(absl::StrCat(
        "layer: expected [0, ", geometry_.num_layers, "), got ", layer));
  }
  if (kv_head < 0 || kv_head >= geometry_.num_kv_heads) {
    return absl::OutOfRangeError(absl::StrCat(
        "kv_head: expected [0, ", geometry_.num_kv_heads, "), got ", kv_head));
  }
  return absl::OkStatus();
}

absl::Status ScoreAccumulator::AddQueries(int layer, int q_head,
                                          const float* rows, int64_t num_rows) {
  if (q_head < 0 || q_head >= geometry_.num_q_heads) {
    return absl::OutOfRangeError(absl::StrCat(
        "q_head: expected [0, ", geometry_.num_q_heads, "), got ", q_head));
  }
  // HF convention: query head h*|G| + g belongs to KV head h.
  return Add(layer, q_head / geometry_.group_size(), rows, num_rows, true);
}

absl::Status ScoreAccumulator::AddKeys(int layer, int kv_head,
                                       const float* rows, int64_t num_rows) {
  return Add(layer, kv_head, rows, num_rows, false);
}

absl::Status ScoreAccumulator::Add(int layer, int kv_head, const float* rows,
                                   int64_t num_rows, bool is_query) {
  if (absl::Status s = CheckHead(layer, kv_head); !s.ok()) return s;
  if (num_rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_rows: expected >= 0, got ", num_rows));
  }
  if (num_rows > 0 && rows == nullptr) {
    return absl::InvalidArgumentError("rows: expected data, got null");
  }
  const int d = geometry_.head_dim;
  // Validate everything before touching the sums: a bad batch adds nothing.
  for (int64_t i = 0; i < num_rows * d; ++i) {
    if (!std::isfinite(rows[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          is_query ? "queries" : "keys", ": expected finite values, got ",
          rows[i], " at row ", i / d, " dim ", i % d));
    }
  }
  HeadSums& s = sums(layer, kv_head);
  std::vector<double>& energy = is_query ? s.q_energy : s.k_energy;
  for (int64_t t = 0; t < num_rows; ++t) {
    const float* row = rows + t * d;
    for (size_t b = 0; b < blocks_.size(); ++b) {
      const double a = row[blocks_[b].dim_a];
      const double c = row[blocks_[b].dim_b];
      energy[b] += a * a + c * c;
    }
  }
  (is_query ? s.q_count : s.k_count) += num_rows;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> ScoreAccumulator::QueryEnergy(
    int layer, int kv_head) const {
  if (absl::Status s = CheckHead(layer, kv_head); !s.ok()) return s;
  const HeadSums& s = sums(layer, kv_head);
  if (s.q_count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no query samples for layer ", layer, " kv_head ",
                     kv_head, ": calibration data is empty"));
  }
  std::vector<double> e(s.q_energy);
  for (double& x : e) x /= static_cast<double>(s.q_count);
  return e;
}

absl::StatusOr<std::vector<double>> ScoreAccumulator::KeyEnergy(
    int layer, int kv_head) const {
  if (absl::Status s = CheckHead(layer, kv_head); !s.ok()) return s;
  const HeadSums& s = sums(layer, kv_head);
  if (s.k_count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no key samples for layer ", layer, " kv_head ", kv_head,
                     ": calibration data is empty"));
  }
  std::vector<double> e(s.k_energy);
  for (double& x : e) x /= static_cast<double>(s.k_count);
  return e;
}

absl::StatusOr<std::vector<double>> ScoreAccumulator::Scores(
    int layer, int kv_head, ScoreKind kind) const {
  absl::StatusOr<std::vector<double>> eq = QueryEnergy(layer, kv_head);
  if (!eq.ok()) return eq.status();
  absl::StatusOr<std::vector<double>> ek = KeyEnergy(layer, kv_head);
  if (!ek.ok()) return ek.status();
  std::vector<double> score(eq->size());
  for (size_t i = 0; i < score.size(); ++i) {
    score[i] = kind == ScoreKind::kEnergy ? ((*eq)[i] + (*ek)[i]) / 2
                                          : (*eq)[i] * (*ek)[i];
  }
  return score;
}

int64_t ScoreAccumulator::num_query_samples(int layer, int kv_head) const {
  return CheckHead(layer, kv_head).ok() ? sums(layer, kv_head).q_count : 0;
}

int64_t ScoreAccumulator::num_key_samples(int layer, int kv_head) const {
  return CheckHead(layer, kv_head).ok() ? sums(layer, kv_head).k_count : 0;
}

}  // namespace ropekv::planner
