#include "planner/plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "gtest/gtest.h"
#include "planner/allocator.h"

namespace ropekv::planner {
namespace {

ModelGeometry Geo(int head_dim, int layers = 2, int kv = 2, int q = 4) {
  ModelGeometry g;
  g.num_layers = layers;
  g.num_q_heads = q;
  g.num_kv_heads = kv;
  g.head_dim = head_dim;
  g.rotary_dim = head_dim;
  g.rope_layout = RopeLayout::kSplitHalf;
  return g;
}

TEST(PlanTest, PermutationGroupsAndLayout) {
  const std::vector<RopeBlock> blocks = *RopeBlocks(Geo(8));
  // Split-half d=8: blocks (0,4) (1,5) (2,6) (3,7), widths 3 1 3 2.
  const std::vector<int> bits = {3, 1, 3, 2};
  Budget budget;
  budget.key_avg_bits = 2.25;
  budget.value_bits = 2;
  absl::StatusOr<HeadPlan> p = BuildHeadPlan(blocks, bits, budget, 0, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  // Ascending width, stable on block index: block 1 (w1), 3 (w2), 0, 2 (w3).
  EXPECT_EQ(p->permutation, (std::vector<int>{1, 5, 3, 7, 0, 4, 2, 6}));
  ASSERT_EQ(p->key_groups.size(), 3u);
  EXPECT_EQ(p->key_groups[0].bits, 1);
  EXPECT_EQ(p->key_groups[0].offset, 0);
  EXPECT_EQ(p->key_groups[0].dim, 2);
  EXPECT_EQ(p->key_groups[1].bits, 2);
  EXPECT_EQ(p->key_groups[1].offset, 2);
  EXPECT_EQ(p->key_groups[2].bits, 3);
  EXPECT_EQ(p->key_groups[2].offset, 4);
  EXPECT_EQ(p->key_groups[2].dim, 4);
  EXPECT_EQ(p->key_groups[2].code_bit_offset, 2 * 1 + 2 * 2);
  EXPECT_EQ(p->key_groups[2].codebook.dim, 4);
  EXPECT_EQ(p->key_groups[2].rotation.size(), 16u);
  EXPECT_EQ(p->value_rotation.size(), 64u);
  // Norms 3 x 2 B + 2 B, key codes 2+4+12 = 18 bits -> 3 B, value 16 bits -> 2 B.
  EXPECT_EQ(p->layout.key_norms_offset, 0);
  EXPECT_EQ(p->layout.value_norm_offset, 6);
  EXPECT_EQ(p->layout.key_codes_offset, 8);
  EXPECT_EQ(p->layout.key_code_bits, 18);
  EXPECT_EQ(p->layout.value_codes_offset, 11);
  EXPECT_EQ(p->layout.record_bytes, 13);
  EXPECT_DOUBLE_EQ(p->key_bits_per_dim(), 2.25);
}

TEST(PlanTest, WorkedExampleOfPackedLayoutDoc) {
  // planner/packed_layout.md: head_dim 128, 20 blocks at 2 bits, 24 at 3,
  // 20 at 4, V 3 bits.
  std::vector<int> bits(64, 3);
  for (int i = 0; i < 20; ++i) bits[i] = 2;
  for (int i = 44; i < 64; ++i) bits[i] = 4;
  Budget budget;
  HeadPlan p = *BuildHeadPlan(*RopeBlocks(Geo(128)), bits, budget, 0, 0);
  ASSERT_EQ(p.key_groups.size(), 3u);
  EXPECT_EQ(p.layout.value_norm_offset, 6);
  EXPECT_EQ(p.layout.key_codes_offset, 8);
  EXPECT_EQ(p.key_groups[1].code_bit_offset, 80);
  EXPECT_EQ(p.key_groups[2].code_bit_offset, 224);
  EXPECT_EQ(p.layout.value_codes_offset, 56);
  EXPECT_EQ(p.layout.record_bytes, 104);
}

TEST(PlanTest, ByteCountMatchesFormulaForRandomAllocations) {
  std::mt19937 gen(3);
  std::lognormal_distribution<double> score(0, 2);
  for (int d : {36, 64, 128, 256}) {
    const std::vector<RopeBlock> blocks = *RopeBlocks(Geo(d));
    for (double avg : {1.0, 2.0, 2.5, 3.0, 4.0, 6.0}) {
      for (int v : {1, 2, 3, 4, 8}) {
        std::vector<double> s(d / 2);
        for (double& x : s) x = score(gen);
        Budget budget;
        budget.key_avg_bits = avg;
        budget.value_bits = v;
        std::vector<int> bits = *AllocateBits(s, {avg, 1, 8});
        HeadPlan p = *BuildHeadPlan(blocks, bits, budget, 0, 0);
        std::vector<int> distinct = bits;
        std::sort(distinct.begin(), distinct.end());
        distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
        const int key_bits = 2 * std::accumulate(bits.begin(), bits.end(), 0);
        const int expect = 2 * (static_cast<int>(distinct.size()) + 1) +
                           (key_bits + 7) / 8 + (d * v + 7) / 8;
        EXPECT_EQ(p.layout.record_bytes, expect) << d << " " << avg << " " << v;
        EXPECT_EQ(p.layout.key_code_bits, key_bits);
      }
    }
  }
}

TEST(PlanTest, HeadDim128BytesPerTokenBounds) {
  // planner/ALGORITHM.md section 7: K3V3 <= 114 B, K2V2 <= 82 B, K4V4 <= 146 B.
  std::mt19937 gen(9);
  std::lognormal_distribution<double> score(0, 3);
  const std::vector<RopeBlock> blocks = *RopeBlocks(Geo(128));
  const std::pair<int, int> cases[] = {{3, 114}, {2, 82}, {4, 146}};
  for (auto [bits, limit] : cases) {
    int worst = 0;
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<double> s(64);
      for (double& x : s) x = score(gen);
      Budget budget;
      budget.key_avg_bits = bits;
      budget.value_bits = bits;
      HeadPlan p = *BuildHeadPlan(blocks, *AllocateBits(s, {1.0 * bits, 1, 8}),
                                  budget, 0, 0);
      worst = std::max(worst, p.layout.record_bytes);
    }
    // The worst case has 8 distinct widths: 16 B of key norms.
    std::vector<int> spread(64, bits);
    for (int w = 1; w <= 8; ++w) spread[w - 1] = w;
    int excess = 0;
    for (int w : spread) excess += w - bits;
    for (int i = 8; excess != 0; ++i) {  // rebalance to the same total
      const int step = excess > 0 ? -1 : 1;
      if (spread[i] + step >= 1 && spread[i] + step <= 8) {
        spread[i] += step;
        excess += step;
      }
    }
    Budget budget;
    budget.key_avg_bits = bits;
    budget.value_bits = bits;
    HeadPlan p = *BuildHeadPlan(blocks, spread, budget, 0, 0);
    EXPECT_EQ(p.key_groups.size(), 8u);
    EXPECT_EQ(p.layout.record_bytes, limit) << "K" << bits << "V" << bits;
    EXPECT_LE(worst, limit);
    // Uniform TQ-MSE: one group, 4 B of norms.
    HeadPlan u = *BuildHeadPlan(blocks, std::vector<int>(64, bits),
                                UniformBudget(bits, bits), 0, 0);
    EXPECT_EQ(u.layout.record_bytes, 4 + 32 * bits);
  }
}

TEST(PlanTest, RotationThresholdKeepsIdentityForSmallGroups) {
  const std::vector<RopeBlock> blocks = *RopeBlocks(Geo(16));
  Budget budget;
  budget.min_rotation_dim = 4;
  std::vector<int> bits = {2, 3, 3, 3, 3, 3, 3, 4};  // groups of 2, 12, 2 dims
  HeadPlan p = *BuildHeadPlan(blocks, bits, budget, 0, 0);
  ASSERT_EQ(p.key_groups.size(), 3u);
  EXPECT_EQ(p.key_groups[0].rotation, (std::vector<float>{1, 0, 0, 1}));
  EXPECT_NE(p.key_groups[1].rotation[1], 0.0f);
}

TEST(PlanTest, ProfileFromScoresAndAllocationAgree) {
  const ModelGeometry g = Geo(16);
  PerHead scores(2, std::vector<std::vector<double>>(2, std::vector<double>(8)));
  PerHeadBits bits(2);
  std::mt19937 gen(1);
  std::exponential_distribution<double> e(1);
  Budget budget;
  budget.key_avg_bits = 2.5;
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      for (double& x : scores[l][h]) x = e(gen);
      bits[l].push_back(*AllocateBits(scores[l][h], {2.5, 1, 8}));
    }
  }
  ModelProfile a = *BuildProfileFromScores(g, budget, scores);
  ModelProfile b = *BuildProfileFromAllocation(g, budget, bits);
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      EXPECT_EQ(a.layers[l].heads[h].block_bits, bits[l][h]);
      EXPECT_EQ(a.layers[l].heads[h].value_rotation, b.layers[l].heads[h].value_rotation);
    }
  }
  EXPECT_TRUE(ValidateProfile(a).ok());
  EXPECT_EQ(a.fp16_bytes_per_token(), 2 * 2 * 16 * 4);
  // Different heads get different rotations.
  EXPECT_NE(a.layers[0].heads[0].value_rotation, a.layers[0].heads[1].value_rotation);
  EXPECT_NE(a.layers[0].heads[0].value_rotation, a.layers[1].heads[0].value_rotation);
}

TEST(PlanTest, BadInputGivesSpecificErrors) {
  const ModelGeometry g = Geo(8);
  const std::vector<RopeBlock> blocks = *RopeBlocks(g);
  Budget budget;
  EXPECT_EQ(BuildHeadPlan(blocks, {3, 3, 3}, budget, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // wrong count
  EXPECT_EQ(BuildHeadPlan(blocks, {3, 3, 3, 9}, budget, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // width out of range
  EXPECT_EQ(BuildHeadPlan(blocks, {3, 3, 3, 0}, budget, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  Budget bad_v = budget;
  bad_v.value_bits = 0;
  absl::Status s = BuildHeadPlan(blocks, {3, 3, 3, 3}, bad_v, 0, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("value_bits"), std::string::npos);
  PerHead wrong_layers(1);
  EXPECT_EQ(BuildProfileFromScores(g, budget, wrong_layers).status().code(),
            absl::StatusCode::kInvalidArgument);
  PerHead wrong_blocks(2, std::vector<std::vector<double>>(2, std::vector<double>(3, 1.0)));
  EXPECT_EQ(BuildProfileFromScores(g, budget, wrong_blocks).status().code(),
            absl::StatusCode::kInvalidArgument);
  PerHead nan_scores(2, std::vector<std::vector<double>>(2, std::vector<double>(4, NAN)));
  EXPECT_EQ(BuildProfileFromScores(g, budget, nan_scores).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelGeometry odd = g;
  odd.head_dim = 7;
  EXPECT_EQ(BuildProfileFromScores(odd, budget, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner

namespace ropekv::planner {
namespace {

// A budget in bytes: every head's key part fits it, norms counted, and the
// widths are those of AllocateBitsForBytes.
TEST(PlanTest, KeyBudgetInBytesHoldsForEveryHead) {
  ModelGeometry g;
  g.num_layers = 2;
  g.num_q_heads = 4;
  g.num_kv_heads = 2;
  g.head_dim = 64;
  g.rotary_dim = 64;
  PerHead scores(2, std::vector<std::vector<double>>(2, std::vector<double>(32)));
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      for (int b = 0; b < 32; ++b) scores[l][h][b] = std::exp(-0.2 * b) * (1 + l + h);
    }
  }
  Budget budget;
  budget.key_avg_bits = 0;  // informational only with key_bytes
  budget.value_bits = 3;
  budget.key_bytes = 64 * 3 / 8 + 2;  // uniform K3's
  budget.max_key_groups = 3;
  absl::StatusOr<ModelProfile> p = BuildProfileFromScores(g, budget, scores);
  ASSERT_TRUE(p.ok()) << p.status();
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      const HeadPlan& hp = p->layers[l].heads[h];
      const int key_part = hp.layout.record_bytes - 2 - (64 * 3 + 7) / 8;  // less the value norm and codes
      EXPECT_LE(key_part, budget.key_bytes);
      EXPECT_LE(hp.key_groups.size(), 3u);
      ByteBudgetOptions o;
      o.key_bytes = budget.key_bytes;
      o.max_groups = 3;
      EXPECT_EQ(hp.block_bits, *AllocateBitsForBytes(scores[l][h], o));
    }
  }
  budget.key_group_multiple = 3;
  EXPECT_EQ(BuildProfileFromScores(g, budget, scores).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner
