// Fidelity of compression profiles on real activations (the method's
// claim: fidelity per bit), with the CPU codec as the reference quantizer.
//
// For each budget and method, profiles are calibrated on one split of the
// file's sequences and measured on the other:
//   - the paper's RoPE logit MAE per layer (planner/fidelity.h: 50 offsets
//     in [-1024, 1024], raw logits, same-token pairs, mean over KV heads);
//   - the relative error of the causal softmax attention output, true Q
//     over quantized K and V within each sequence: ||O_hat - O|| / ||O||
//     over all heads, tokens and test sequences of the layer;
//   - packed bytes per token and the compression against fp16 K and V.
//
// Input layout (see README "Evaluating on your model"): q, k, v as
// [layer, head, token, head_dim] (fp16 or fp32), optional int64
// seq_offsets, geometry in __metadata__ (planner/calibration.h).
//
// Thread safety: pure functions of their arguments.
#ifndef ROPEKV_KERNELS_EVAL_EVALUATION_H_
#define ROPEKV_KERNELS_EVAL_EVALUATION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "planner/calibration.h"
#include "planner/plan.h"
#include "planner/safetensors.h"

namespace ropekv::kernels {

// kLogitSameBytes: the logit score with the key budget lowered (in steps of
// one bit per RoPE block) until the packed record, per-group norms
// included, is no larger than uniform TQ-MSE's at the same widths: the
// comparison at equal bytes rather than equal code bits.
// kLogitSameBytes: the greedy at code bits lowered until its record is no
// larger than uniform's; kLogitBytes: the byte-aware allocation
// (planner::AllocateBitsForBytes) at exactly uniform's key bytes, norms
// counted.
// kKeyVarianceBytes: the same byte-aware allocation with scores from the
// keys' block energy alone, blind to the queries (and so to how RoPE pairs
// each key block with a query block): the baseline that shows what query
// awareness itself is worth at equal bytes.
enum class EvalMethod { kUniform, kEnergy, kLogit, kLogitSameBytes, kLogitBytes, kKeyVarianceBytes };
// "uniform", "energy", "logit", "logit-same-bytes", "logit-bytes", "key-variance-bytes"
const char* EvalMethodName(EvalMethod m);

struct EvalOptions {
  std::vector<int> key_bits = {2, 3, 4};  // budget i is (key_bits[i], value_bits[i])
  std::vector<int> value_bits = {2, 3, 4};
  std::vector<EvalMethod> methods = {EvalMethod::kUniform, EvalMethod::kEnergy, EvalMethod::kLogit,
                                     EvalMethod::kLogitSameBytes, EvalMethod::kLogitBytes,
                                     EvalMethod::kKeyVarianceBytes};
  planner::SequenceSplit calibrate = planner::SequenceSplit::kEven;  // test: the other one
  // logit-bytes: at most this many key groups per head, group sizes in
  // multiples of this many dimensions (planner::ByteBudgetOptions).
  int max_groups = 8;
  int group_multiple = 2;
  // Byte-aware methods: bits of each key group norm after the widest
  // group's (16: fp16, the records as stored; fewer: those norms coded
  // relative to the widest's, a model of a cheaper record, with the bytes
  // and the allocation counting them so).
  int group_norm_bits = 16;
  int num_offsets = 50;
  double max_offset = 1024;
  // Rate-distortion sweep: key budgets in bits per dimension (key bytes
  // ceil(d b / 8) + 2, uniform's formula), all at sweep_value_bits; uniform
  // runs at the integer ones, the byte-aware methods at all.
  std::vector<double> sweep_key_bits;
  int sweep_value_bits = 3;
};

struct LayerFidelity {
  double logit_mae = 0;
  double attention_error = 0;  // relative, causal softmax output
  int64_t packed_bytes_per_token = 0;  // this layer, K + V, all KV heads
};

struct MethodFidelity {
  EvalMethod method;
  int key_bits = 0;
  int value_bits = 0;
  double key_avg_bits = 0;  // the budget the allocation ran with
  std::vector<LayerFidelity> layers;
  double mean_logit_mae = 0;        // mean over layers
  double mean_attention_error = 0;  // mean over layers
  int layers_beating_uniform = -1;  // on logit MAE; -1 for uniform itself
  int64_t packed_bytes_per_token = 0;  // all layers
  double compression = 0;              // fp16 K + V bytes / packed bytes
  int key_bytes_budget = 0;            // sweep: the key bytes per token and KV head allowed
};

struct EvalReport {
  planner::ModelGeometry geometry;
  std::string calibrate;  // "even" or "odd"
  std::string test;
  int64_t test_tokens = 0;
  int test_sequences = 0;
  std::vector<MethodFidelity> results;  // budget-major, methods in option order
  std::vector<MethodFidelity> sweep;    // budget-major (EvalOptions::sweep_key_bits)
};

// INVALID_ARGUMENT for a malformed file, options out of range or a split
// with no sequences (naming which); FAILED_PRECONDITION when the file has
// one sequence and so no split.
absl::StatusOr<EvalReport> EvaluateProfiles(const planner::SafetensorsFile& file,
                                            const EvalOptions& options);

// The report as a JSON document (schema: README "Evaluating on your model").
std::string EvalReportJson(const EvalReport& report);

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_EVAL_EVALUATION_H_
