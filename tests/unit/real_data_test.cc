// Block-GTQ against uniform TQ-MSE on real activations (shared data):
// calibrate on even sequences, measure the RoPE logit MAE
// (planner/ALGORITHM.md section 8) on odd ones.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"
#include "kernels/cpu/codec.h"
#include "planner/calibration.h"
#include "planner/fidelity.h"
#include "planner/plan.h"
#include "planner/safetensors.h"
#include "tests/unit/test_util.h"

namespace ropekv {
namespace {

using namespace planner;

class RealDataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::RealDataPath();
    if (!std::filesystem::exists(path)) return;
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = new SafetensorsFile(*std::move(f));
  }
  static void TearDownTestSuite() {
    delete file_;
    file_ = nullptr;
  }
  void SetUp() override {
    if (file_ == nullptr) {
      // CI ships the data; a missing file there is a failure, elsewhere a skip.
      if (std::getenv("CI") != nullptr) {
        FAIL() << "real activations not found at " << testing::RealDataPath();
      }
      GTEST_SKIP() << "real activations not found at " << testing::RealDataPath()
                   << " (set ROPEKV_DATA_DIR)";
    }
  }

  // Per-layer MAE of a profile's key quantization on the odd sequences.
  static std::vector<double> LayerMae(const ModelProfile& profile) {
    const ModelGeometry& g = profile.geometry;
    const int d = g.head_dim, group = g.group_size();
    const std::vector<float> q = *file_->ReadFloat("q");
    const std::vector<float> k = *file_->ReadFloat("k");
    const int64_t tokens = file_->tensors().at("q").shape[2];
    const auto ranges = *SequenceRanges(*file_, tokens);
    std::vector<int64_t> test_tokens;
    for (size_t s = 1; s < ranges.size(); s += 2) {
      for (int64_t t = ranges[s].first; t < ranges[s].second; ++t) test_tokens.push_back(t);
    }
    const int64_t n = static_cast<int64_t>(test_tokens.size());
    const std::vector<RopeBlock> blocks = *RopeBlocks(g);
    const std::vector<double> offsets = LogitOffsets();
    std::vector<double> mae(g.num_layers, 0.0);
    for (int layer = 0; layer < g.num_layers; ++layer) {
      for (int h = 0; h < g.num_kv_heads; ++h) {
        const HeadPlan& plan = profile.layers[layer].heads[h];
        std::vector<float> kk(n * d), kh(n * d), qq(static_cast<size_t>(group) * n * d);
        std::vector<uint8_t> rec(plan.layout.record_bytes);
        for (int64_t i = 0; i < n; ++i) {
          const float* src = k.data() + ((int64_t{layer} * g.num_kv_heads + h) * tokens + test_tokens[i]) * d;
          std::copy(src, src + d, kk.begin() + i * d);
          EXPECT_TRUE(kernels::EncodeKey(plan, src, rec.data()).ok());
          kernels::DecodeKey(plan, rec.data(), kh.data() + i * d);
          for (int gi = 0; gi < group; ++gi) {
            const float* qs = q.data() + ((int64_t{layer} * g.num_q_heads + h * group + gi) * tokens + test_tokens[i]) * d;
            std::copy(qs, qs + d, qq.begin() + (gi * n + i) * d);
          }
        }
        mae[layer] += RopeLogitMae(blocks, qq.data(), group, kk.data(), kh.data(), n, offsets) /
                      g.num_kv_heads;
      }
    }
    return mae;
  }

  static ModelProfile Profile(const Budget& budget) {
    const ModelGeometry g = *GeometryFromMetadata(*file_);
    ScoreAccumulator acc = *ScoreAccumulator::Create(g);
    EXPECT_TRUE(AccumulateCalibration(*file_, SequenceSplit::kEven, &acc).ok());
    absl::StatusOr<ModelProfile> p = BuildProfile(acc, budget);
    EXPECT_TRUE(p.ok()) << p.status();
    return *std::move(p);
  }

  static SafetensorsFile* file_;
};

SafetensorsFile* RealDataTest::file_ = nullptr;

TEST_F(RealDataTest, BlockGtqBeatsUniformOnEveryLayerAt2And3Bits) {
  for (int bits : {2, 3}) {
    Budget energy;
    energy.key_avg_bits = bits;
    energy.value_bits = bits;
    energy.score = ScoreKind::kEnergy;
    Budget logit = energy;
    logit.score = ScoreKind::kLogit;
    const std::vector<double> uniform = LayerMae(Profile(UniformBudget(bits, bits)));
    const std::vector<double> gtq = LayerMae(Profile(energy));
    const std::vector<double> gtq_logit = LayerMae(Profile(logit));
    double mean_u = 0, mean_e = 0, mean_l = 0;
    for (size_t l = 0; l < uniform.size(); ++l) {
      std::printf("[ figures  ] K%d layer %zu MAE: uniform %.4f  energy %.4f (%+.1f%%)  logit %.4f (%+.1f%%)\n",
                  bits, l, uniform[l], gtq[l], 100 * (gtq[l] / uniform[l] - 1), gtq_logit[l],
                  100 * (gtq_logit[l] / uniform[l] - 1));
      EXPECT_LT(gtq[l], uniform[l]) << "energy score, K" << bits << " layer " << l;
      EXPECT_LT(gtq_logit[l], uniform[l]) << "logit score, K" << bits << " layer " << l;
      mean_u += uniform[l];
      mean_e += gtq[l];
      mean_l += gtq_logit[l];
    }
    std::printf("[ figures  ] K%d mean MAE: uniform %.4f energy %.4f (%+.1f%%) logit %.4f (%+.1f%%)\n",
                bits, mean_u / uniform.size(), mean_e / uniform.size(), 100 * (mean_e / mean_u - 1),
                mean_l / uniform.size(), 100 * (mean_l / mean_u - 1));
  }
}

}  // namespace
}  // namespace ropekv
