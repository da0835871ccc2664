// CUDA kernel benchmarks (Google Benchmark, manual time from CUDA events):
// fused packed-cache attention of one layer by context length, geometry and
// budget, and encode of a 64K-token append. Counters: packed bytes read per
// call and the achieved bandwidth; sdpa_baseline.py measures torch SDPA
// and the copy bandwidth on the same GPU for the ratios (bench/report.py).
//
//   ropekv_cuda_bench --benchmark_format=json > cuda_bench.json
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "planner/plan.h"

namespace ropekv::kernels {
namespace {

Backend* Gpu() {
  static Backend* gpu = [] {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateCudaBackend();
    return b.ok() ? b->release() : nullptr;
  }();
  return gpu;
}

// Score profiles of the plans benchmarked: the attention kernel's cost
// depends on how many key groups (widths) a plan has.
enum class PlanShape {
  kLognormal = 0,   // scores lognormal(0, 2) per block: 6-8 groups, any sizes
  kRopeDecay = 1,   // a RoPE-like spectrum (energy falls with block frequency),
                    // byte-aware at uniform's bytes, groups in multiples of 16 dims
  kMostGroups = 2,  // a steep spectrum: every width 1-8, the most groups there are
};

planner::ModelProfile Profile(int q_heads, int kv_heads, int bits, PlanShape shape = PlanShape::kLognormal) {
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_q_heads = q_heads;
  g.num_kv_heads = kv_heads;
  g.head_dim = 128;
  g.rotary_dim = 128;
  std::mt19937 gen(1);
  std::lognormal_distribution<double> e(0, 2);
  std::uniform_real_distribution<double> jitter(0.8, 1.25);
  planner::PerHead scores(1, std::vector<std::vector<double>>(kv_heads, std::vector<double>(64)));
  for (auto& h : scores[0]) {
    for (int i = 0; i < 64; ++i) {
      switch (shape) {
        case PlanShape::kLognormal: h[i] = e(gen); break;
        case PlanShape::kRopeDecay: h[i] = std::exp(-i / 12.0) * jitter(gen) + 1e-3; break;
        case PlanShape::kMostGroups: h[i] = std::exp(-i / 3.0); break;
      }
    }
  }
  planner::Budget b;
  b.key_avg_bits = bits;
  b.value_bits = bits;
  if (shape == PlanShape::kRopeDecay) {
    b.key_bytes = (128 * bits + 7) / 8 + 2;  // uniform Kb's key bytes
    b.key_group_multiple = 16;
  }
  return *planner::BuildProfileFromScores(g, b, scores);
}

int MaxKeyGroups(const planner::LayerPlan& plan) {
  size_t n = 0;
  for (const planner::HeadPlan& h : plan.heads) n = std::max(n, h.key_groups.size());
  return static_cast<int>(n);
}

// Pages on the device filled by the real encoder (chunks of 64K tokens).
struct DeviceLayer {
  uint8_t* arena = nullptr;
  std::vector<uint8_t*> pages;
  PagedLayerView view;
  int64_t packed_bytes = 0;
  ~DeviceLayer() {
    if (arena != nullptr) Gpu()->FreeArena(arena);
  }
};

bool Fill(const planner::LayerPlan& plan, int64_t tokens, DeviceLayer* l) {
  const int page_tokens = 256;
  const int64_t page_bytes = planner::MakePageLayout(plan, page_tokens).page_bytes;
  const int64_t n_pages = (tokens + page_tokens - 1) / page_tokens;
  absl::StatusOr<uint8_t*> arena = Gpu()->AllocateArena(n_pages * page_bytes);
  if (!arena.ok()) return false;
  l->arena = *arena;
  for (int64_t i = 0; i < n_pages; ++i) l->pages.push_back(l->arena + i * page_bytes);
  l->view = {l->pages.data(), n_pages, page_tokens, 0};
  const int kv = static_cast<int>(plan.heads.size());
  const int64_t chunk = 65536;
  std::mt19937 gen(2);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> k(kv * chunk * 128), v(k.size());
  for (float& x : k) x = n(gen);
  for (float& x : v) x = n(gen);
  for (int64_t t = 0; t < tokens; t += chunk) {
    const int64_t c = std::min(chunk, tokens - t);
    if (!Gpu()->EncodeLayer(plan, l->view, t, k.data(), v.data(), c).ok()) return false;
    l->view.num_tokens = t + c;
  }
  for (const planner::HeadPlan& h : plan.heads) l->packed_bytes += h.layout.record_bytes * tokens;
  return true;
}

// Args: q heads, kv heads, bits, context tokens.
void BM_Attend(benchmark::State& state) {
  if (Gpu() == nullptr) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int qh = static_cast<int>(state.range(0)), kvh = static_cast<int>(state.range(1));
  const int bits = static_cast<int>(state.range(2));
  const int64_t tokens = state.range(3);
  const auto shape = static_cast<PlanShape>(state.range(4));
  const planner::ModelProfile p = Profile(qh, kvh, bits, shape);
  DeviceLayer layer;
  if (!Fill(p.layers[0], tokens, &layer)) {
    state.SkipWithError("fill failed");
    return;
  }
  std::vector<float> q(qh * 128, 0.1f), out(qh * 128), lse(qh);
  AttentionParams a;
  a.queries = q.data();
  a.num_q_heads = qh;
  a.scale = 1.0f / std::sqrt(128.0f);
  a.out = out.data();
  a.lse = lse.data();
  double total_us = 0;
  AttendKernelTimes times;
  for (auto _ : state) {
    absl::StatusOr<AttendKernelTimes> t = TimeAttendKernels(*Gpu(), p.layers[0], layer.view, a, 50);
    if (!t.ok()) {
      state.SkipWithError(std::string(t.status().message()).c_str());
      return;
    }
    state.SetIterationTime(t->total_us / 1e6);
    total_us += t->total_us;
    times = *t;
  }
  state.counters["rotate_us"] = times.rotate_us;
  state.counters["attend_us"] = times.attend_us;
  state.counters["merge_us"] = times.merge_us;
  state.counters["splits"] = times.num_splits;
  state.counters["tensor_cores"] = times.tensor_cores ? 1 : 0;
  const double us = total_us / state.iterations();
  state.counters["us"] = us;
  state.counters["packed_bytes"] = static_cast<double>(layer.packed_bytes);
  state.counters["GBps"] = layer.packed_bytes / us / 1e3;
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["bits"] = bits;
  state.counters["plan_shape"] = static_cast<double>(shape);
  state.counters["key_groups"] = MaxKeyGroups(p.layers[0]);
}

// Args: kv heads, bits, tokens.
void BM_Encode(benchmark::State& state) {
  if (Gpu() == nullptr) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int kvh = static_cast<int>(state.range(0)), bits = static_cast<int>(state.range(1));
  const int64_t tokens = state.range(2);
  const planner::ModelProfile p = Profile(kvh * 8, kvh, bits);
  DeviceLayer layer;
  if (!Fill(p.layers[0], tokens, &layer)) {
    state.SkipWithError("fill failed");
    return;
  }
  std::vector<float> k(kvh * tokens * 128, 0.5f), v(k.size(), -0.25f);
  double total_us = 0;
  for (auto _ : state) {
    absl::StatusOr<double> us =
        TimeEncodeKernel(*Gpu(), p.layers[0], layer.view, k.data(), v.data(), tokens, 5);
    if (!us.ok()) {
      state.SkipWithError(std::string(us.status().message()).c_str());
      return;
    }
    state.SetIterationTime(*us / 1e6);
    total_us += *us;
  }
  const double us = total_us / state.iterations();
  // Traffic of a real append: fp16 K and V read, packed records written
  // (the kernel reads fp32 here; the figure counts fp16 input bytes).
  const double bytes = tokens * kvh * 128 * 2.0 * 2 + layer.packed_bytes;
  state.counters["us"] = us;
  state.counters["bytes"] = bytes;
  state.counters["GBps"] = bytes / us / 1e3;
  state.counters["bits"] = bits;
}

void AttendArgs(benchmark::internal::Benchmark* b) {
  for (auto [qh, kvh] : {std::pair{16, 2}, std::pair{32, 8}}) {
    for (int bits : {2, 3, 4}) {
      for (int64_t t : {4096, 32768, 131072, 524288}) b->Args({qh, kvh, bits, t, 0});
    }
  }
  for (int shape : {1, 2}) {
    for (int64_t t : {4096, 32768, 131072, 524288}) b->Args({16, 2, 3, t, shape});
  }
}

// Args: sessions, tokens each (16/2 heads, K3V3): one AttendBatch launch
// over separate caches, one query token each.
void BM_AttendBatch(benchmark::State& state) {
  if (Gpu() == nullptr) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int sessions = static_cast<int>(state.range(0));
  const int64_t tokens = state.range(1);
  const planner::ModelProfile p = Profile(16, 2, 3);
  std::vector<std::unique_ptr<DeviceLayer>> layers;
  std::vector<float> q(16 * 128, 0.1f), out(sessions * 16 * 128), lse(sessions * 16);
  std::vector<Backend::AttendItem> items;
  int64_t packed = 0;
  for (int i = 0; i < sessions; ++i) {
    layers.push_back(std::make_unique<DeviceLayer>());
    if (!Fill(p.layers[0], tokens, layers.back().get())) {
      state.SkipWithError("fill failed");
      return;
    }
    packed += layers.back()->packed_bytes;
    AttentionParams a;
    a.queries = q.data();
    a.num_q_heads = 16;
    a.scale = 1.0f / std::sqrt(128.0f);
    a.out = out.data() + i * 16 * 128;
    a.lse = lse.data() + i * 16;
    items.push_back({&p.layers[0], layers.back()->view, a});
  }
  double total_us = 0;
  for (auto _ : state) {
    absl::StatusOr<double> us = TimeAttendBatchKernels(*Gpu(), items, 50);
    if (!us.ok()) {
      state.SkipWithError(std::string(us.status().message()).c_str());
      return;
    }
    state.SetIterationTime(*us / 1e6);
    total_us += *us;
  }
  const double us = total_us / state.iterations();
  state.counters["us"] = us;
  state.counters["packed_bytes"] = static_cast<double>(packed);
  state.counters["GBps"] = packed / us / 1e3;
  state.counters["sessions"] = sessions;
  state.counters["tokens"] = static_cast<double>(tokens);
}

BENCHMARK(BM_AttendBatch)->Args({1, 32768})->Args({8, 32768})->Args({8, 4096})->UseManualTime()
    ->Unit(benchmark::kMicrosecond)->Iterations(3);
BENCHMARK(BM_Attend)->Apply(AttendArgs)->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(3);
BENCHMARK(BM_Encode)->Args({2, 3, 65536})->Args({8, 3, 65536})->UseManualTime()
    ->Unit(benchmark::kMicrosecond)->Iterations(3);

}  // namespace
}  // namespace ropekv::kernels

BENCHMARK_MAIN();
