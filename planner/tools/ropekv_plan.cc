// ropekv-plan: builds a compression profile from calibration activations.
//
//   ropekv-plan --calibration=acts.safetensors --key_bits=3 --value_bits=3
//               --out=model.profile
//
// Reads q and k ([layer, head, token, head_dim]) and the geometry from the
// file's metadata, accumulates block energies over the chosen sequences,
// runs the greedy allocation, prints the plan's widths and bytes per token,
// and writes the versioned profile.
#include <cstdio>
#include <iostream>
#include <map>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "planner/calibration.h"
#include "planner/plan.h"
#include "planner/profile_io.h"
#include "planner/safetensors.h"

ABSL_FLAG(std::string, calibration, "", "Calibration .safetensors file (q, k)");
ABSL_FLAG(std::string, sequences, "all", "Sequences to calibrate on: all, even, odd");
ABSL_FLAG(double, key_bits, 3.0, "Average bits per key dimension (1-8, e.g. 2.5)");
ABSL_FLAG(int, value_bits, 3, "Bits per value dimension (1-8)");
ABSL_FLAG(int, min_bits, 1, "Smallest width of a key block");
ABSL_FLAG(int, max_bits, 8, "Largest width of a key block");
ABSL_FLAG(std::string, score, "logit", "Allocation score: logit or energy");
ABSL_FLAG(bool, uniform, false, "Uniform TQ-MSE (every block at key_bits)");
ABSL_FLAG(std::string, name, "", "Profile name (default: the file's model metadata)");
ABSL_FLAG(std::string, out, "", "Where to write the profile (optional)");

namespace {

using namespace ropekv::planner;

int Fail(const absl::Status& s) {
  std::cerr << "ropekv-plan: " << s << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Builds a ropekv compression profile from calibration activations.\n"
      "  ropekv-plan --calibration=FILE [--key_bits=3 --value_bits=3 --out=FILE]");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_calibration).empty()) {
    return Fail(absl::InvalidArgumentError("--calibration: expected a file"));
  }
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(absl::GetFlag(FLAGS_calibration));
  if (!file.ok()) return Fail(file.status());
  absl::StatusOr<ModelGeometry> geometry = GeometryFromMetadata(*file);
  if (!geometry.ok()) return Fail(geometry.status());

  const std::string seq = absl::GetFlag(FLAGS_sequences);
  SequenceSplit split = SequenceSplit::kAll;
  if (seq == "even") split = SequenceSplit::kEven;
  else if (seq == "odd") split = SequenceSplit::kOdd;
  else if (seq != "all") {
    return Fail(absl::InvalidArgumentError("--sequences: expected all, even or odd"));
  }
  absl::StatusOr<ScoreAccumulator> scores = ScoreAccumulator::Create(*geometry);
  if (!scores.ok()) return Fail(scores.status());
  if (absl::Status s = AccumulateCalibration(*file, split, &*scores); !s.ok()) {
    return Fail(s);
  }

  Budget budget;
  const std::string score = absl::GetFlag(FLAGS_score);
  if (score == "energy") budget.score = ScoreKind::kEnergy;
  else if (score != "logit") {
    return Fail(absl::InvalidArgumentError("--score: expected logit or energy"));
  }
  budget.key_avg_bits = absl::GetFlag(FLAGS_key_bits);
  budget.value_bits = absl::GetFlag(FLAGS_value_bits);
  budget.min_bits = absl::GetFlag(FLAGS_min_bits);
  budget.max_bits = absl::GetFlag(FLAGS_max_bits);
  if (absl::GetFlag(FLAGS_uniform)) {
    const double kb = budget.key_avg_bits;
    if (kb != static_cast<int>(kb)) {
      return Fail(absl::InvalidArgumentError("--uniform: expected an integer --key_bits"));
    }
    budget.min_bits = budget.max_bits = static_cast<int>(kb);
  }
  absl::StatusOr<ModelProfile> profile = BuildProfile(*scores, budget);
  if (!profile.ok()) return Fail(profile.status());
  profile->name = absl::GetFlag(FLAGS_name);
  if (profile->name.empty() && file->metadata().count("model")) {
    profile->name = file->metadata().at("model");
  }

  const ModelGeometry& g = profile->geometry;
  absl::PrintF("profile %s: %d layers, %d query / %d KV heads, head_dim %d, %s RoPE on %d dims, theta %g\n",
               profile->name, g.num_layers, g.num_q_heads, g.num_kv_heads, g.head_dim,
               RopeLayoutName(g.rope_layout), g.rotary_dim, g.rope_theta);
  absl::PrintF("budget: K %.2f bits/dim (%s%s), V %d bits, widths %d..%d, calibrated on %s sequences\n",
               budget.key_avg_bits, absl::GetFlag(FLAGS_uniform) ? "uniform" : "score ",
               absl::GetFlag(FLAGS_uniform) ? "" : ScoreKindName(budget.score),
               budget.value_bits, budget.min_bits, budget.max_bits, seq);
  absl::PrintF("%-6s %-6s %-9s %-8s %s\n", "layer", "head", "K bits", "bytes", "widths per block");
  for (int layer = 0; layer < g.num_layers; ++layer) {
    for (int h = 0; h < g.num_kv_heads; ++h) {
      const HeadPlan& hp = profile->layers[layer].heads[h];
      std::string widths;
      for (int b : hp.block_bits) widths += std::to_string(b);
      absl::PrintF("%-6d %-6d %-9.3f %-8d %s\n", layer, h, hp.key_bits_per_dim(),
                   hp.layout.record_bytes, widths);
    }
  }
  const int64_t packed = profile->packed_bytes_per_token();
  const int64_t fp16 = profile->fp16_bytes_per_token();
  absl::PrintF("bytes per token (all layers, K+V): packed %d, fp16 %d, compression %.2fx\n",
               packed, fp16, static_cast<double>(fp16) / packed);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!out.empty()) {
    if (absl::Status s = SaveProfile(*profile, out); !s.ok()) return Fail(s);
    absl::PrintF("wrote %s\n", out);
  }
  return 0;
}
