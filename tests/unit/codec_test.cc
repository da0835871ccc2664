#include "kernels/cpu/codec.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "planner/allocator.h"
#include "planner/codebook.h"
#include "tests/unit/test_util.h"

namespace ropekv::kernels {
namespace {

using planner::Budget;
using planner::HeadPlan;

planner::ModelGeometry Geo(int d) {
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_q_heads = 1;
  g.num_kv_heads = 1;
  g.head_dim = d;
  g.rotary_dim = d;
  return g;
}

HeadPlan UniformPlan(int d, int bits) {
  return *planner::BuildHeadPlan(*planner::RopeBlocks(Geo(d)),
                                 std::vector<int>(d / 2, bits),
                                 planner::UniformBudget(bits, bits), 0, 0);
}

HeadPlan MixedPlan(int d, double avg, int v_bits, uint32_t seed) {
  std::mt19937 gen(seed);
  std::lognormal_distribution<double> e(0, 2);
  std::vector<double> s(d / 2);
  for (double& x : s) x = e(gen);
  Budget b;
  b.key_avg_bits = avg;
  b.value_bits = v_bits;
  return *planner::BuildHeadPlan(*planner::RopeBlocks(Geo(d)),
                                 *planner::AllocateBits(s, {avg, 1, 8}), b, 0, 0);
}

std::vector<float> RandomUnit(int d, std::mt19937& gen) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> v(d);
  double s = 0;
  for (float& x : v) {
    x = n(gen);
    s += x * x;
  }
  for (float& x : v) x /= std::sqrt(s);
  return v;
}

TEST(CodecTest, MeanSquaredErrorOfUnitVectorsMatchesCodebookDistortion) {
  // planner/ALGORITHM.md section 3: with norm correction, at d = 128, the MSE per
  // unit norm is within a few % of the Lloyd-Max distortion D for 2-4 bits;
  // at 1 bit the correction lifts it about 10% above D, to about 0.401.
  const int d = 128, n = 6000;
  std::mt19937 gen(17);
  for (int bits = 1; bits <= 4; ++bits) {
    const HeadPlan p = UniformPlan(d, bits);
    std::vector<uint8_t> rec(p.layout.record_bytes);
    std::vector<float> k_hat(d), v_hat(d);
    double key_mse = 0, value_mse = 0;
    for (int i = 0; i < n; ++i) {
      const std::vector<float> x = RandomUnit(d, gen);
      ASSERT_TRUE(EncodeKey(p, x.data(), rec.data()).ok());
      ASSERT_TRUE(EncodeValue(p, x.data(), rec.data()).ok());
      DecodeKey(p, rec.data(), k_hat.data());
      DecodeValue(p, rec.data(), v_hat.data());
      for (int j = 0; j < d; ++j) {
        key_mse += (k_hat[j] - x[j]) * (k_hat[j] - x[j]);
        value_mse += (v_hat[j] - x[j]) * (v_hat[j] - x[j]);
      }
    }
    key_mse /= n;
    value_mse /= n;
    const double D = (*planner::LloydMaxGaussian(bits))->distortion;
    if (bits == 1) {
      EXPECT_NEAR(key_mse, 0.401, 0.02);
      EXPECT_NEAR(value_mse, 0.401, 0.02);
    } else {
      EXPECT_NEAR(key_mse / D, 1.0, 0.10) << bits << " bits: " << key_mse;
      EXPECT_NEAR(value_mse / D, 1.0, 0.10) << bits << " bits: " << value_mse;
    }
    std::printf("[ figures  ] %d-bit unit-vector MSE: key %.4f value %.4f (D = %.4f)\n",
                bits, key_mse, value_mse, D);
  }
}

TEST(CodecTest, DecodedGroupsKeepTheirNormToFp16Precision) {
  std::mt19937 gen(4);
  std::normal_distribution<float> n(0, 3);
  for (int d : {36, 64, 128}) {
    const HeadPlan p = MixedPlan(d, 3.0, 3, d);
    std::vector<uint8_t> rec(p.layout.record_bytes);
    std::vector<float> k(d), k_hat(d), v_hat(d);
    for (int trial = 0; trial < 200; ++trial) {
      for (float& x : k) x = n(gen) + (trial % 3 == 0 ? 5.0f : 0.0f);
      ASSERT_TRUE(EncodeKey(p, k.data(), rec.data()).ok());
      ASSERT_TRUE(EncodeValue(p, k.data(), rec.data()).ok());
      DecodeKey(p, rec.data(), k_hat.data());
      DecodeValue(p, rec.data(), v_hat.data());
      for (const planner::KeyGroupPlan& g : p.key_groups) {
        double a = 0, b = 0;
        for (int j = g.offset; j < g.offset + g.dim; ++j) {
          a += k[p.permutation[j]] * k[p.permutation[j]];
          b += k_hat[p.permutation[j]] * k_hat[p.permutation[j]];
        }
        EXPECT_NEAR(std::sqrt(b) / std::sqrt(a), 1.0, 4.9e-4 + 1e-6);
      }
      double a = 0, b = 0;
      for (int j = 0; j < d; ++j) {
        a += k[j] * k[j];
        b += v_hat[j] * v_hat[j];
      }
      EXPECT_NEAR(std::sqrt(b) / std::sqrt(a), 1.0, 4.9e-4 + 1e-6);
    }
  }
}

TEST(CodecTest, NearestCodeIsTheNearestCentroid) {
  std::mt19937 gen(8);
  std::normal_distribution<float> n(0, 0.2f);
  for (int bits = 1; bits <= 8; ++bits) {
    const planner::Codebook cb = *planner::LloydMaxCodebook(bits, 32);
    for (int i = 0; i < 2000; ++i) {
      const float y = n(gen);
      int best = 0;
      for (int c = 1; c < cb.num_levels(); ++c) {
        if (std::abs(y - cb.centroids[c]) < std::abs(y - cb.centroids[best])) best = c;
      }
      const int got = NearestCode(cb, y);
      // Equal unless y sits within rounding of a boundary.
      if (got != best) {
        EXPECT_NEAR(std::abs(y - cb.centroids[got]), std::abs(y - cb.centroids[best]), 1e-6);
      }
    }
  }
}

TEST(CodecTest, ZeroVectorDecodesToZero) {
  const HeadPlan p = MixedPlan(64, 2.5, 2, 1);
  std::vector<uint8_t> rec(p.layout.record_bytes, 0xFF);
  std::vector<float> zero(64, 0.0f), out(64, 1.0f);
  ASSERT_TRUE(EncodeKey(p, zero.data(), rec.data()).ok());
  ASSERT_TRUE(EncodeValue(p, zero.data(), rec.data()).ok());
  DecodeKey(p, rec.data(), out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
  DecodeValue(p, rec.data(), out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(CodecTest, BadInputLeavesTheRecordUnchanged) {
  const HeadPlan p = MixedPlan(64, 3.0, 3, 2);
  std::vector<uint8_t> rec(p.layout.record_bytes, 0x5A);
  const std::vector<uint8_t> before = rec;
  std::vector<float> k = testing::RandomNormal(64, 3);
  k[17] = NAN;
  EXPECT_EQ(EncodeKey(p, k.data(), rec.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeValue(p, k.data(), rec.data()).code(), absl::StatusCode::kInvalidArgument);
  k[17] = INFINITY;
  EXPECT_EQ(EncodeKey(p, k.data(), rec.data()).code(), absl::StatusCode::kInvalidArgument);
  k[17] = 1e6f;  // the norm does not fit fp16
  absl::Status s = EncodeKey(p, k.data(), rec.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("fp16"), std::string::npos) << s;
  EXPECT_EQ(rec, before);
}

}  // namespace
}  // namespace ropekv::kernels
