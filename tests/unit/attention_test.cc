#include <cmath>
#include <limits>
#include <random>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "planner/plan.h"
#include "tests/unit/test_util.h"

namespace ropekv::kernels {
namespace {

using testing::HostPagedLayer;

struct Case {
  int head_dim;
  int num_kv;
  int group;
  int q_len;
  bool causal;
  double key_bits;
  int value_bits;
  int page_tokens;
  int64_t tokens;
};

void PrintTo(const Case& c, std::ostream* os);

std::string Name(const Case& c) {
  return absl::StrCat("d", c.head_dim, "_kv", c.num_kv, "_g", c.group, "_q",
                      c.q_len, c.causal ? "_causal" : "", "_K",
                      static_cast<int>(c.key_bits * 10), "V", c.value_bits,
                      "_p", c.page_tokens);
}

void PrintTo(const Case& c, std::ostream* os) { *os << Name(c); }

// A layer plan from random heavy-tailed scores, and K/V with outlier
// channels and a non-zero mean, as real keys have.
struct Fixture {
  planner::ModelProfile profile;
  std::vector<float> keys, values, queries;
};

Fixture Make(const Case& c, uint32_t seed) {
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = c.num_kv;
  g.num_q_heads = c.num_kv * c.group;
  g.head_dim = c.head_dim;
  g.rotary_dim = c.head_dim;
  std::mt19937 gen(seed);
  std::lognormal_distribution<double> e(0, 2);
  planner::PerHead scores(1, std::vector<std::vector<double>>(
                                 c.num_kv, std::vector<double>(c.head_dim / 2)));
  for (auto& h : scores[0]) for (double& x : h) x = e(gen);
  planner::Budget b;
  b.key_avg_bits = c.key_bits;
  b.value_bits = c.value_bits;
  Fixture f{*planner::BuildProfileFromScores(g, b, scores), {}, {}, {}};
  const size_t kv = static_cast<size_t>(c.num_kv) * c.tokens * c.head_dim;
  f.keys = testing::RandomNormal(kv, seed + 1);
  f.values = testing::RandomNormal(kv, seed + 2);
  for (size_t i = 0; i < kv; ++i) {
    const int dim = static_cast<int>(i % c.head_dim);
    if (dim % 7 == 3) f.keys[i] = f.keys[i] * 4 + 2;  // outlier channels
  }
  f.queries = testing::RandomNormal(
      static_cast<size_t>(g.num_q_heads) * c.q_len * c.head_dim, seed + 3, 1.5f);
  return f;
}

class AttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionTest, EqualsDenseFp64OverDecodedCache) {
  const Case c = GetParam();
  Fixture f = Make(c, 100 + c.head_dim + c.group);
  const planner::LayerPlan& plan = f.profile.layers[0];
  std::unique_ptr<Backend> backend = CreateCpuBackend({.num_threads = 2});
  HostPagedLayer pages(plan, c.page_tokens, c.tokens);
  // Append in two uneven pieces, as a session would.
  const int64_t first = c.tokens / 3;
  std::vector<float> k1(f.keys), v1(f.values);
  auto slice = [&](const std::vector<float>& src, int64_t begin, int64_t n) {
    std::vector<float> out;
    for (int h = 0; h < c.num_kv; ++h) {
      auto from = src.begin() + (static_cast<int64_t>(h) * c.tokens + begin) * c.head_dim;
      out.insert(out.end(), from, from + n * c.head_dim);
    }
    return out;
  };
  for (auto [begin, n] : {std::pair<int64_t, int64_t>{0, first},
                          std::pair<int64_t, int64_t>{first, c.tokens - first}}) {
    const std::vector<float> k = slice(f.keys, begin, n), v = slice(f.values, begin, n);
    ASSERT_TRUE(backend->EncodeLayer(plan, pages.view(begin), begin, k.data(), v.data(), n).ok());
  }
  const PagedLayerView view = pages.view(c.tokens);
  std::vector<float> k_hat(f.keys.size()), v_hat(f.values.size());
  ASSERT_TRUE(backend->DecodeLayer(plan, view, 0, c.tokens, k_hat.data(), v_hat.data()).ok());

  const int num_q = c.num_kv * c.group;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int64_t offset = c.tokens - c.q_len;
  std::vector<float> out(static_cast<size_t>(num_q) * c.q_len * c.head_dim, NAN);
  std::vector<float> lse(static_cast<size_t>(num_q) * c.q_len, NAN);
  AttentionParams p;
  p.queries = f.queries.data();
  p.num_q_heads = num_q;
  p.q_len = c.q_len;
  p.causal = c.causal;
  p.causal_offset = offset;
  p.scale = scale;
  p.out = out.data();
  p.lse = lse.data();
  ASSERT_TRUE(backend->Attend(plan, view, p).ok());

  std::vector<double> ref_out, ref_lse;
  testing::ReferenceAttention(f.queries, num_q, c.q_len, k_hat, v_hat, c.num_kv,
                              c.tokens, c.head_dim, scale, c.causal, offset, 0,
                              c.tokens, &ref_out, &ref_lse);
  EXPECT_LT(testing::RelativeError(out, ref_out), 1e-5);
  for (size_t i = 0; i < lse.size(); ++i) {
    EXPECT_NEAR(lse[i], ref_lse[i], 1e-5 * std::max(1.0, std::abs(ref_lse[i])));
  }

  // Split into three ranges (one of them may hold no visible token) and
  // merge: equals the unsplit result.
  std::vector<std::vector<float>> part_out(3, std::vector<float>(out.size(), NAN));
  std::vector<std::vector<float>> part_lse(3, std::vector<float>(lse.size(), NAN));
  const int64_t cuts[] = {0, c.tokens / 2, c.tokens - 1, c.tokens};
  for (int s = 0; s < 3; ++s) {
    AttentionParams q = p;
    q.token_begin = cuts[s];
    q.token_end = cuts[s + 1];
    q.out = part_out[s].data();
    q.lse = part_lse[s].data();
    ASSERT_TRUE(backend->Attend(plan, view, q).ok());
  }
  std::vector<float> merged(out.size(), NAN), merged_lse(lse.size(), NAN);
  const float* outs[] = {part_out[0].data(), part_out[1].data(), part_out[2].data()};
  const float* lses[] = {part_lse[0].data(), part_lse[1].data(), part_lse[2].data()};
  MergeParams m;
  m.partial_out = outs;
  m.partial_lse = lses;
  m.rows = num_q * c.q_len;
  m.head_dim = c.head_dim;
  m.out = merged.data();
  m.lse = merged_lse.data();
  ASSERT_TRUE(backend->MergeStates(m).ok());
  EXPECT_LT(testing::RelativeError(merged, out), 2e-6);
  for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(merged_lse[i], lse[i], 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Geometries, AttentionTest,
    ::testing::Values(
        Case{128, 2, 8, 1, false, 3.0, 3, 16, 300},
        Case{128, 2, 8, 4, true, 3.0, 3, 16, 300},
        Case{128, 1, 16, 1, false, 2.0, 2, 64, 513},
        Case{64, 4, 1, 1, true, 2.5, 4, 7, 97},
        Case{64, 2, 3, 5, true, 4.0, 2, 32, 64},
        Case{36, 8, 1, 2, true, 3.0, 3, 5, 41},
        Case{256, 1, 4, 1, false, 1.5, 1, 16, 100},
        Case{128, 2, 2, 3, false, 6.0, 8, 8, 77}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return Name(info.param);
    });

TEST(AttentionEdgeTest, QueriesThatSeeNoTokenGiveZeroAndMinusInfinity) {
  Case c{64, 1, 2, 2, true, 3.0, 3, 16, 10};
  Fixture f = Make(c, 5);
  const planner::LayerPlan& plan = f.profile.layers[0];
  std::unique_ptr<Backend> backend = CreateCpuBackend();
  HostPagedLayer pages(plan, 16, 10);
  ASSERT_TRUE(backend->EncodeLayer(plan, pages.view(0), 0, f.keys.data(), f.values.data(), 10).ok());
  std::vector<float> out(2 * 2 * 64, NAN), lse(4, NAN);
  AttentionParams p;
  p.queries = f.queries.data();
  p.num_q_heads = 2;
  p.q_len = 2;
  p.causal = true;
  p.causal_offset = -1;  // query 0 sees nothing, query 1 sees token 0
  p.out = out.data();
  p.lse = lse.data();
  ASSERT_TRUE(backend->Attend(plan, pages.view(10), p).ok());
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(lse[h * 2], -std::numeric_limits<float>::infinity());
    for (int j = 0; j < 64; ++j) EXPECT_EQ(out[h * 2 * 64 + j], 0.0f);
    EXPECT_TRUE(std::isfinite(lse[h * 2 + 1]));
  }
}

TEST(AttentionEdgeTest, BadArguments) {
  Case c{64, 2, 2, 1, false, 3.0, 3, 16, 20};
  Fixture f = Make(c, 6);
  const planner::LayerPlan& plan = f.profile.layers[0];
  std::unique_ptr<Backend> backend = CreateCpuBackend();
  HostPagedLayer pages(plan, 16, 20);
  ASSERT_TRUE(backend->EncodeLayer(plan, pages.view(0), 0, f.keys.data(), f.values.data(), 20).ok());
  // Encoding past the pages' capacity is refused.
  EXPECT_EQ(backend->EncodeLayer(plan, pages.view(20), 20, f.keys.data(), f.values.data(), 20).code(),
            absl::StatusCode::kOutOfRange);
  std::vector<float> out(4 * 64), lse(4);
  AttentionParams p;
  p.queries = f.queries.data();
  p.num_q_heads = 4;
  p.out = out.data();
  p.lse = lse.data();
  const PagedLayerView view = pages.view(20);
  AttentionParams bad = p;
  bad.q_len = 0;
  EXPECT_EQ(backend->Attend(plan, view, bad).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.num_q_heads = 3;
  EXPECT_EQ(backend->Attend(plan, view, bad).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.token_end = 21;
  EXPECT_EQ(backend->Attend(plan, view, bad).code(), absl::StatusCode::kOutOfRange);
  bad = p;
  bad.token_begin = -1;
  EXPECT_EQ(backend->Attend(plan, view, bad).code(), absl::StatusCode::kOutOfRange);
  bad = p;
  bad.out = nullptr;
  EXPECT_EQ(backend->Attend(plan, view, bad).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> k(2 * 64);
  EXPECT_EQ(backend->DecodeLayer(plan, view, 19, 2, k.data(), nullptr).code(),
            absl::StatusCode::kOutOfRange);
  // NaN input: INVALID_ARGUMENT naming head and token.
  std::vector<float> keys = f.keys;
  keys[5 * 64 + 3] = NAN;
  absl::Status s = backend->EncodeLayer(plan, pages.view(0), 0, keys.data(), f.values.data(), 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token 5"), std::string::npos) << s;
}

}  // namespace
}  // namespace ropekv::kernels
