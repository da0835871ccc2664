// ropekv-eval: fidelity per bit of uniform TQ-MSE and Block-GTQ profiles on
// your model's activations (kernels/eval/evaluation.h says what is measured).
//
//   ropekv-eval --activations=acts.safetensors [--bits=2,3,4] [--calibrate=even]
//               [--methods=uniform,energy,logit,logit-same-bytes,logit-bytes,key-variance-bytes] [--json=eval.json]
//
// Prints one table per budget (per-layer logit MAE and attention-output
// error, wins against uniform, bytes per token) and writes the JSON that
// kernels/eval/plot_eval.py turns into a PNG.
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "kernels/eval/evaluation.h"

ABSL_FLAG(std::string, activations, "", "q/k/v activations (.safetensors, layout in the README)");
ABSL_FLAG(std::string, bits, "2,3,4", "Budgets: comma-separated widths, K and V alike (e.g. 2,3,4)");
ABSL_FLAG(std::string, value_bits, "", "Value widths per budget when they differ from --bits");
ABSL_FLAG(int, max_groups, 8, "logit-bytes: most key groups (distinct widths) per head");
ABSL_FLAG(int, group_multiple, 2, "logit-bytes: key group sizes in multiples of this many dimensions");
ABSL_FLAG(std::string, methods, "uniform,energy,logit,logit-same-bytes,logit-bytes,key-variance-bytes",
          "Methods: uniform, energy, logit, logit-same-bytes, logit-bytes (byte-aware, at uniform's bytes), "
          "key-variance-bytes (the same, scored by key energy alone)");
ABSL_FLAG(std::string, calibrate, "even", "Sequences that calibrate: even or odd (the others test)");
ABSL_FLAG(std::string, sweep, "",
          "Rate-distortion sweep: key budgets in bits per dimension (e.g. 1.5,2,2.5,3,3.5,4,4.5,5); uniform at the "
          "integer ones, the byte-aware methods at all, each at uniform's key bytes for that budget");
ABSL_FLAG(int, sweep_value_bits, 3, "Value width of every sweep point");
ABSL_FLAG(int, group_norm_bits, 16,
          "Byte-aware methods: bits per key group norm after the widest group's (16: fp16 as stored; fewer: "
          "coded relative to it, a model of cheaper norms)");
ABSL_FLAG(std::string, json, "", "Where to write the JSON report (optional)");

namespace {

using namespace ropekv;

int Fail(const absl::Status& s) {
  std::cerr << "ropekv-eval: " << s << "\n";
  return 1;
}

absl::StatusOr<std::vector<int>> IntList(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1 || v > 8) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s: expected widths 1-8, got '%s'", flag, part));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrFormat("--%s: expected at least one width", flag));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures uniform TQ-MSE and Block-GTQ profiles on q/k/v activations.\n"
      "  ropekv-eval --activations=FILE [--bits=2,3,4 --json=eval.json]");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_activations).empty()) {
    return Fail(absl::InvalidArgumentError("--activations: expected a .safetensors file"));
  }
  kernels::EvalOptions options;
  absl::StatusOr<std::vector<int>> kb = IntList("bits", absl::GetFlag(FLAGS_bits));
  if (!kb.ok()) return Fail(kb.status());
  options.key_bits = *kb;
  options.value_bits = *kb;
  if (!absl::GetFlag(FLAGS_value_bits).empty()) {
    absl::StatusOr<std::vector<int>> vb = IntList("value_bits", absl::GetFlag(FLAGS_value_bits));
    if (!vb.ok()) return Fail(vb.status());
    if (vb->size() != kb->size()) {
      return Fail(absl::InvalidArgumentError("--value_bits: expected as many widths as --bits"));
    }
    options.value_bits = *vb;
  }
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_sweep), ',', absl::SkipEmpty())) {
    double b = 0;
    if (!absl::SimpleAtod(part, &b) || !(b >= 1 && b <= 8)) {
      return Fail(absl::InvalidArgumentError(absl::StrFormat("--sweep: expected bits per dimension in [1, 8], got '%s'", part)));
    }
    options.sweep_key_bits.push_back(b);
  }
  options.sweep_value_bits = absl::GetFlag(FLAGS_sweep_value_bits);
  if (options.sweep_value_bits < 1 || options.sweep_value_bits > 8) {
    return Fail(absl::InvalidArgumentError("--sweep_value_bits: expected a width 1-8"));
  }
  options.group_norm_bits = absl::GetFlag(FLAGS_group_norm_bits);
  options.max_groups = absl::GetFlag(FLAGS_max_groups);
  options.group_multiple = absl::GetFlag(FLAGS_group_multiple);
  options.methods.clear();
  for (absl::string_view m : absl::StrSplit(absl::GetFlag(FLAGS_methods), ',', absl::SkipEmpty())) {
    if (m == "uniform") options.methods.push_back(kernels::EvalMethod::kUniform);
    else if (m == "energy") options.methods.push_back(kernels::EvalMethod::kEnergy);
    else if (m == "logit") options.methods.push_back(kernels::EvalMethod::kLogit);
    else if (m == "logit-same-bytes") options.methods.push_back(kernels::EvalMethod::kLogitSameBytes);
    else if (m == "logit-bytes") options.methods.push_back(kernels::EvalMethod::kLogitBytes);
    else if (m == "key-variance-bytes") options.methods.push_back(kernels::EvalMethod::kKeyVarianceBytes);
    else return Fail(absl::InvalidArgumentError(absl::StrFormat("--methods: unknown method '%s'", m)));
  }
  const std::string cal = absl::GetFlag(FLAGS_calibrate);
  if (cal == "even") options.calibrate = planner::SequenceSplit::kEven;
  else if (cal == "odd") options.calibrate = planner::SequenceSplit::kOdd;
  else return Fail(absl::InvalidArgumentError("--calibrate: expected even or odd"));

  absl::StatusOr<planner::SafetensorsFile> file = planner::SafetensorsFile::Open(absl::GetFlag(FLAGS_activations));
  if (!file.ok()) return Fail(file.status());
  absl::StatusOr<kernels::EvalReport> report = kernels::EvaluateProfiles(*file, options);
  if (!report.ok()) return Fail(report.status());

  const planner::ModelGeometry& g = report->geometry;
  absl::PrintF("%d layers, %d query / %d KV heads, head_dim %d, %s RoPE on %d dims; calibrated on %s "
               "sequences, tested on %s (%d sequences, %d tokens)\n",
               g.num_layers, g.num_q_heads, g.num_kv_heads, g.head_dim,
               planner::RopeLayoutName(g.rope_layout), g.rotary_dim, report->calibrate, report->test,
               report->test_sequences, report->test_tokens);
  const kernels::MethodFidelity* uniform = nullptr;
  for (const kernels::MethodFidelity& r : report->results) {
    if (r.method == kernels::EvalMethod::kUniform) uniform = &r;
    if (&r == &report->results.front() || r.key_bits != (&r - 1)->key_bits || r.value_bits != (&r - 1)->value_bits) {
      absl::PrintF("\nK%d V%d    logit MAE per layer, then mean (vs uniform)     | attention-output error per layer, then mean | bytes/token  compression  wins\n",
                   r.key_bits, r.value_bits);
      if (r.method != kernels::EvalMethod::kUniform) uniform = nullptr;
    }
    std::string mae, att;
    for (const kernels::LayerFidelity& l : r.layers) {
      mae += absl::StrFormat("%.3f ", l.logit_mae);
      att += absl::StrFormat("%.3f ", l.attention_error);
    }
    std::string rel = uniform != nullptr && uniform != &r
                          ? absl::StrFormat(" (%+.1f%%)", 100 * (r.mean_logit_mae / uniform->mean_logit_mae - 1))
                          : "";
    std::string wins = r.layers_beating_uniform >= 0
                           ? absl::StrFormat("%d/%d", r.layers_beating_uniform, g.num_layers) : "-";
    absl::PrintF("%-8s %s| %.3f%s | %s| %.3f | %d  %.2fx  %s\n",
                 r.method == kernels::EvalMethod::kLogitSameBytes
                     ? absl::StrFormat("logit@K%.2f", r.key_avg_bits)
                     : std::string(kernels::EvalMethodName(r.method)),
                 mae,
                 r.mean_logit_mae, rel, att, r.mean_attention_error, r.packed_bytes_per_token, r.compression, wins);
  }
  if (!report->sweep.empty()) {
    absl::PrintF("\nRate-distortion, V%d: key bytes allowed per token and KV head, then bytes/token (all layers), "
                 "mean logit MAE, mean attention-output error, mean key bits per dimension\n",
                 options.sweep_value_bits);
    for (const kernels::MethodFidelity& r : report->sweep) {
      absl::PrintF("%-19s %4d  %6d  %.4f  %.4f  %.2f\n", kernels::EvalMethodName(r.method), r.key_bytes_budget,
                   r.packed_bytes_per_token, r.mean_logit_mae, r.mean_attention_error, r.key_avg_bits);
    }
  }
  const std::string json = absl::GetFlag(FLAGS_json);
  if (!json.empty()) {
    std::ofstream out(json);
    out << kernels::EvalReportJson(*report) << "\n";
    if (!out) return Fail(absl::UnavailableError("--json: cannot write " + json));
    absl::PrintF("\nwrote %s\n", json);
  }
  return 0;
}
