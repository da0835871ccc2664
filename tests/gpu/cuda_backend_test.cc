// The CUDA backend against the CPU reference, on the same inputs and on the
// same packed records. Skipped without a visible device.
#include <cuda_runtime_api.h>

#include <cmath>
#include <filesystem>
#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/bit_packing.h"
#include "kernels/cuda/cuda_backend.h"
#include "planner/calibration.h"
#include "planner/half.h"
#include "planner/plan.h"
#include "planner/safetensors.h"
#include "tests/unit/test_util.h"

namespace ropekv::kernels {
namespace {

// Pages of one layer in device memory, mirroring a HostPagedLayer.
class DevicePages {
 public:
  DevicePages(Backend& gpu, const planner::LayerPlan& plan, int page_tokens, int64_t capacity)
      : gpu_(gpu), page_tokens_(page_tokens) {
    page_bytes_ = planner::MakePageLayout(plan, page_tokens).page_bytes;
    const int64_t pages = (capacity + page_tokens - 1) / page_tokens;
    arena_ = *gpu.AllocateArena(pages * page_bytes_);
    cudaMemset(arena_, 0xA5, pages * page_bytes_);
    for (int64_t i = 0; i < pages; ++i) ptrs_.push_back(arena_ + i * page_bytes_);
  }
  ~DevicePages() { gpu_.FreeArena(arena_); }
  PagedLayerView view(int64_t tokens) const {
    return {ptrs_.data(), static_cast<int64_t>(ptrs_.size()), page_tokens_, tokens};
  }
  void CopyFrom(testing::HostPagedLayer& host) {
    for (size_t i = 0; i < ptrs_.size(); ++i) {
      ASSERT_EQ(cudaMemcpy(ptrs_[i], host.storage()[i].data(), page_bytes_, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }

 private:
  Backend& gpu_;
  int page_tokens_;
  int64_t page_bytes_;
  uint8_t* arena_;
  std::vector<uint8_t*> ptrs_;
};

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = *CreateCudaBackend();
    cpu_ = CreateCpuBackend({.num_threads = 4});
  }
  std::unique_ptr<Backend> gpu_, cpu_;
};

planner::ModelProfile MakeProfile(int d, int kv, int group, double kbits, int vbits, uint32_t seed) {
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = kv;
  g.num_q_heads = kv * group;
  g.head_dim = d;
  g.rotary_dim = d;
  std::mt19937 gen(seed);
  std::lognormal_distribution<double> e(0, 2);
  planner::PerHead scores(1, std::vector<std::vector<double>>(kv, std::vector<double>(d / 2)));
  for (auto& h : scores[0]) for (double& x : h) x = e(gen);
  planner::Budget b;
  b.key_avg_bits = kbits;
  b.value_bits = vbits;
  return *planner::BuildProfileFromScores(g, b, scores);
}

struct CodeStats {
  int64_t total = 0, equal = 0, far = 0;
};

// Compares every key and value code of two record sets (head-major), and
// the fp16 norms of the groups whose codes all agree (a code that flips at
// a near-tie changes its group's corrected norm by design).
void CompareCodes(const planner::LayerPlan& plan, const std::vector<uint8_t>& a,
                  const std::vector<uint8_t>& b, int64_t tokens, CodeStats* st, double* worst_norm) {
  auto norm_at = [](const uint8_t* r, int off) {
    return planner::HalfToFloat(static_cast<uint16_t>(r[off] | r[off + 1] << 8));
  };
  auto compare = [&](const uint8_t* ca, const uint8_t* cb, int n, float na, float nb) {
    bool same = true;
    for (int j = 0; j < n; ++j) {
      ++st->total;
      st->equal += ca[j] == cb[j];
      st->far += std::abs(ca[j] - cb[j]) > 1;
      same = same && ca[j] == cb[j];
    }
    if (same) {
      const double rel = std::abs(na - nb) / std::max(1e-6f, std::abs(na));
      *worst_norm = std::max<double>(*worst_norm, rel);
    }
  };
  size_t pos = 0;
  for (const planner::HeadPlan& h : plan.heads) {
    const int rb = h.layout.record_bytes;
    for (int64_t t = 0; t < tokens; ++t, pos += rb) {
      const uint8_t* ra = a.data() + pos;
      const uint8_t* rbp = b.data() + pos;
      uint8_t ca[512], cb[512];
      for (size_t g = 0; g < h.key_groups.size(); ++g) {
        const planner::KeyGroupPlan& kg = h.key_groups[g];
        UnpackBits(ra + h.layout.key_codes_offset, kg.code_bit_offset, kg.dim, kg.bits, ca);
        UnpackBits(rbp + h.layout.key_codes_offset, kg.code_bit_offset, kg.dim, kg.bits, cb);
        const int off = h.layout.key_norms_offset + 2 * static_cast<int>(g);
        compare(ca, cb, kg.dim, norm_at(ra, off), norm_at(rbp, off));
      }
      UnpackBits(ra + h.layout.value_codes_offset, 0, h.head_dim, h.value_bits, ca);
      UnpackBits(rbp + h.layout.value_codes_offset, 0, h.head_dim, h.value_bits, cb);
      compare(ca, cb, h.head_dim, norm_at(ra, h.layout.value_norm_offset),
              norm_at(rbp, h.layout.value_norm_offset));
    }
  }
}

void EncodeBoth(Backend& cpu, Backend& gpu, const planner::LayerPlan& plan, const std::vector<float>& k,
                const std::vector<float>& v, int64_t tokens, CodeStats* st, double* worst_norm) {
  testing::HostPagedLayer host(plan, 64, tokens);
  DevicePages dev(gpu, plan, 64, tokens);
  const absl::Status on_cpu = cpu.EncodeLayer(plan, host.view(0), 0, k.data(), v.data(), tokens);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu;
  const absl::Status on_gpu = gpu.EncodeLayer(plan, dev.view(0), 0, k.data(), v.data(), tokens);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu;
  int64_t bytes = 0;
  for (const planner::HeadPlan& h : plan.heads) bytes += h.layout.record_bytes * tokens;
  std::vector<uint8_t> a(bytes), b(bytes);
  ASSERT_TRUE(cpu.ReadRecords(plan, host.view(tokens), 0, tokens, a.data()).ok());
  ASSERT_TRUE(gpu.ReadRecords(plan, dev.view(tokens), 0, tokens, b.data()).ok());
  CompareCodes(plan, a, b, tokens, st, worst_norm);
}

TEST_F(CudaBackendTest, EncodeMatchesCpuCodesOnRandomData) {
  CodeStats st;
  double worst_norm = 0;
  for (int d : {64, 128, 256}) {
    for (auto [kb, vb] : {std::pair{2.0, 2}, {3.0, 3}, {4.0, 4}, {2.5, 8}}) {
      planner::ModelProfile p = MakeProfile(d, 2, 4, kb, vb, d + vb);
      const int64_t tokens = 700;
      std::vector<float> k = testing::RandomNormal(2 * tokens * d, 1, 2.0f);
      std::vector<float> v = testing::RandomNormal(2 * tokens * d, 2);
      EncodeBoth(*cpu_, *gpu_, p.layers[0], k, v, tokens, &st, &worst_norm);
    }
  }
  const double agree = static_cast<double>(st.equal) / st.total;
  std::printf("[ figures  ] random: %lld codes, agreement %.6f, >1 level apart %lld, worst norm rel diff %.2e\n",
              static_cast<long long>(st.total), agree, static_cast<long long>(st.far), worst_norm);
  EXPECT_GE(agree, 0.9999);
  EXPECT_EQ(st.far, 0);
  EXPECT_LT(worst_norm, 1e-3);  // fp16 rounding of a float computed two ways
}

// The stored fp16 norms equal the CPU's to one fp16 step (both round the
// same value computed in a different order).
TEST_F(CudaBackendTest, NormsMatchCpuToOneFp16Step) {
  planner::ModelProfile p = MakeProfile(128, 2, 1, 3.0, 3, 9);
  const int64_t tokens = 512;
  std::vector<float> k = testing::RandomNormal(2 * tokens * 128, 11, 2.0f);
  std::vector<float> v = testing::RandomNormal(2 * tokens * 128, 12);
  DevicePages dev(*gpu_, p.layers[0], 64, tokens);
  testing::HostPagedLayer host(p.layers[0], 64, tokens);
  ASSERT_TRUE(gpu_->EncodeLayer(p.layers[0], dev.view(0), 0, k.data(), v.data(), tokens).ok());
  ASSERT_TRUE(cpu_->EncodeLayer(p.layers[0], host.view(0), 0, k.data(), v.data(), tokens).ok());
  int64_t bytes = 0;
  for (const planner::HeadPlan& h : p.layers[0].heads) bytes += h.layout.record_bytes * tokens;
  std::vector<uint8_t> rg(bytes), rc(bytes);
  ASSERT_TRUE(gpu_->ReadRecords(p.layers[0], dev.view(tokens), 0, tokens, rg.data()).ok());
  ASSERT_TRUE(cpu_->ReadRecords(p.layers[0], host.view(tokens), 0, tokens, rc.data()).ok());
  size_t pos = 0;
  int compared = 0;
  for (const planner::HeadPlan& h : p.layers[0].heads) {
    for (int64_t t = 0; t < tokens; ++t, pos += h.layout.record_bytes) {
      for (int off = 0; off < h.layout.key_codes_offset; off += 2) {
        const int a = rc[pos + off] | rc[pos + off + 1] << 8;
        const int b = rg[pos + off] | rg[pos + off + 1] << 8;
        EXPECT_LE(std::abs(a - b), 1) << "token " << t << " byte " << off;
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 1000);
}

// Records -> device pages -> records is bit-exact for every width, head_dim
// and a partly filled last page, and the written records attend like the
// CPU's.
TEST_F(CudaBackendTest, WriteRecordsRoundTripsBitExactly) {
  for (auto [d, kbits, vbits] : {std::tuple{64, 1.0, 1}, {128, 2.5, 2}, {128, 3.0, 3}, {256, 4.0, 4},
                                 {128, 5.5, 6}, {64, 8.0, 8}}) {
    planner::ModelProfile p = MakeProfile(d, 2, 4, kbits, vbits, d + vbits);
    const planner::LayerPlan& plan = p.layers[0];
    const int64_t tokens = 77;  // pages of 32: the last one partly filled
    std::vector<float> k = testing::RandomNormal(2 * tokens * d, 21, 2.0f);
    std::vector<float> v = testing::RandomNormal(2 * tokens * d, 22);
    testing::HostPagedLayer host(plan, 32, tokens);
    ASSERT_TRUE(cpu_->EncodeLayer(plan, host.view(0), 0, k.data(), v.data(), tokens).ok());
    int64_t bytes = 0;
    for (const planner::HeadPlan& h : plan.heads) bytes += h.layout.record_bytes * tokens;
    std::vector<uint8_t> records(bytes), back(bytes);
    ASSERT_TRUE(cpu_->ReadRecords(plan, host.view(tokens), 0, tokens, records.data()).ok());
    DevicePages dev(*gpu_, plan, 32, tokens);
    ASSERT_TRUE(gpu_->WriteRecords(plan, dev.view(0), 0, tokens, records.data()).ok());
    ASSERT_TRUE(gpu_->ReadRecords(plan, dev.view(tokens), 0, tokens, back.data()).ok());
    EXPECT_EQ(back, records) << "d" << d << " K" << kbits << " V" << vbits;
    std::vector<float> q = testing::RandomNormal(8 * d, 23);
    std::vector<float> oc(q.size()), lc(8), og(q.size()), lg(8);
    AttentionParams a;
    a.queries = q.data();
    a.num_q_heads = 8;
    a.scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.out = oc.data();
    a.lse = lc.data();
    ASSERT_TRUE(cpu_->Attend(plan, host.view(tokens), a).ok());
    a.out = og.data();
    a.lse = lg.data();
    ASSERT_TRUE(gpu_->Attend(plan, dev.view(tokens), a).ok());
    EXPECT_LT(testing::RelativeError(og, oc), 2e-3) << "d" << d;
  }
}

// Two plans that differ only in values a sampled fingerprint would not
// see (rows 2 and 3 of the value rotation swapped) each run with their own
// device plan, with ids and without.
TEST_F(CudaBackendTest, PlansAreNeverConfusedInTheDeviceCache) {
  for (bool with_ids : {true, false}) {
    planner::ModelProfile pa = MakeProfile(128, 2, 4, 3.0, 3, 31);
    planner::LayerPlan a = pa.layers[0];
    planner::LayerPlan b = a;
    for (planner::HeadPlan& h : b.heads) {
      for (int j = 0; j < 128; ++j) std::swap(h.value_rotation[2 * 128 + j], h.value_rotation[3 * 128 + j]);
    }
    a.id = with_ids ? planner::NewPlanId() : 0;
    b.id = with_ids ? planner::NewPlanId() : 0;
    const int64_t tokens = 300;
    std::vector<float> k = testing::RandomNormal(2 * tokens * 128, 41, 2.0f);
    std::vector<float> v = testing::RandomNormal(2 * tokens * 128, 42);
    std::vector<float> q = testing::RandomNormal(8 * 128, 43);
    for (const planner::LayerPlan* plan : {&a, &b, &a}) {
      testing::HostPagedLayer host(*plan, 64, tokens);
      DevicePages dev(*gpu_, *plan, 64, tokens);
      ASSERT_TRUE(cpu_->EncodeLayer(*plan, host.view(0), 0, k.data(), v.data(), tokens).ok());
      dev.CopyFrom(host);
      std::vector<float> oc(q.size()), lc(8), og(q.size()), lg(8);
      AttentionParams p;
      p.queries = q.data();
      p.num_q_heads = 8;
      p.scale = 1.0f / std::sqrt(128.0f);
      p.out = oc.data();
      p.lse = lc.data();
      ASSERT_TRUE(cpu_->Attend(*plan, host.view(tokens), p).ok());
      p.out = og.data();
      p.lse = lg.data();
      ASSERT_TRUE(gpu_->Attend(*plan, dev.view(tokens), p).ok());
      EXPECT_LT(testing::RelativeError(og, oc), 2e-3) << (with_ids ? "ids" : "no ids") << (plan == &b ? " b" : " a");
    }
  }
}

// A forgotten plan is uploaded again on its next use, with the same result.
TEST_F(CudaBackendTest, ForgottenPlansAreUploadedAgain) {
  planner::ModelProfile p = MakeProfile(128, 2, 4, 3.0, 3, 51);
  const planner::LayerPlan& plan = p.layers[0];
  const int64_t tokens = 200;
  std::vector<float> k = testing::RandomNormal(2 * tokens * 128, 52, 2.0f);
  std::vector<float> q = testing::RandomNormal(8 * 128, 53);
  DevicePages dev(*gpu_, plan, 64, tokens);
  ASSERT_TRUE(gpu_->EncodeLayer(plan, dev.view(0), 0, k.data(), k.data(), tokens).ok());
  std::vector<float> first(q.size()), again(q.size()), lse(8);
  AttentionParams a;
  a.queries = q.data();
  a.num_q_heads = 8;
  a.scale = 1.0f / std::sqrt(128.0f);
  a.lse = lse.data();
  a.out = first.data();
  ASSERT_TRUE(gpu_->Attend(plan, dev.view(tokens), a).ok());
  gpu_->ForgetPlan(plan.id);
  gpu_->ForgetPlan(plan.id);  // twice is harmless
  a.out = again.data();
  ASSERT_TRUE(gpu_->Attend(plan, dev.view(tokens), a).ok());
  EXPECT_EQ(first, again);
}

TEST_F(CudaBackendTest, EncodeMatchesCpuCodesOnRealData) {
  const std::string path = testing::RealDataPath();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no real data at " << path;
  planner::SafetensorsFile f = *planner::SafetensorsFile::Open(path);
  const planner::ModelGeometry g = *planner::GeometryFromMetadata(f);
  planner::ScoreAccumulator acc = *planner::ScoreAccumulator::Create(g);
  ASSERT_TRUE(planner::AccumulateCalibration(f, planner::SequenceSplit::kEven, &acc).ok());
  planner::Budget budget;
  const planner::ModelProfile profile = *planner::BuildProfile(acc, budget);
  const std::vector<float> k = *f.ReadFloat("k"), v = *f.ReadFloat("v");
  const int64_t tokens = f.tensors().at("k").shape[2];
  const size_t per_layer = static_cast<size_t>(g.num_kv_heads) * tokens * g.head_dim;
  CodeStats st;
  double worst_norm = 0;
  for (int layer = 0; layer < g.num_layers; ++layer) {
    std::vector<float> kl(k.begin() + layer * per_layer, k.begin() + (layer + 1) * per_layer);
    std::vector<float> vl(v.begin() + layer * per_layer, v.begin() + (layer + 1) * per_layer);
    EncodeBoth(*cpu_, *gpu_, profile.layers[layer], kl, vl, tokens, &st, &worst_norm);
  }
  const double agree = static_cast<double>(st.equal) / st.total;
  std::printf("[ figures  ] real: %lld codes, agreement %.6f, >1 level apart %lld, worst norm rel diff %.2e\n",
              static_cast<long long>(st.total), agree, static_cast<long long>(st.far), worst_norm);
  EXPECT_GE(agree, 0.9999);
  EXPECT_EQ(st.far, 0);
  EXPECT_LT(worst_norm, 1e-3);
}

struct AttendCase {
  int d, kv, group, q_len;
  bool causal;
  double kbits;
  int vbits, page_tokens;
  int64_t tokens;
};

class CudaAttendTest : public CudaBackendTest, public ::testing::WithParamInterface<AttendCase> {};

TEST_P(CudaAttendTest, EqualsCpuOnTheSameRecords) {
  const AttendCase c = GetParam();
  planner::ModelProfile p = MakeProfile(c.d, c.kv, c.group, c.kbits, c.vbits, c.d * 7 + c.group);
  const planner::LayerPlan& plan = p.layers[0];
  testing::HostPagedLayer host(plan, c.page_tokens, c.tokens);
  std::vector<float> k = testing::RandomNormal(c.kv * c.tokens * c.d, 3, 1.5f);
  std::vector<float> v = testing::RandomNormal(c.kv * c.tokens * c.d, 4);
  ASSERT_TRUE(cpu_->EncodeLayer(plan, host.view(0), 0, k.data(), v.data(), c.tokens).ok());
  DevicePages dev(*gpu_, plan, c.page_tokens, c.tokens);
  dev.CopyFrom(host);
  const int nq = c.kv * c.group;
  std::vector<float> q = testing::RandomNormal(nq * c.q_len * c.d, 5, 2.0f);
  // Full range, and a sub-range (a split a caller merges itself).
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, -1}, {c.tokens / 3, c.tokens - 5}}) {
    std::vector<float> out_c(nq * c.q_len * c.d, NAN), lse_c(nq * c.q_len, NAN);
    std::vector<float> out_g(out_c.size(), NAN), lse_g(lse_c.size(), NAN);
    AttentionParams a;
    a.queries = q.data();
    a.num_q_heads = nq;
    a.q_len = c.q_len;
    a.causal = c.causal;
    a.causal_offset = c.tokens - c.q_len;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    a.token_begin = b;
    a.token_end = e;
    a.out = out_c.data();
    a.lse = lse_c.data();
    ASSERT_TRUE(cpu_->Attend(plan, host.view(c.tokens), a).ok());
    a.out = out_g.data();
    a.lse = lse_g.data();
    absl::Status s = gpu_->Attend(plan, dev.view(c.tokens), a);
    ASSERT_TRUE(s.ok()) << s;
    const double rel = testing::RelativeError(out_g, out_c);
    EXPECT_LT(rel, 2e-3);
    double worst_lse = 0;
    for (size_t i = 0; i < lse_c.size(); ++i) {
      ASSERT_FALSE(std::isnan(lse_g[i])) << i;
      worst_lse = std::max(worst_lse, std::abs(static_cast<double>(lse_g[i]) - lse_c[i]));
    }
    EXPECT_LT(worst_lse, 1e-3);
    for (float x : out_g) ASSERT_FALSE(std::isnan(x));
    std::printf("[ figures  ] %s range [%lld, %lld): output rel diff %.2e, lse max abs diff %.2e\n",
                ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                static_cast<long long>(b), static_cast<long long>(e), rel, worst_lse);
  }
  // Decode agrees too.
  std::vector<float> kc(k.size()), vc(v.size()), kg(k.size()), vg(v.size());
  ASSERT_TRUE(cpu_->DecodeLayer(plan, host.view(c.tokens), 0, c.tokens, kc.data(), vc.data()).ok());
  ASSERT_TRUE(gpu_->DecodeLayer(plan, dev.view(c.tokens), 0, c.tokens, kg.data(), vg.data()).ok());
  EXPECT_LT(testing::RelativeError(kg, kc), 1e-5);
  EXPECT_LT(testing::RelativeError(vg, vc), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttendTest,
    ::testing::Values(AttendCase{128, 2, 8, 1, false, 3.0, 3, 64, 5000},
                      AttendCase{128, 2, 8, 4, true, 3.0, 3, 37, 3001},
                      AttendCase{128, 8, 4, 1, false, 2.0, 2, 256, 20000},
                      AttendCase{64, 4, 1, 2, true, 2.5, 4, 16, 300},
                      AttendCase{256, 1, 16, 1, false, 4.0, 4, 128, 2000},
                      AttendCase{128, 1, 24, 1, true, 6.0, 8, 64, 1000},
                      AttendCase{128, 2, 8, 3, true, 1.0, 1, 64, 130},
                      AttendCase{64, 2, 2, 1, false, 3.0, 3, 64, 1},
                      // Hundreds of splits: the merge inside the launch in two levels.
                      AttendCase{128, 2, 8, 1, false, 3.0, 3, 256, 131072}),
    [](const ::testing::TestParamInfo<AttendCase>& i) {
      const AttendCase& c = i.param;
      return absl::StrCat("d", c.d, "_kv", c.kv, "_g", c.group, "_q", c.q_len, c.causal ? "_causal" : "",
                          "_K", static_cast<int>(c.kbits * 10), "V", c.vbits, "_T", c.tokens);
    });

// One AttendBatch call over ragged items: different caches, plans (two
// profiles of the same shape), lengths, ranges and causal offsets, plus
// items that take other paths (pages of 37 tokens: scalar kernel; another
// row count: its own launch). Each result must equal the CPU on the same
// records; outputs start as NaN so that an unwritten element shows.
TEST_F(CudaBackendTest, RaggedBatchEqualsCpuPerItem) {
  struct Case {
    int profile, page_tokens, group, q_len;
    int64_t tokens, begin, end;
    bool causal;
  };
  const std::vector<Case> cases = {{0, 64, 8, 1, 5000, 0, -1, false},  {1, 64, 8, 1, 1234, 0, -1, false},
                                   {0, 128, 8, 1, 37, 0, -1, false},   {1, 64, 8, 1, 20000, 300, 17000, false},
                                   {0, 37, 8, 1, 3000, 0, -1, false},  {0, 64, 8, 2, 2000, 0, -1, true},
                                   {1, 16, 8, 1, 1, 0, -1, false}};
  const planner::ModelProfile profiles[2] = {MakeProfile(128, 2, 8, 3.0, 3, 11), MakeProfile(128, 2, 8, 2.5, 4, 12)};
  std::vector<std::unique_ptr<testing::HostPagedLayer>> hosts;
  std::vector<std::unique_ptr<DevicePages>> devs;
  std::vector<std::vector<float>> queries, out_g, lse_g, out_c, lse_c;
  std::vector<Backend::AttendItem> items;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const planner::LayerPlan& plan = profiles[c.profile].layers[0];
    hosts.push_back(std::make_unique<testing::HostPagedLayer>(plan, c.page_tokens, c.tokens));
    std::vector<float> k = testing::RandomNormal(2 * c.tokens * 128, 20 + i, 1.5f);
    std::vector<float> v = testing::RandomNormal(2 * c.tokens * 128, 40 + i);
    ASSERT_TRUE(cpu_->EncodeLayer(plan, hosts.back()->view(0), 0, k.data(), v.data(), c.tokens).ok());
    devs.push_back(std::make_unique<DevicePages>(*gpu_, plan, c.page_tokens, c.tokens));
    devs.back()->CopyFrom(*hosts.back());
    const int nq = 2 * c.group;
    queries.push_back(testing::RandomNormal(nq * c.q_len * 128, 60 + i, 2.0f));
    out_g.emplace_back(nq * c.q_len * 128, NAN);
    lse_g.emplace_back(nq * c.q_len, NAN);
    out_c.emplace_back(nq * c.q_len * 128, NAN);
    lse_c.emplace_back(nq * c.q_len, NAN);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    AttentionParams a;
    a.queries = queries[i].data();
    a.num_q_heads = 2 * c.group;
    a.q_len = c.q_len;
    a.causal = c.causal;
    a.causal_offset = c.tokens - c.q_len;
    a.scale = 1.0f / std::sqrt(128.0f);
    a.token_begin = c.begin;
    a.token_end = c.end;
    a.out = out_c[i].data();
    a.lse = lse_c[i].data();
    const planner::LayerPlan* plan = &profiles[c.profile].layers[0];
    ASSERT_TRUE(cpu_->Attend(*plan, hosts[i]->view(c.tokens), a).ok());
    a.out = out_g[i].data();
    a.lse = lse_g[i].data();
    items.push_back({plan, devs[i]->view(c.tokens), a});
  }
  absl::Status s = gpu_->AttendBatch(items);
  ASSERT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < cases.size(); ++i) {
    for (float x : out_g[i]) ASSERT_FALSE(std::isnan(x)) << "item " << i;
    const double rel = testing::RelativeError(out_g[i], out_c[i]);
    double worst_lse = 0;
    for (size_t j = 0; j < lse_c[i].size(); ++j) {
      worst_lse = std::max(worst_lse, std::abs(static_cast<double>(lse_g[i][j]) - lse_c[i][j]));
    }
    EXPECT_LT(rel, 2e-3) << "item " << i;
    EXPECT_LT(worst_lse, 1e-3) << "item " << i;
    std::printf("[ figures  ] batch item %zu (%lld tokens): output rel diff %.2e, lse max abs diff %.2e\n", i,
                static_cast<long long>(cases[i].tokens), rel, worst_lse);
  }
  // A bad item fails the call with its index.
  items[3].params.token_end = cases[3].tokens + 1;
  s = gpu_->AttendBatch(items);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_NE(s.message().find("item 3"), std::string::npos) << s;
}

// Calls from many threads run on several streams at once; each must get
// exactly what the same call gets alone (encode and attention are
// deterministic for a given input), whatever else is in flight.
TEST_F(CudaBackendTest, ConcurrentCallsEqualTheSameCallsAlone) {
  const planner::ModelProfile profile = MakeProfile(128, 2, 8, 3.0, 3, 21);
  const planner::LayerPlan& plan = profile.layers[0];
  constexpr int kThreads = 16, kRounds = 12;
  struct Work {
    int64_t tokens;
    std::vector<float> k, v, q;
    std::vector<float> out[2], lse[2];  // alone: by Attend, by AttendBatch
  };
  std::vector<Work> work(kThreads);
  auto run = [&](Work& w, std::vector<float>* out, std::vector<float>* lse, bool batched) -> absl::Status {
    DevicePages pages(*gpu_, plan, 64, w.tokens);
    if (absl::Status s = gpu_->EncodeLayer(plan, pages.view(0), 0, w.k.data(), w.v.data(), w.tokens); !s.ok()) {
      return s;
    }
    AttentionParams a;
    a.queries = w.q.data();
    a.num_q_heads = 16;
    a.scale = 1.0f / std::sqrt(128.0f);
    out->assign(16 * 128, NAN);
    lse->assign(16, NAN);
    a.out = out->data();
    a.lse = lse->data();
    if (!batched) return gpu_->Attend(plan, pages.view(w.tokens), a);
    const Backend::AttendItem item{&plan, pages.view(w.tokens), a};
    return gpu_->AttendBatch({&item, 1});
  };
  for (int i = 0; i < kThreads; ++i) {
    Work& w = work[i];
    w.tokens = 500 + 700 * i;
    w.k = testing::RandomNormal(2 * w.tokens * 128, 100 + i, 1.5f);
    w.v = testing::RandomNormal(2 * w.tokens * 128, 200 + i);
    w.q = testing::RandomNormal(16 * 128, 300 + i, 2.0f);
    ASSERT_TRUE(run(w, &w.out[0], &w.lse[0], false).ok());
    ASSERT_TRUE(run(w, &w.out[1], &w.lse[1], true).ok());
  }
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < kRounds; ++r) {
        Work& w = work[(i + r) % kThreads];
        std::vector<float> out, lse;
        if (!run(w, &out, &lse, r % 2 == 1).ok()) {
          ++failures;
        } else if (out != w.out[r % 2] || lse != w.lse[r % 2]) {
          ++mismatches;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0) << "of " << kThreads * kRounds << " concurrent calls";
}

TEST_F(CudaBackendTest, BadInputAndNormOverflow) {
  planner::ModelProfile p = MakeProfile(64, 2, 2, 3.0, 3, 1);
  DevicePages dev(*gpu_, p.layers[0], 16, 32);
  std::vector<float> k = testing::RandomNormal(2 * 4 * 64, 1), v = k;
  k[5] = NAN;
  EXPECT_EQ(gpu_->EncodeLayer(p.layers[0], dev.view(0), 0, k.data(), v.data(), 4).code(),
            absl::StatusCode::kInvalidArgument);
  k[5] = 1e6f;
  EXPECT_EQ(gpu_->EncodeLayer(p.layers[0], dev.view(0), 0, k.data(), v.data(), 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->EncodeLayer(p.layers[0], dev.view(0), 30, v.data(), v.data(), 4).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(gpu_->healthy());
}

}  // namespace
}  // namespace ropekv::kernels
