#include "planner/scores.h"

#include <cmath>

#include "gtest/gtest.h"
#include "tests/unit/test_util.h"

namespace ropekv::planner {
namespace {

ModelGeometry Geo() {
  ModelGeometry g;
  g.num_layers = 2;
  g.num_q_heads = 4;
  g.num_kv_heads = 2;
  g.head_dim = 4;
  g.rotary_dim = 4;
  g.rope_layout = RopeLayout::kSplitHalf;
  return g;
}

TEST(ScoresTest, HandComputedEnergies) {
  ScoreAccumulator acc = *ScoreAccumulator::Create(Geo());
  // Split-half, d=4: block 0 = dims (0,2), block 1 = dims (1,3).
  const float q0[] = {1, 0, 2, 0};  // query head 0 -> KV head 0: e = (5, 0)
  const float q1[] = {0, 3, 0, 4};  // query head 1 -> KV head 0: e = (0, 25)
  const float k[] = {1, 1, 1, 1, 2, 0, 0, 0};  // two key rows: (2,2), (4,0)
  ASSERT_TRUE(acc.AddQueries(0, 0, q0, 1).ok());
  ASSERT_TRUE(acc.AddQueries(0, 1, q1, 1).ok());
  ASSERT_TRUE(acc.AddKeys(0, 0, k, 2).ok());
  EXPECT_EQ(acc.num_query_samples(0, 0), 2);  // each query head is a sample
  EXPECT_EQ(acc.num_key_samples(0, 0), 2);
  std::vector<double> eq = *acc.QueryEnergy(0, 0);
  std::vector<double> ek = *acc.KeyEnergy(0, 0);
  EXPECT_DOUBLE_EQ(eq[0], 2.5);
  EXPECT_DOUBLE_EQ(eq[1], 12.5);
  EXPECT_DOUBLE_EQ(ek[0], 3.0);
  EXPECT_DOUBLE_EQ(ek[1], 1.0);
  std::vector<double> energy = *acc.Scores(0, 0, ScoreKind::kEnergy);
  std::vector<double> logit = *acc.Scores(0, 0, ScoreKind::kLogit);
  EXPECT_DOUBLE_EQ(energy[0], 2.75);
  EXPECT_DOUBLE_EQ(energy[1], 6.75);
  EXPECT_DOUBLE_EQ(logit[0], 7.5);
  EXPECT_DOUBLE_EQ(logit[1], 12.5);
}

TEST(ScoresTest, QueryHeadsMapToTheirKvHead) {
  ScoreAccumulator acc = *ScoreAccumulator::Create(Geo());
  const float q[] = {1, 1, 1, 1};
  ASSERT_TRUE(acc.AddQueries(1, 2, q, 1).ok());  // q head 2 -> KV head 1
  ASSERT_TRUE(acc.AddQueries(1, 3, q, 1).ok());
  EXPECT_EQ(acc.num_query_samples(1, 1), 2);
  EXPECT_EQ(acc.num_query_samples(1, 0), 0);
}

TEST(ScoresTest, StreamingEqualsOneBatch) {
  const std::vector<float> q = testing::RandomNormal(4 * 100, 1);
  const std::vector<float> k = testing::RandomNormal(4 * 100, 2);
  ScoreAccumulator whole = *ScoreAccumulator::Create(Geo());
  ScoreAccumulator parts = *ScoreAccumulator::Create(Geo());
  ASSERT_TRUE(whole.AddQueries(0, 1, q.data(), 100).ok());
  ASSERT_TRUE(whole.AddKeys(0, 0, k.data(), 100).ok());
  for (int start : {0, 13, 50, 99}) {
    const int end = start == 0 ? 13 : start == 13 ? 50 : start == 50 ? 99 : 100;
    ASSERT_TRUE(parts.AddQueries(0, 1, q.data() + start * 4, end - start).ok());
    ASSERT_TRUE(parts.AddKeys(0, 0, k.data() + start * 4, end - start).ok());
  }
  for (ScoreKind kind : {ScoreKind::kEnergy, ScoreKind::kLogit}) {
    std::vector<double> a = *whole.Scores(0, 0, kind);
    std::vector<double> b = *parts.Scores(0, 0, kind);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12 * a[i]);
  }
}

TEST(ScoresTest, BadInputChangesNothing) {
  ScoreAccumulator acc = *ScoreAccumulator::Create(Geo());
  const float good[] = {1, 2, 3, 4};
  const float bad[] = {1, 2, 3, 4, 1, NAN, 0, 0};
  const float inf[] = {INFINITY, 0, 0, 0};
  ASSERT_TRUE(acc.AddKeys(0, 0, good, 1).ok());
  EXPECT_EQ(acc.AddKeys(0, 0, bad, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.AddQueries(0, 0, inf, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.num_key_samples(0, 0), 1);  // the bad batch added nothing
  EXPECT_DOUBLE_EQ((*acc.KeyEnergy(0, 0))[0], 1 + 9);
  EXPECT_EQ(acc.AddKeys(2, 0, good, 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(acc.AddKeys(0, 2, good, 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(acc.AddQueries(0, 4, good, 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(acc.AddKeys(0, 0, nullptr, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.AddKeys(0, 0, good, -1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ScoresTest, EmptyCalibrationIsFailedPrecondition) {
  ScoreAccumulator acc = *ScoreAccumulator::Create(Geo());
  EXPECT_EQ(acc.Scores(0, 0, ScoreKind::kEnergy).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const float k[] = {1, 2, 3, 4};
  ASSERT_TRUE(acc.AddKeys(0, 0, k, 1).ok());
  // Keys alone are not enough: the score needs queries too.
  EXPECT_EQ(acc.Scores(0, 0, ScoreKind::kLogit).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ModelGeometry bad = Geo();
  bad.head_dim = 5;
  EXPECT_EQ(ScoreAccumulator::Create(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner
