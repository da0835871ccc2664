// Packed records in and out of a backend's pages (WriteRecords /
// ReadRecords) and how a backend cuts pages (PageTokens).
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "planner/plan.h"
#include "tests/unit/test_util.h"

namespace ropekv::kernels {
namespace {

planner::ModelProfile Profile(int d, int kv, double kbits, int vbits) {
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = kv;
  g.num_q_heads = kv * 2;
  g.head_dim = d;
  g.rotary_dim = d;
  planner::PerHead scores(1, std::vector<std::vector<double>>(kv, std::vector<double>(d / 2)));
  for (int h = 0; h < kv; ++h) {
    for (int b = 0; b < d / 2; ++b) scores[0][h][b] = 1.0 + (b * 7 + h) % 11;  // several widths
  }
  planner::Budget b;
  b.key_avg_bits = kbits;
  b.value_bits = vbits;
  return *planner::BuildProfileFromScores(g, b, scores);
}

int64_t RecordBytes(const planner::LayerPlan& plan, int64_t tokens) {
  int64_t bytes = 0;
  for (const planner::HeadPlan& h : plan.heads) bytes += h.layout.record_bytes * tokens;
  return bytes;
}

TEST(RecordsTest, WriteThenReadIsBitExactAcrossPageSizes) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend({.num_threads = 2});
  for (auto [d, kv, kbits, vbits] : {std::tuple{64, 2, 3.0, 3}, {36, 3, 2.5, 2}, {128, 1, 4.0, 4}}) {
    planner::ModelProfile p = Profile(d, kv, kbits, vbits);
    const planner::LayerPlan& plan = p.layers[0];
    const int64_t tokens = 45;  // a partly filled last page in both layouts
    testing::HostPagedLayer a(plan, 7, tokens);
    std::vector<float> k = testing::RandomNormal(kv * tokens * d, 1, 2.0f);
    std::vector<float> v = testing::RandomNormal(kv * tokens * d, 2);
    ASSERT_TRUE(cpu->EncodeLayer(plan, a.view(0), 0, k.data(), v.data(), tokens).ok());
    std::vector<uint8_t> records(RecordBytes(plan, tokens));
    ASSERT_TRUE(cpu->ReadRecords(plan, a.view(tokens), 0, tokens, records.data()).ok());

    // Into pages of another size, in two writes, then back out.
    testing::HostPagedLayer b(plan, 5, tokens);
    std::vector<uint8_t> first(RecordBytes(plan, 20)), rest(RecordBytes(plan, tokens - 20));
    ASSERT_TRUE(cpu->ReadRecords(plan, a.view(tokens), 0, 20, first.data()).ok());
    ASSERT_TRUE(cpu->ReadRecords(plan, a.view(tokens), 20, tokens - 20, rest.data()).ok());
    ASSERT_TRUE(cpu->WriteRecords(plan, b.view(0), 0, 20, first.data()).ok());
    ASSERT_TRUE(cpu->WriteRecords(plan, b.view(20), 20, tokens - 20, rest.data()).ok());
    std::vector<uint8_t> back(records.size());
    ASSERT_TRUE(cpu->ReadRecords(plan, b.view(tokens), 0, tokens, back.data()).ok());
    EXPECT_EQ(back, records) << "d" << d;

    // The same cache, so the same decode and the same attention, bit for bit.
    std::vector<float> ka(k.size()), va(v.size()), kb(k.size()), vb(v.size());
    ASSERT_TRUE(cpu->DecodeLayer(plan, a.view(tokens), 0, tokens, ka.data(), va.data()).ok());
    ASSERT_TRUE(cpu->DecodeLayer(plan, b.view(tokens), 0, tokens, kb.data(), vb.data()).ok());
    EXPECT_EQ(ka, kb);
    EXPECT_EQ(va, vb);
    std::vector<float> q = testing::RandomNormal(kv * 2 * d, 3);
    std::vector<float> oa(q.size()), la(kv * 2), ob(q.size()), lb(kv * 2);
    AttentionParams ap;
    ap.queries = q.data();
    ap.num_q_heads = kv * 2;
    ap.scale = 0.125f;
    ap.out = oa.data();
    ap.lse = la.data();
    ASSERT_TRUE(cpu->Attend(plan, a.view(tokens), ap).ok());
    ap.out = ob.data();
    ap.lse = lb.data();
    ASSERT_TRUE(cpu->Attend(plan, b.view(tokens), ap).ok());
    EXPECT_EQ(oa, ob);
    EXPECT_EQ(la, lb);
  }
}

TEST(RecordsTest, BadNormsAndRangesAreRefusedAndWriteNothing) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend({.num_threads = 1});
  planner::ModelProfile p = Profile(32, 2, 3.0, 3);
  const planner::LayerPlan& plan = p.layers[0];
  const int64_t tokens = 10;
  testing::HostPagedLayer a(plan, 4, tokens);
  std::vector<float> k = testing::RandomNormal(2 * tokens * 32, 1);
  ASSERT_TRUE(cpu->EncodeLayer(plan, a.view(0), 0, k.data(), k.data(), tokens).ok());
  std::vector<uint8_t> good(RecordBytes(plan, tokens));
  ASSERT_TRUE(cpu->ReadRecords(plan, a.view(tokens), 0, tokens, good.data()).ok());
  const int rb1 = plan.heads[1].layout.record_bytes;
  const int64_t head1_token3 = plan.heads[0].layout.record_bytes * tokens + 3 * rb1;
  for (auto [bits, at, what] : {std::tuple{uint16_t{0x7C00}, plan.heads[1].layout.value_norm_offset, "value norm"},
                               {uint16_t{0x7E00}, plan.heads[1].layout.key_norms_offset, "key group norm"},
                               {uint16_t{0xBC00}, plan.heads[1].layout.key_norms_offset, "key group norm"}}) {
    std::vector<uint8_t> bad = good;
    bad[head1_token3 + at] = bits & 0xFF;
    bad[head1_token3 + at + 1] = bits >> 8;
    testing::HostPagedLayer b(plan, 4, tokens, 0x11);
    const std::vector<std::vector<uint8_t>> before = b.storage();
    absl::Status s = cpu->WriteRecords(plan, b.view(0), 0, tokens, bad.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(absl::StrCat("kv_head 1 token 3: ", what)), std::string::npos) << s;
    EXPECT_EQ(b.storage(), before);  // nothing written
  }
  testing::HostPagedLayer small(plan, 4, 8);
  EXPECT_EQ(cpu->WriteRecords(plan, small.view(0), 0, tokens, good.data()).code(), absl::StatusCode::kOutOfRange);
}

// A backend whose pages hold multiples of 16 tokens (as the CUDA one).
class TiledBackend : public Backend {
 public:
  explicit TiledBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  const char* name() const override { return "tiled"; }
  PageConstraints page_constraints() const override { return {.token_multiple = 16, .alignment = 16}; }
  absl::Status EncodeLayer(const planner::LayerPlan& p, const PagedLayerView& c, int64_t f, const float* k,
                           const float* v, int64_t n) override { return inner_->EncodeLayer(p, c, f, k, v, n); }
  absl::Status DecodeLayer(const planner::LayerPlan& p, const PagedLayerView& c, int64_t f, int64_t n,
                           float* k, float* v) override { return inner_->DecodeLayer(p, c, f, n, k, v); }
  absl::Status Attend(const planner::LayerPlan& p, const PagedLayerView& c, const AttentionParams& a) override {
    return inner_->Attend(p, c, a);
  }
  absl::Status AttendDense(int kv, int d, const DenseKvView& v, const AttentionParams& a) override {
    return inner_->AttendDense(kv, d, v, a);
  }
  absl::Status MergeStates(const MergeParams& p) override { return inner_->MergeStates(p); }
  absl::StatusOr<uint8_t*> AllocateArena(int64_t bytes) override { return inner_->AllocateArena(bytes); }
  void FreeArena(uint8_t* arena) override { inner_->FreeArena(arena); }
  absl::Status ReadRecords(const planner::LayerPlan& p, const PagedLayerView& c, int64_t f, int64_t n,
                           uint8_t* out) override { return inner_->ReadRecords(p, c, f, n, out); }
  absl::Status WriteRecords(const planner::LayerPlan& p, const PagedLayerView& c, int64_t f, int64_t n,
                            const uint8_t* r) override { return inner_->WriteRecords(p, c, f, n, r); }

 private:
  std::unique_ptr<Backend> inner_;
};

TEST(RecordsTest, PagesAreCutByTheBackendsConstraints) {
  planner::ModelProfile p = Profile(64, 2, 3.0, 3);
  const planner::LayerPlan& plan = p.layers[0];
  std::unique_ptr<Backend> cpu = CreateCpuBackend({.num_threads = 1});
  TiledBackend tiled(CreateCpuBackend({.num_threads = 1}));
  const int64_t per_token = cpu->PageBytesPerToken(plan);
  EXPECT_EQ(per_token, plan.heads[0].layout.record_bytes + plan.heads[1].layout.record_bytes);
  EXPECT_EQ(cpu->PageTokens(plan, 100 * per_token + 5), 100);
  EXPECT_EQ(tiled.PageTokens(plan, 100 * per_token + 5), 96);  // whole tiles
  EXPECT_EQ(tiled.PageTokens(plan, 10 * per_token), 10);       // under one tile: as many as fit
  EXPECT_EQ(cpu->PageTokens(plan, per_token - 1), 0);          // not even one token
}

}  // namespace
}  // namespace ropekv::kernels
