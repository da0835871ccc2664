// The profile registry tells the backend to forget a profile's plans once
// nothing holds the profile any more: not while a session still uses it,
// and for every layer when the last holder goes.
#include <set>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "planner/plan.h"
#include "service/profiles.h"

namespace ropekv::service {
namespace {

// The CPU backend, recording ForgetPlan calls.
class RecordingBackend : public kernels::Backend {
 public:
  RecordingBackend() : cpu_(kernels::CreateCpuBackend({.num_threads = 1})) {}
  const char* name() const override { return "recording"; }
  void ForgetPlan(uint64_t id) override {
    absl::MutexLock lock(&mu_);
    forgotten_.insert(id);
  }
  std::set<uint64_t> forgotten() {
    absl::MutexLock lock(&mu_);
    return forgotten_;
  }
  absl::Status EncodeLayer(const planner::LayerPlan& p, const kernels::PagedLayerView& c, int64_t f,
                           const float* k, const float* v, int64_t n) override {
    return cpu_->EncodeLayer(p, c, f, k, v, n);
  }
  absl::Status DecodeLayer(const planner::LayerPlan& p, const kernels::PagedLayerView& c, int64_t f, int64_t n,
                           float* k, float* v) override {
    return cpu_->DecodeLayer(p, c, f, n, k, v);
  }
  absl::Status Attend(const planner::LayerPlan& p, const kernels::PagedLayerView& c,
                      const kernels::AttentionParams& a) override {
    return cpu_->Attend(p, c, a);
  }
  absl::Status AttendDense(int kv, int d, const kernels::DenseKvView& v, const kernels::AttentionParams& a) override {
    return cpu_->AttendDense(kv, d, v, a);
  }
  absl::Status MergeStates(const kernels::MergeParams& p) override { return cpu_->MergeStates(p); }
  absl::StatusOr<uint8_t*> AllocateArena(int64_t bytes) override { return cpu_->AllocateArena(bytes); }
  void FreeArena(uint8_t* arena) override { cpu_->FreeArena(arena); }
  absl::Status ReadRecords(const planner::LayerPlan& p, const kernels::PagedLayerView& c, int64_t f, int64_t n,
                           uint8_t* out) override {
    return cpu_->ReadRecords(p, c, f, n, out);
  }
  absl::Status WriteRecords(const planner::LayerPlan& p, const kernels::PagedLayerView& c, int64_t f, int64_t n,
                            const uint8_t* r) override {
    return cpu_->WriteRecords(p, c, f, n, r);
  }

 private:
  std::unique_ptr<kernels::Backend> cpu_;
  absl::Mutex mu_;
  std::set<uint64_t> forgotten_ ABSL_GUARDED_BY(mu_);
};

planner::ModelProfile SmallProfile() {
  planner::ModelGeometry g;
  g.num_layers = 3;
  g.num_q_heads = 2;
  g.num_kv_heads = 1;
  g.head_dim = 16;
  g.rotary_dim = 16;
  planner::PerHead scores(3, std::vector<std::vector<double>>(1, std::vector<double>(8, 1.0)));
  planner::Budget b;
  b.key_avg_bits = 3;
  b.value_bits = 3;
  return *planner::BuildProfileFromScores(g, b, scores);
}

TEST(ProfileRegistryTest, PlansAreForgottenWhenTheLastHolderGoes) {
  RecordingBackend backend;
  ProfileRegistry registry("", nullptr, &backend);
  planner::ModelProfile p = SmallProfile();
  std::set<uint64_t> ids;
  for (const planner::LayerPlan& l : p.layers) ids.insert(l.id);
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_EQ(ids.count(0), 0u);
  ASSERT_TRUE(registry.Add("t", "p", std::move(p)).ok());
  absl::StatusOr<std::shared_ptr<const planner::ModelProfile>> held = registry.Get("t", "p");  // a session's
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(registry.Delete("t", "p").ok());
  EXPECT_TRUE(backend.forgotten().empty()) << "forgotten while a session still holds the profile";
  held->reset();
  EXPECT_EQ(backend.forgotten(), ids);
}

}  // namespace
}  // namespace ropekv::service
