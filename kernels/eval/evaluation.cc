#include "kernels/eval/evaluation.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/codec.h"
#include "planner/allocator.h"
#include "nlohmann/json.hpp"
#include "planner/fidelity.h"
#include "planner/half.h"

namespace ropekv::kernels {
namespace {

using planner::SequenceSplit;

// Causal softmax attention of one query head over one sequence in fp64:
// out[t] = sum_{u <= t} softmax_u(q_t . k_u / sqrt(d)) v_u.
void CausalAttention(const float* q, const float* k, const float* v, int64_t n, int d,
                     std::vector<double>* out) {
  out->assign(static_cast<size_t>(n) * d, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> w(n);
  for (int64_t t = 0; t < n; ++t) {
    double mx = -INFINITY;
    for (int64_t u = 0; u <= t; ++u) {
      double s = 0;
      for (int j = 0; j < d; ++j) s += static_cast<double>(q[t * d + j]) * k[u * d + j];
      w[u] = s * scale;
      mx = std::max(mx, w[u]);
    }
    double sum = 0;
    for (int64_t u = 0; u <= t; ++u) sum += (w[u] = std::exp(w[u] - mx));
    double* o = out->data() + t * d;
    for (int64_t u = 0; u <= t; ++u) {
      const double p = w[u] / sum;
      for (int j = 0; j < d; ++j) o[j] += p * v[u * d + j];
    }
  }
}

// Bytes of a head's record when every key group's norm after the widest
// group's is coded in norm_bits relative to it (16: the record as stored).
int64_t RecordBytesWithNorms(const planner::HeadPlan& h, int norm_bits) {
  const planner::TokenLayout& l = h.layout;
  const int groups = static_cast<int>(h.key_groups.size());
  const int stored = (l.key_code_bits + 7) / 8 + 2 * groups;
  const int coded = (l.key_code_bits + 16 + (groups - 1) * norm_bits + 7) / 8;
  return l.record_bytes - stored + coded;
}

// Models cheaper group norms on an encoded record: the widest group keeps
// its fp16 norm, every other group's becomes that norm times 2^(c s), c a
// norm_bits-bit code (one code reserved for a zero norm) and s = 16 /
// 2^norm_bits octaves, so ratios within +-8 octaves keep a relative error
// of at most 2^(s/2) - 1.
void CodeNormsRelative(const planner::HeadPlan& h, int norm_bits, uint8_t* record) {
  const int groups = static_cast<int>(h.key_groups.size());
  if (groups < 2 || norm_bits >= 16) return;
  uint8_t* norms = record + h.layout.key_norms_offset;
  auto get = [&](int g) { return planner::HalfToFloat(static_cast<uint16_t>(norms[2 * g] | (norms[2 * g + 1] << 8))); };
  auto put = [&](int g, float x) {
    const uint16_t v = planner::FloatToHalf(x);
    norms[2 * g] = static_cast<uint8_t>(v & 0xFF);
    norms[2 * g + 1] = static_cast<uint8_t>(v >> 8);
  };
  const float ref = get(groups - 1);
  const double step = 16.0 / (1 << norm_bits);
  const int top = (1 << (norm_bits - 1)) - 1;
  for (int g = 0; g + 1 < groups; ++g) {
    const float n = get(g);
    if (n == 0.0f || ref == 0.0f) {
      put(g, ref == 0.0f ? n : 0.0f);  // the reserved code, or no reference to code against
      continue;
    }
    const double c = std::clamp(std::round(std::log2(static_cast<double>(n) / ref) / step), -double(top), double(top));
    put(g, static_cast<float>(ref * std::exp2(c * step)));
  }
}

bool IsByteAware(EvalMethod m) { return m == EvalMethod::kLogitBytes || m == EvalMethod::kKeyVarianceBytes; }

planner::Budget BudgetFor(EvalMethod m, int key_bits, int value_bits) {
  if (m == EvalMethod::kUniform) return planner::UniformBudget(key_bits, value_bits);
  planner::Budget b;
  b.key_avg_bits = key_bits;
  b.value_bits = value_bits;
  b.score = m == EvalMethod::kEnergy ? planner::ScoreKind::kEnergy : planner::ScoreKind::kLogit;
  return b;
}

}  // namespace

const char* EvalMethodName(EvalMethod m) {
  switch (m) {
    case EvalMethod::kUniform: return "uniform";
    case EvalMethod::kEnergy: return "energy";
    case EvalMethod::kLogit: return "logit";
    case EvalMethod::kLogitSameBytes: return "logit-same-bytes";
    case EvalMethod::kLogitBytes: return "logit-bytes";
    case EvalMethod::kKeyVarianceBytes: return "key-variance-bytes";
  }
  return "?";
}

absl::StatusOr<EvalReport> EvaluateProfiles(const planner::SafetensorsFile& file,
                                            const EvalOptions& options) {
  if (options.key_bits.empty() || options.key_bits.size() != options.value_bits.size()) {
    return absl::InvalidArgumentError("key_bits/value_bits: expected two lists of the same, non-zero length");
  }
  if (options.methods.empty()) return absl::InvalidArgumentError("methods: expected at least one");
  if (options.calibrate == SequenceSplit::kAll) {
    return absl::InvalidArgumentError("calibrate: expected even or odd (the other split is the test set)");
  }
  if (options.num_offsets < 1 || !(options.max_offset >= 0)) {
    return absl::InvalidArgumentError("num_offsets/max_offset: expected >= 1 offsets and a range >= 0");
  }
  absl::StatusOr<planner::ModelGeometry> geometry = planner::GeometryFromMetadata(file);
  if (!geometry.ok()) return geometry.status();
  const planner::ModelGeometry& g = *geometry;
  if (!file.tensors().count("v")) return absl::InvalidArgumentError("v: tensor missing (expected [layer, head, token, head_dim])");
  const std::vector<int64_t>& kshape = file.tensors().at("k").shape;
  if (file.tensors().at("v").shape != kshape) {
    return absl::InvalidArgumentError("v: expected the shape of k");
  }
  const int64_t tokens = kshape[2];
  absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> ranges = planner::SequenceRanges(file, tokens);
  if (!ranges.ok()) return ranges.status();
  if (ranges->size() < 2) {
    return absl::FailedPreconditionError("seq_offsets: one sequence only, so no calibration/test split");
  }
  absl::StatusOr<std::vector<float>> q = file.ReadFloat("q");
  if (!q.ok()) return q.status();
  absl::StatusOr<std::vector<float>> k = file.ReadFloat("k");
  if (!k.ok()) return k.status();
  absl::StatusOr<std::vector<float>> v = file.ReadFloat("v");
  if (!v.ok()) return v.status();

  EvalReport report;
  report.geometry = g;
  const bool cal_even = options.calibrate == SequenceSplit::kEven;
  report.calibrate = cal_even ? "even" : "odd";
  report.test = cal_even ? "odd" : "even";
  std::vector<std::pair<int64_t, int64_t>> test;
  for (size_t s = cal_even ? 1 : 0; s < ranges->size(); s += 2) test.push_back((*ranges)[s]);
  for (const auto& [b, e] : test) report.test_tokens += e - b;
  report.test_sequences = static_cast<int>(test.size());

  absl::StatusOr<planner::ScoreAccumulator> scores = planner::ScoreAccumulator::Create(g);
  if (!scores.ok()) return scores.status();
  if (absl::Status s = planner::AccumulateCalibration(file, options.calibrate, &*scores); !s.ok()) return s;

  const int d = g.head_dim, group = g.group_size();
  absl::StatusOr<std::vector<planner::RopeBlock>> blocks = planner::RopeBlocks(g);
  if (!blocks.ok()) return blocks.status();
  const std::vector<double> offsets = planner::LogitOffsets(options.num_offsets, -options.max_offset, options.max_offset);
  auto at = [&](const std::vector<float>& x, int layer, int head, int heads, int64_t t) {
    return x.data() + ((static_cast<int64_t>(layer) * heads + head) * tokens + t) * d;
  };

  // Measures one profile on the test split into r (layers, means, bytes).
  // norm_bits < 16: the group norms after the widest are coded relative to
  // it (CodeNormsRelative) and the bytes counted so.
  auto measure = [&](const planner::ModelProfile& prof, int norm_bits, MethodFidelity& r) -> absl::Status {
    r.layers.resize(g.num_layers);
    for (int layer = 0; layer < g.num_layers; ++layer) {
      LayerFidelity& lf = r.layers[layer];
      double err2 = 0, ref2 = 0;
      for (int h = 0; h < g.num_kv_heads; ++h) {
        const planner::HeadPlan& plan = prof.layers[layer].heads[h];
        lf.packed_bytes_per_token += RecordBytesWithNorms(plan, norm_bits);
        std::vector<uint8_t> rec(plan.layout.record_bytes);
        // Test tokens of this head: originals and reconstructions.
        std::vector<float> kk(report.test_tokens * d), kh(kk.size()), vv(kk.size()), vh(kk.size());
        std::vector<float> qq(static_cast<size_t>(group) * report.test_tokens * d);
        int64_t i = 0;
        for (const auto& [b, e] : test) {
          for (int64_t t = b; t < e; ++t, ++i) {
            const float* ks = at(*k, layer, h, g.num_kv_heads, t);
            const float* vs = at(*v, layer, h, g.num_kv_heads, t);
            std::copy(ks, ks + d, kk.begin() + i * d);
            std::copy(vs, vs + d, vv.begin() + i * d);
            if (absl::Status s = EncodeKey(plan, ks, rec.data()); !s.ok()) {
              return absl::InvalidArgumentError(absl::StrCat("k[", layer, ", ", h, ", ", t, "]: ", s.message()));
            }
            if (absl::Status s = EncodeValue(plan, vs, rec.data()); !s.ok()) {
              return absl::InvalidArgumentError(absl::StrCat("v[", layer, ", ", h, ", ", t, "]: ", s.message()));
            }
            CodeNormsRelative(plan, norm_bits, rec.data());
            DecodeKey(plan, rec.data(), kh.data() + i * d);
            DecodeValue(plan, rec.data(), vh.data() + i * d);
            for (int gi = 0; gi < group; ++gi) {
              const float* qs = at(*q, layer, h * group + gi, g.num_q_heads, t);
              std::copy(qs, qs + d, qq.begin() + (gi * report.test_tokens + i) * d);
            }
          }
        }
        lf.logit_mae += planner::RopeLogitMae(*blocks, qq.data(), group, kk.data(), kh.data(),
                                              report.test_tokens, offsets) / g.num_kv_heads;
        // Attention within each test sequence, per query head.
        std::vector<double> o, oh;
        int64_t first = 0;
        for (const auto& [b, e] : test) {
          const int64_t n = e - b;
          for (int gi = 0; gi < group; ++gi) {
            const float* qs = qq.data() + (gi * report.test_tokens + first) * d;
            CausalAttention(qs, kk.data() + first * d, vv.data() + first * d, n, d, &o);
            CausalAttention(qs, kh.data() + first * d, vh.data() + first * d, n, d, &oh);
            for (size_t j = 0; j < o.size(); ++j) {
              err2 += (oh[j] - o[j]) * (oh[j] - o[j]);
              ref2 += o[j] * o[j];
            }
          }
          first += n;
        }
      }
      lf.attention_error = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
      r.mean_logit_mae += lf.logit_mae / g.num_layers;
      r.mean_attention_error += lf.attention_error / g.num_layers;
    }
    r.packed_bytes_per_token = 0;
    for (const LayerFidelity& lf : r.layers) r.packed_bytes_per_token += lf.packed_bytes_per_token;
    r.compression = static_cast<double>(prof.fp16_bytes_per_token()) / r.packed_bytes_per_token;
    return absl::OkStatus();
  };

  // The byte-aware allocation of method m (its scores) at key_bytes per
  // token and KV head, every head on its own.
  auto byte_aware_profile = [&](EvalMethod m, int key_bytes,
                                const planner::Budget& budget) -> absl::StatusOr<planner::ModelProfile> {
    planner::PerHeadBits bits(g.num_layers);
    for (int layer = 0; layer < g.num_layers; ++layer) {
      for (int h = 0; h < g.num_kv_heads; ++h) {
        absl::StatusOr<std::vector<double>> s = m == EvalMethod::kLogitBytes
                                                    ? scores->Scores(layer, h, planner::ScoreKind::kLogit)
                                                    : scores->KeyEnergy(layer, h);
        if (!s.ok()) return s.status();
        planner::ByteBudgetOptions bo;
        bo.key_bytes = key_bytes;
        bo.min_bits = budget.min_bits;
        bo.max_bits = budget.max_bits;
        bo.max_groups = options.max_groups;
        bo.group_multiple = options.group_multiple;
        bo.group_norm_bits = options.group_norm_bits;
        absl::StatusOr<std::vector<int>> b = planner::AllocateBitsForBytes(*s, bo);
        if (!b.ok()) return b.status();
        bits[layer].push_back(*std::move(b));
      }
    }
    return planner::BuildProfileFromAllocation(g, budget, bits);
  };
  auto mean_key_bits = [&](const planner::ModelProfile& prof) {
    double sum = 0;
    for (const planner::LayerPlan& l : prof.layers) {
      for (const planner::HeadPlan& h : l.heads) sum += h.key_bits_per_dim();
    }
    return sum / (g.num_layers * g.num_kv_heads);
  };

  for (size_t bi = 0; bi < options.key_bits.size(); ++bi) {
    std::vector<double> uniform_mae;
    for (EvalMethod m : options.methods) {
      planner::Budget budget = BudgetFor(m, options.key_bits[bi], options.value_bits[bi]);
      absl::StatusOr<planner::ModelProfile> profile = planner::BuildProfile(*scores, budget);
      if (!profile.ok()) return profile.status();
      const bool byte_aware = IsByteAware(m);
      if (byte_aware) {
        // Per head, the byte-aware optimum at uniform's key bytes.
        profile = byte_aware_profile(m, planner::KeyBytesOf(std::vector<int>(g.num_blocks(), options.key_bits[bi])),
                                     budget);
        if (!profile.ok()) return profile.status();
      }
      if (m == EvalMethod::kLogitSameBytes) {
        absl::StatusOr<planner::ModelProfile> uniform = planner::BuildProfile(
            *scores, planner::UniformBudget(options.key_bits[bi], options.value_bits[bi]));
        if (!uniform.ok()) return uniform.status();
        const double step = 2.0 / g.head_dim;  // one bit per block
        while (profile->packed_bytes_per_token() > uniform->packed_bytes_per_token() &&
               budget.key_avg_bits - step >= budget.min_bits) {
          budget.key_avg_bits -= step;
          profile = planner::BuildProfile(*scores, budget);
          if (!profile.ok()) return profile.status();
        }
      }
      MethodFidelity r;
      r.key_avg_bits = budget.key_avg_bits;
      if (byte_aware) r.key_avg_bits = mean_key_bits(*profile);  // what the allocation spent, on average
      r.method = m;
      r.key_bits = options.key_bits[bi];
      r.value_bits = options.value_bits[bi];
      if (absl::Status s = measure(*profile, byte_aware ? options.group_norm_bits : 16, r); !s.ok()) return s;
      if (m == EvalMethod::kUniform) {
        for (const LayerFidelity& lf : r.layers) uniform_mae.push_back(lf.logit_mae);
      } else if (!uniform_mae.empty()) {
        r.layers_beating_uniform = 0;
        for (int l = 0; l < g.num_layers; ++l) r.layers_beating_uniform += r.layers[l].logit_mae < uniform_mae[l];
      }
      report.results.push_back(std::move(r));
    }
  }

  // Rate-distortion: uniform at its integer widths, the byte-aware methods
  // at every budget, all with the same value width.
  for (double kb : options.sweep_key_bits) {
    const int key_bytes = static_cast<int>(std::ceil(d * kb / 8.0 - 1e-9)) + 2;  // uniform's formula
    const bool integer = std::abs(kb - std::round(kb)) < 1e-9;
    for (EvalMethod m : options.methods) {
      if (!(IsByteAware(m) || (m == EvalMethod::kUniform && integer))) continue;
      planner::Budget budget = BudgetFor(m, std::max(1, static_cast<int>(std::round(kb))), options.sweep_value_bits);
      absl::StatusOr<planner::ModelProfile> profile = m == EvalMethod::kUniform
                                                          ? planner::BuildProfile(*scores, budget)
                                                          : byte_aware_profile(m, key_bytes, budget);
      if (!profile.ok()) return profile.status();
      MethodFidelity r;
      r.method = m;
      r.key_bits = static_cast<int>(std::round(kb));
      r.value_bits = options.sweep_value_bits;
      r.key_avg_bits = mean_key_bits(*profile);
      r.key_bytes_budget = key_bytes;
      if (absl::Status s = measure(*profile, IsByteAware(m) ? options.group_norm_bits : 16, r); !s.ok()) return s;
      report.sweep.push_back(std::move(r));
    }
  }
  return report;
}

namespace {

// One method's figures, means and per layer, as the report's JSON holds them.
nlohmann::json MethodJson(const MethodFidelity& r) {
  nlohmann::json m = {{"method", EvalMethodName(r.method)},
                      {"key_bits", r.key_bits},
                      {"key_avg_bits", r.key_avg_bits},
                      {"value_bits", r.value_bits},
                      {"mean_logit_mae", r.mean_logit_mae},
                      {"mean_attention_error", r.mean_attention_error},
                      {"packed_bytes_per_token", r.packed_bytes_per_token},
                      {"compression", r.compression}};
  if (r.layers_beating_uniform >= 0) m["layers_beating_uniform"] = r.layers_beating_uniform;
  m["layers"] = nlohmann::json::array();
  for (const LayerFidelity& l : r.layers) {
    m["layers"].push_back({{"logit_mae", l.logit_mae},
                           {"attention_error", l.attention_error},
                           {"packed_bytes_per_token", l.packed_bytes_per_token}});
  }
  return m;
}

}  // namespace

std::string EvalReportJson(const EvalReport& report) {
  nlohmann::json j;
  const planner::ModelGeometry& g = report.geometry;
  j["geometry"] = {{"num_layers", g.num_layers}, {"num_q_heads", g.num_q_heads},
                   {"num_kv_heads", g.num_kv_heads}, {"head_dim", g.head_dim},
                   {"rope_layout", planner::RopeLayoutName(g.rope_layout)},
                   {"rotary_dim", g.rotary_dim}, {"rope_theta", g.rope_theta}};
  j["calibrate"] = report.calibrate;
  j["test"] = report.test;
  j["test_tokens"] = report.test_tokens;
  j["test_sequences"] = report.test_sequences;
  j["results"] = nlohmann::json::array();
  for (const MethodFidelity& r : report.results) j["results"].push_back(MethodJson(r));
  j["sweep"] = nlohmann::json::array();
  for (const MethodFidelity& r : report.sweep) {
    nlohmann::json m = MethodJson(r);
    m["key_bytes_budget"] = r.key_bytes_budget;
    j["sweep"].push_back(std::move(m));
  }
  return j.dump(2);
}

}  // namespace ropekv::kernels
