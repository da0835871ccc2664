// RoPE logit MAE (planner/fidelity.h) against a direct reimplementation
// that rotates whole key vectors, and the evaluation (kernels/eval) on a
// synthetic activations file with known properties.
#include "planner/fidelity.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "kernels/eval/evaluation.h"
#include "nlohmann/json.hpp"
#include "planner/safetensors.h"
#include "tests/unit/test_util.h"

namespace ropekv {
namespace {

using namespace planner;

// Applies RoPE by angle delta * frequency to each block of x (full vector).
std::vector<double> Rotate(const std::vector<RopeBlock>& blocks, const float* x, int d, double delta) {
  std::vector<double> y(d);
  for (const RopeBlock& b : blocks) {
    const double a = delta * b.frequency, c = std::cos(a), s = std::sin(a);
    y[b.dim_a] = c * x[b.dim_a] - s * x[b.dim_b];
    y[b.dim_b] = s * x[b.dim_a] + c * x[b.dim_b];
  }
  return y;
}

double DirectMae(const std::vector<RopeBlock>& blocks, const std::vector<float>& q, int group,
                 const std::vector<float>& k, const std::vector<float>& kh, int64_t n, int d,
                 const std::vector<double>& offsets) {
  double total = 0;
  for (double delta : offsets) {
    double err = 0;
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> kr = Rotate(blocks, k.data() + t * d, d, delta);
      const std::vector<double> khr = Rotate(blocks, kh.data() + t * d, d, delta);
      for (int g = 0; g < group; ++g) {
        double a = 0, b = 0;
        for (int j = 0; j < d; ++j) {
          a += q[(g * n + t) * d + j] * kr[j];
          b += q[(g * n + t) * d + j] * khr[j];
        }
        err += std::abs(a - b);
      }
    }
    total += err / (group * n);
  }
  return total / offsets.size();
}

TEST(FidelityTest, MaeMatchesDirectRotationOfWholeKeys) {
  for (RopeLayout layout : {RopeLayout::kSplitHalf, RopeLayout::kInterleaved}) {
    for (auto [d, rotary] : {std::pair{8, 8}, std::pair{12, 8}, std::pair{36, 32}}) {
      ModelGeometry g{1, 2, 1, d, layout, rotary, 10000.0};
      const std::vector<RopeBlock> blocks = *RopeBlocks(g);
      const int64_t n = 7;
      const int group = 2;
      std::vector<float> q = testing::RandomNormal(group * n * d, d + 1);
      std::vector<float> k = testing::RandomNormal(n * d, d + 2);
      std::vector<float> kh = k;
      std::vector<float> noise = testing::RandomNormal(n * d, d + 3, 0.3f);
      for (size_t i = 0; i < kh.size(); ++i) kh[i] += noise[i];
      const std::vector<double> offsets = LogitOffsets(9, -300, 300);
      const double fast = RopeLogitMae(blocks, q.data(), group, k.data(), kh.data(), n, offsets);
      const double direct = DirectMae(blocks, q, group, k, kh, n, d, offsets);
      EXPECT_NEAR(fast, direct, 1e-9 * std::max(1.0, direct)) << RopeLayoutName(layout) << " d " << d;
      EXPECT_GT(direct, 0.0);
      // An identity quantizer has no error.
      EXPECT_EQ(RopeLogitMae(blocks, q.data(), group, k.data(), k.data(), n, offsets), 0.0);
    }
  }
}

TEST(FidelityTest, OffsetsAreLinspace) {
  const std::vector<double> o = LogitOffsets();
  ASSERT_EQ(o.size(), 50u);
  EXPECT_EQ(o.front(), -1024.0);
  EXPECT_EQ(o.back(), 1024.0);
  EXPECT_NEAR(o[1] - o[0], 2048.0 / 49, 1e-12);
}

// A synthetic activations file: 2 layers, 4 query / 2 KV heads, head_dim 16,
// keys with a few loud RoPE blocks (so the allocation has something to
// find), `sequences` sequences of 24 tokens.
std::string SyntheticFile(int sequences) {
  const int layers = 2, qh = 4, kvh = 2, d = 16, per_seq = 24;
  const int64_t n = static_cast<int64_t>(sequences) * per_seq;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0, 1);
  auto tensor = [&](int heads, bool loud) {
    std::vector<float> x(static_cast<size_t>(layers) * heads * n * d);
    for (size_t i = 0; i < x.size(); ++i) {
      const int dim = static_cast<int>(i % d);
      x[i] = nd(gen) * (loud && (dim == 0 || dim == 8) ? 6.0f : 1.0f);
    }
    return x;
  };
  const std::vector<float> q = tensor(qh, true), k = tensor(kvh, true), v = tensor(kvh, false);
  std::vector<int64_t> offsets;
  for (int s = 0; s <= sequences; ++s) offsets.push_back(int64_t{s} * per_seq);
  std::string data;
  auto add = [&](const void* p, size_t bytes) {
    const size_t at = data.size();
    data.append(static_cast<const char*>(p), bytes);
    return std::to_string(at) + "," + std::to_string(at + bytes);
  };
  const std::string qo = add(q.data(), q.size() * 4), ko = add(k.data(), k.size() * 4);
  const std::string vo = add(v.data(), v.size() * 4), so = add(offsets.data(), offsets.size() * 8);
  const std::string shape_q = "[2,4," + std::to_string(n) + ",16]", shape_k = "[2,2," + std::to_string(n) + ",16]";
  const std::string header =
      "{\"q\":{\"dtype\":\"F32\",\"shape\":" + shape_q + ",\"data_offsets\":[" + qo + "]}," +
      "\"k\":{\"dtype\":\"F32\",\"shape\":" + shape_k + ",\"data_offsets\":[" + ko + "]}," +
      "\"v\":{\"dtype\":\"F32\",\"shape\":" + shape_k + ",\"data_offsets\":[" + vo + "]}," +
      "\"seq_offsets\":{\"dtype\":\"I64\",\"shape\":[" + std::to_string(offsets.size()) +
      "],\"data_offsets\":[" + so + "]}," +
      R"("__metadata__":{"layers":"2","q_heads":"4","kv_heads":"2","head_dim":"16",)"
      R"("rope_layout":"split-half","rotary_dim":"16","rope_theta":"10000"}})";
  std::string out(8, '\0');
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  return out + header + data;
}

TEST(EvaluationTest, ReportsEveryBudgetMethodAndLayer) {
  const SafetensorsFile f = *SafetensorsFile::Parse(SyntheticFile(6));
  kernels::EvalOptions o;
  o.key_bits = {2, 8};
  o.value_bits = {2, 8};
  absl::StatusOr<kernels::EvalReport> r = kernels::EvaluateProfiles(f, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->test_sequences, 3);
  EXPECT_EQ(r->test_tokens, 72);
  ASSERT_EQ(r->results.size(), 12u);  // 2 budgets x 6 methods
  for (const kernels::MethodFidelity& m : r->results) {
    ASSERT_EQ(m.layers.size(), 2u);
    EXPECT_EQ(m.layers_beating_uniform >= 0, m.method != kernels::EvalMethod::kUniform);
    for (const kernels::LayerFidelity& l : m.layers) {
      EXPECT_GT(l.logit_mae, 0.0);
      EXPECT_GT(l.attention_error, 0.0);
      // More bits, less error: 8 bits is far below 2 bits.
      if (m.key_bits == 8) {
        EXPECT_LT(l.attention_error, 0.02);
      } else {
        EXPECT_GT(l.attention_error, 0.1);
      }
    }
    EXPECT_NEAR(m.compression, 2.0 * 2 * 16 * 2 * 2 / static_cast<double>(m.packed_bytes_per_token), 1e-12);
  }
  // Loud blocks: the allocation puts bits there and beats uniform on the logit MAE.
  EXPECT_LT(r->results[2].mean_logit_mae, r->results[0].mean_logit_mae);
  // The same-bytes variant fits in uniform's record and spends fewer code
  // bits; the byte-aware one takes exactly uniform's bytes (norms counted).
  for (int b = 0; b < 2; ++b) {
    const kernels::MethodFidelity& u = r->results[6 * b];
    const kernels::MethodFidelity& same = r->results[6 * b + 3];
    const kernels::MethodFidelity& bytes = r->results[6 * b + 4];
    const kernels::MethodFidelity& blind = r->results[6 * b + 5];
    EXPECT_LE(same.packed_bytes_per_token, u.packed_bytes_per_token);
    EXPECT_LE(same.key_avg_bits, u.key_bits);
    EXPECT_EQ(bytes.method, kernels::EvalMethod::kLogitBytes);
    EXPECT_LE(bytes.packed_bytes_per_token, u.packed_bytes_per_token);
    EXPECT_EQ(blind.method, kernels::EvalMethod::kKeyVarianceBytes);
    EXPECT_LE(blind.packed_bytes_per_token, u.packed_bytes_per_token);
  }
  nlohmann::json j = nlohmann::json::parse(kernels::EvalReportJson(*r));
  EXPECT_EQ(j["results"].size(), 12u);
  EXPECT_EQ(j["results"][1]["method"], "energy");
  EXPECT_EQ(j["results"][0]["layers"].size(), 2u);
  EXPECT_TRUE(j["results"][0]["layers"][0].contains("attention_error"));
  EXPECT_EQ(j["geometry"]["head_dim"], 16);
}

// The rate-distortion sweep: uniform only at integer budgets (and then the
// same profile as the budget table's), the byte-aware methods at every
// budget within its key bytes.
TEST(EvaluationTest, SweepCoversEveryBudgetWithinItsBytes) {
  const SafetensorsFile f = *SafetensorsFile::Parse(SyntheticFile(6));
  kernels::EvalOptions o;
  o.key_bits = {2};
  o.value_bits = {2};
  o.methods = {kernels::EvalMethod::kUniform, kernels::EvalMethod::kLogitBytes,
               kernels::EvalMethod::kKeyVarianceBytes};
  o.sweep_key_bits = {1.5, 2, 3.5};
  o.sweep_value_bits = 2;
  absl::StatusOr<kernels::EvalReport> r = kernels::EvaluateProfiles(f, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->sweep.size(), 7u);  // 2 + 3 + 2
  const int layers = 2, kv_heads = 2, d = 16;
  for (const kernels::MethodFidelity& m : r->sweep) {
    const int value_bytes = d * 2 / 8 + 2;
    EXPECT_LE(m.packed_bytes_per_token, static_cast<int64_t>(layers) * kv_heads * (m.key_bytes_budget + value_bytes));
    EXPECT_GT(m.mean_logit_mae, 0.0);
    if (m.method == kernels::EvalMethod::kUniform) {
      EXPECT_EQ(m.key_bytes_budget, 2 * d / 8 + 2);
      EXPECT_DOUBLE_EQ(m.mean_logit_mae, r->results[0].mean_logit_mae);
      EXPECT_DOUBLE_EQ(m.mean_attention_error, r->results[0].mean_attention_error);
    }
  }
  EXPECT_EQ(r->sweep[0].key_bytes_budget, 3 + 2);  // ceil(16 x 1.5 / 8) + 2
  EXPECT_EQ(r->sweep[0].method, kernels::EvalMethod::kLogitBytes);
  // More bytes, less error, for each byte-aware method.
  EXPECT_GT(r->sweep[0].mean_logit_mae, r->sweep[5].mean_logit_mae);
  EXPECT_GT(r->sweep[1].mean_logit_mae, r->sweep[6].mean_logit_mae);
  nlohmann::json j = nlohmann::json::parse(kernels::EvalReportJson(*r));
  EXPECT_EQ(j["sweep"].size(), 7u);
  EXPECT_EQ(j["sweep"][1]["method"], "key-variance-bytes");
}

// Modelled cheaper norms: the byte-aware allocation still fits uniform's
// bytes, counted with the cheaper norms; uniform (one group) is untouched;
// an odd norm width is refused by name.
TEST(EvaluationTest, CheaperGroupNormsStayWithinUniformBytes) {
  const SafetensorsFile f = *SafetensorsFile::Parse(SyntheticFile(6));
  kernels::EvalOptions o;
  o.key_bits = {3};
  o.value_bits = {3};
  o.methods = {kernels::EvalMethod::kUniform, kernels::EvalMethod::kLogitBytes};
  absl::StatusOr<kernels::EvalReport> fp16 = kernels::EvaluateProfiles(f, o);
  ASSERT_TRUE(fp16.ok()) << fp16.status();
  o.group_norm_bits = 8;
  absl::StatusOr<kernels::EvalReport> cheap = kernels::EvaluateProfiles(f, o);
  ASSERT_TRUE(cheap.ok()) << cheap.status();
  EXPECT_DOUBLE_EQ(cheap->results[0].mean_logit_mae, fp16->results[0].mean_logit_mae);
  EXPECT_EQ(cheap->results[0].packed_bytes_per_token, fp16->results[0].packed_bytes_per_token);
  EXPECT_LE(cheap->results[1].packed_bytes_per_token, cheap->results[0].packed_bytes_per_token);
  EXPECT_GT(cheap->results[1].mean_logit_mae, 0.0);
  o.group_norm_bits = 7;
  absl::Status s = kernels::EvaluateProfiles(f, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("group_norm_bits"), std::string::npos) << s;
}

TEST(EvaluationTest, BadOptionsAndFilesAreClear) {
  const SafetensorsFile f = *SafetensorsFile::Parse(SyntheticFile(4));
  kernels::EvalOptions o;
  o.calibrate = SequenceSplit::kAll;
  EXPECT_EQ(kernels::EvaluateProfiles(f, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.value_bits = {3};
  EXPECT_EQ(kernels::EvaluateProfiles(f, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.key_bits = o.value_bits = {9};
  EXPECT_EQ(kernels::EvaluateProfiles(f, o).status().code(), absl::StatusCode::kInvalidArgument);
  const SafetensorsFile one = *SafetensorsFile::Parse(SyntheticFile(1));
  absl::Status s = kernels::EvaluateProfiles(one, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("seq_offsets"), std::string::npos) << s;
}

}  // namespace
}  // namespace ropekv
