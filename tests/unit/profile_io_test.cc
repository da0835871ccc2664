#include "planner/profile_io.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "planner/codebook.h"

namespace ropekv::planner {
namespace {

ModelProfile MakeProfile() {
  ModelGeometry g;
  g.num_layers = 3;
  g.num_q_heads = 4;
  g.num_kv_heads = 2;
  g.head_dim = 36;
  g.rotary_dim = 32;
  g.rope_layout = RopeLayout::kInterleaved;
  g.rope_theta = 50000;
  std::mt19937 gen(2);
  std::lognormal_distribution<double> e(0, 2);
  PerHead scores(3, std::vector<std::vector<double>>(2, std::vector<double>(18)));
  for (auto& l : scores) for (auto& h : l) for (double& x : h) x = e(gen);
  Budget b;
  b.key_avg_bits = 2.5;
  b.value_bits = 3;
  b.score = ScoreKind::kEnergy;
  b.seed = 77;
  b.min_rotation_dim = 4;
  ModelProfile p = *BuildProfileFromScores(g, b, scores);
  p.name = "test-model";
  return p;
}

void ExpectSame(const ModelProfile& a, const ModelProfile& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.geometry.num_layers, b.geometry.num_layers);
  EXPECT_EQ(a.geometry.rope_layout, b.geometry.rope_layout);
  EXPECT_EQ(a.geometry.rotary_dim, b.geometry.rotary_dim);
  EXPECT_EQ(a.geometry.rope_theta, b.geometry.rope_theta);
  EXPECT_EQ(a.budget.key_avg_bits, b.budget.key_avg_bits);
  EXPECT_EQ(a.budget.score, b.budget.score);
  EXPECT_EQ(a.budget.seed, b.budget.seed);
  EXPECT_EQ(a.budget.min_rotation_dim, b.budget.min_rotation_dim);
  EXPECT_EQ(a.budget.key_bytes, b.budget.key_bytes);
  EXPECT_EQ(a.budget.max_key_groups, b.budget.max_key_groups);
  EXPECT_EQ(a.budget.key_group_multiple, b.budget.key_group_multiple);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (size_t h = 0; h < a.layers[l].heads.size(); ++h) {
      const HeadPlan& x = a.layers[l].heads[h];
      const HeadPlan& y = b.layers[l].heads[h];
      EXPECT_EQ(x.block_bits, y.block_bits);
      EXPECT_EQ(x.permutation, y.permutation);
      EXPECT_EQ(x.value_rotation, y.value_rotation);
      EXPECT_EQ(x.value_codebook.centroids, y.value_codebook.centroids);
      EXPECT_TRUE(x.layout == y.layout);
      ASSERT_EQ(x.key_groups.size(), y.key_groups.size());
      for (size_t g = 0; g < x.key_groups.size(); ++g) {
        EXPECT_EQ(x.key_groups[g].rotation, y.key_groups[g].rotation);
        EXPECT_EQ(x.key_groups[g].codebook.boundaries, y.key_groups[g].codebook.boundaries);
        EXPECT_EQ(x.key_groups[g].code_bit_offset, y.key_groups[g].code_bit_offset);
        EXPECT_EQ(x.key_groups[g].rotation_seed, y.key_groups[g].rotation_seed);
      }
    }
  }
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "-" + std::to_string(::getpid()))).string();
}

TEST(ProfileIoTest, RoundTripsThroughProtoAndFile) {
  const ModelProfile p = MakeProfile();
  absl::StatusOr<ModelProfile> via_proto = ProfileFromProto(ProfileToProto(p));
  ASSERT_TRUE(via_proto.ok()) << via_proto.status();
  ExpectSame(p, *via_proto);
  const std::string path = TempPath("profile");
  ASSERT_TRUE(SaveProfile(p, path).ok());
  absl::StatusOr<ModelProfile> loaded = LoadProfile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSame(p, *loaded);
  std::filesystem::remove(path);
}

// A budget in bytes survives the round trip; a profile written before
// the byte-budget fields existed (all three 0 on the wire) loads with the
// defaults.
TEST(ProfileIoTest, ByteBudgetsRoundTripAndOldProfilesGetDefaults) {
  ModelProfile p = MakeProfile();
  p.budget.key_bytes = 12;
  p.budget.max_key_groups = 3;
  p.budget.key_group_multiple = 4;
  absl::StatusOr<ModelProfile> back = ProfileFromProto(ProfileToProto(p));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(p, *back);
  ropekv::v1::Profile old = ProfileToProto(MakeProfile());
  old.mutable_budget()->clear_key_bytes();
  old.mutable_budget()->clear_max_key_groups();
  old.mutable_budget()->clear_key_group_multiple();
  absl::StatusOr<ModelProfile> loaded = ProfileFromProto(old);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->budget.key_bytes, 0);
  EXPECT_EQ(loaded->budget.max_key_groups, 8);
  EXPECT_EQ(loaded->budget.key_group_multiple, 2);
}

// A profile written before the levels were rounded to fp16 carries the
// fp32 levels of the same quantizer (and their midpoints): it loads with
// the current codebooks. A codebook that is not the quantizer at all is
// still refused.
TEST(ProfileIoTest, ProfilesWithFp32LevelsLoadWithTheCurrentCodebooks) {
  const ModelProfile p = MakeProfile();
  ropekv::v1::Profile old = ProfileToProto(p);
  auto to_fp32 = [](ropekv::v1::Codebook* c) {
    const GaussianQuantizer* q = *LloydMaxGaussian(static_cast<int>(c->bits()));
    const double scale = 1.0 / std::sqrt(static_cast<double>(c->dim()));
    c->clear_centroids();
    c->clear_boundaries();
    for (double x : q->centroids) c->add_centroids(static_cast<float>(x * scale));
    for (double x : q->boundaries) c->add_boundaries(static_cast<float>(x * scale));
  };
  for (auto& layer : *old.mutable_layers()) {
    for (auto& head : *layer.mutable_heads()) {
      for (auto& group : *head.mutable_key_groups()) to_fp32(group.mutable_codebook());
      to_fp32(head.mutable_value_codebook());
    }
  }
  // The fp32 levels are not fp16 values already.
  const auto& stored = old.layers(0).heads(0).value_codebook().centroids();
  ASSERT_FALSE(std::equal(stored.begin(), stored.end(), p.layers[0].heads[0].value_codebook.centroids.begin()));
  absl::StatusOr<ModelProfile> loaded = ProfileFromProto(old);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSame(p, *loaded);

  ropekv::v1::Profile wrong = ProfileToProto(p);
  ropekv::v1::Codebook* c = wrong.mutable_layers(1)->mutable_heads(0)->mutable_value_codebook();
  c->set_centroids(0, c->centroids(0) * 1.01f);
  absl::StatusOr<ModelProfile> refused = ProfileFromProto(wrong);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("value_codebook"), std::string::npos) << refused.status();
}

TEST(ProfileIoTest, TruncatedOrCorruptedFileIsDataLoss) {
  const std::string path = TempPath("profile-bad");
  ASSERT_TRUE(SaveProfile(MakeProfile(), path).ok());
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << b;
  };
  for (size_t keep : {size_t{0}, size_t{5}, bytes.size() / 2, bytes.size() - 1}) {
    write(bytes.substr(0, keep));
    EXPECT_EQ(LoadProfile(path).status().code(), absl::StatusCode::kDataLoss)
        << "kept " << keep;
  }
  // A flipped low bit anywhere in the payload (even inside a float of a
  // rotation, which would otherwise look plausible) is caught.
  for (size_t pos : {size_t{20}, bytes.size() / 3, bytes.size() - 10}) {
    std::string b = bytes;
    b[pos] ^= 0x01;
    write(b);
    EXPECT_FALSE(LoadProfile(path).ok()) << "flipped byte " << pos;
  }
  std::filesystem::remove(path);
  EXPECT_EQ(LoadProfile(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(ProfileIoTest, InconsistentMessagesAreRejected) {
  const ropekv::v1::Profile good = ProfileToProto(MakeProfile());
  {
    ropekv::v1::Profile m = good;
    m.set_format_version(2);
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_layers()->RemoveLast();
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_layers(0)->mutable_heads(0)->set_block_bits(0, 9);
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_layers(1)->mutable_heads(1)->mutable_value_rotation()->resize(12);
    absl::Status s = ProfileFromProto(m).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("value_rotation"), std::string::npos) << s;
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_layers(0)->mutable_heads(0)->mutable_key_groups(0)->mutable_codebook()->set_centroids(0, 0.5f);
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    // Group dims and widths far out of range (found by fuzz_profile: the
    // derived code offsets overflowed before validation rejected them).
    ropekv::v1::Profile m = good;
    for (int g = 0; g < 3; ++g) {
      ropekv::v1::KeyGroup* k = m.mutable_layers(0)->mutable_heads(0)->add_key_groups();
      k->set_dim(1u << 30);
      k->set_bits(4);
    }
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_layers(0)->mutable_heads(0)->mutable_layout()->set_record_bytes(1);
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    ropekv::v1::Profile m = good;
    m.mutable_geometry()->set_head_dim(4000000000u);
    EXPECT_EQ(ProfileFromProto(m).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace ropekv::planner
