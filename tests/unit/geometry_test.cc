#include "planner/geometry.h"

#include <cmath>
#include <set>

#include "gtest/gtest.h"

namespace ropekv::planner {
namespace {

ModelGeometry Geo(int head_dim, int rotary_dim, RopeLayout layout) {
  ModelGeometry g;
  g.num_layers = 2;
  g.num_q_heads = 4;
  g.num_kv_heads = 2;
  g.head_dim = head_dim;
  g.rotary_dim = rotary_dim;
  g.rope_layout = layout;
  g.rope_theta = 10000;
  return g;
}

TEST(GeometryTest, SplitHalfPairsIWithIPlusHalf) {
  absl::StatusOr<std::vector<RopeBlock>> b = RopeBlocks(Geo(8, 8, RopeLayout::kSplitHalf));
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*b)[i].dim_a, i);
    EXPECT_EQ((*b)[i].dim_b, i + 4);
    EXPECT_DOUBLE_EQ((*b)[i].frequency, std::pow(10000.0, -2.0 * i / 8));
  }
}

TEST(GeometryTest, InterleavedPairsNeighbours) {
  absl::StatusOr<std::vector<RopeBlock>> b = RopeBlocks(Geo(8, 8, RopeLayout::kInterleaved));
  ASSERT_TRUE(b.ok());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*b)[i].dim_a, 2 * i);
    EXPECT_EQ((*b)[i].dim_b, 2 * i + 1);
  }
}

TEST(GeometryTest, PartialRotaryAddsStaticBlocks) {
  // Moonshine-like: interleaved on 32 of 36 dims.
  absl::StatusOr<std::vector<RopeBlock>> b = RopeBlocks(Geo(36, 32, RopeLayout::kInterleaved));
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->size(), 18u);
  EXPECT_EQ((*b)[16].dim_a, 32);
  EXPECT_EQ((*b)[16].dim_b, 33);
  EXPECT_EQ((*b)[17].dim_a, 34);
  EXPECT_EQ((*b)[17].frequency, 0.0);
  EXPECT_DOUBLE_EQ((*b)[15].frequency, std::pow(10000.0, -30.0 / 32));
  // Split-half partial: rotary pairs (i, i + r/2) inside the first r dims.
  absl::StatusOr<std::vector<RopeBlock>> s = RopeBlocks(Geo(12, 8, RopeLayout::kSplitHalf));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)[3].dim_a, 3);
  EXPECT_EQ((*s)[3].dim_b, 7);
  EXPECT_EQ((*s)[4].dim_a, 8);
  EXPECT_EQ((*s)[5].dim_b, 11);
}

TEST(GeometryTest, EveryDimensionExactlyOnce) {
  for (RopeLayout layout : {RopeLayout::kSplitHalf, RopeLayout::kInterleaved}) {
    for (int d : {2, 36, 64, 128, 256}) {
      for (int r : {2, d / 2 - (d / 2) % 2, d}) {
        if (r < 2) continue;
        absl::StatusOr<std::vector<RopeBlock>> b = RopeBlocks(Geo(d, r, layout));
        ASSERT_TRUE(b.ok()) << d << " " << r;
        std::set<int> seen;
        for (const RopeBlock& x : *b) {
          seen.insert(x.dim_a);
          seen.insert(x.dim_b);
        }
        EXPECT_EQ(seen.size(), static_cast<size_t>(d));
        EXPECT_EQ(*seen.begin(), 0);
        EXPECT_EQ(*seen.rbegin(), d - 1);
      }
    }
  }
}

TEST(GeometryTest, BadGeometryNamesTheField) {
  struct Case {
    ModelGeometry g;
    const char* field;
  };
  ModelGeometry odd = Geo(7, 6, RopeLayout::kSplitHalf);
  ModelGeometry rot_big = Geo(8, 10, RopeLayout::kSplitHalf);
  ModelGeometry rot_odd = Geo(8, 5, RopeLayout::kSplitHalf);
  ModelGeometry gqa = Geo(8, 8, RopeLayout::kSplitHalf);
  gqa.num_q_heads = 3;
  ModelGeometry layers = Geo(8, 8, RopeLayout::kSplitHalf);
  layers.num_layers = 0;
  ModelGeometry theta = Geo(8, 8, RopeLayout::kSplitHalf);
  theta.rope_theta = NAN;
  ModelGeometry huge = Geo(1024, 1024, RopeLayout::kSplitHalf);
  for (const Case& c : {Case{odd, "head_dim"}, Case{rot_big, "rotary_dim"},
                        Case{rot_odd, "rotary_dim"}, Case{gqa, "num_q_heads"},
                        Case{layers, "num_layers"}, Case{theta, "rope_theta"},
                        Case{huge, "head_dim"}}) {
    absl::Status s = ValidateGeometry(c.g);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
    EXPECT_EQ(RopeBlocks(c.g).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace ropekv::planner
