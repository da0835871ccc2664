// Kernel benchmarks (Google Benchmark): encode and packed-cache attention of
// one layer on the CPU backend, against dense fp32 attention over the same
// tokens as the baseline measured in the same run.
//
//   build/default/kernels/ropekv_kernel_bench --benchmark_format=json
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/backend.h"
#include "planner/allocator.h"
#include "planner/plan.h"

namespace ropekv::kernels {
namespace {

struct Layer {
  planner::ModelProfile profile;
  std::vector<std::vector<uint8_t>> pages;
  std::vector<uint8_t*> page_ptrs;
  std::vector<float> keys, values, queries;
  PagedLayerView view;
};

// 16 query / 2 KV heads, head_dim 128 (Qwen2.5-3B-like), K and V at `bits`.
std::unique_ptr<Layer> MakeLayer(int bits, int64_t tokens, bool encode) {
  auto l = std::make_unique<Layer>();
  planner::ModelGeometry g;
  g.num_layers = 1;
  g.num_q_heads = 16;
  g.num_kv_heads = 2;
  g.head_dim = 128;
  g.rotary_dim = 128;
  std::mt19937 gen(1);
  std::lognormal_distribution<double> e(0, 2);
  planner::PerHead scores(1, std::vector<std::vector<double>>(2, std::vector<double>(64)));
  for (auto& h : scores[0]) for (double& x : h) x = e(gen);
  planner::Budget b;
  b.key_avg_bits = bits;
  b.value_bits = bits;
  l->profile = *planner::BuildProfileFromScores(g, b, scores);
  const int page_tokens = 256;
  const int64_t page_bytes =
      planner::MakePageLayout(l->profile.layers[0], page_tokens).page_bytes;
  for (int64_t t = 0; t < tokens; t += page_tokens) l->pages.emplace_back(page_bytes);
  for (auto& p : l->pages) l->page_ptrs.push_back(p.data());
  std::normal_distribution<float> n(0, 1);
  l->keys.resize(2 * tokens * 128);
  l->values.resize(2 * tokens * 128);
  l->queries.resize(16 * 128);
  for (float& x : l->keys) x = n(gen);
  for (float& x : l->values) x = n(gen);
  for (float& x : l->queries) x = n(gen);
  l->view = {l->page_ptrs.data(), static_cast<int64_t>(l->page_ptrs.size()),
             page_tokens, encode ? tokens : 0};
  return l;
}

void BM_EncodeLayer(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const int64_t tokens = state.range(1);
  auto l = MakeLayer(bits, tokens, false);
  auto backend = CreateCpuBackend();
  for (auto _ : state) {
    absl::Status s = backend->EncodeLayer(l->profile.layers[0], l->view, 0,
                                          l->keys.data(), l->values.data(), tokens);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  }
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(tokens) * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_AttendPacked(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const int64_t tokens = state.range(1);
  auto l = MakeLayer(bits, tokens, false);
  auto backend = CreateCpuBackend();
  if (!backend->EncodeLayer(l->profile.layers[0], l->view, 0, l->keys.data(),
                            l->values.data(), tokens).ok()) {
    state.SkipWithError("encode failed");
    return;
  }
  l->view.num_tokens = tokens;
  std::vector<float> out(16 * 128), lse(16);
  AttentionParams p;
  p.queries = l->queries.data();
  p.num_q_heads = 16;
  p.scale = 1.0f / std::sqrt(128.0f);
  p.out = out.data();
  p.lse = lse.data();
  for (auto _ : state) {
    benchmark::DoNotOptimize(backend->Attend(l->profile.layers[0], l->view, p));
  }
  state.counters["packed_bytes"] = static_cast<double>(
      l->profile.layers[0].heads[0].layout.record_bytes * 2 * tokens);
}

// Baseline: dense fp32 GQA attention over the same number of tokens.
void BM_AttendDenseFp32(benchmark::State& state) {
  const int64_t tokens = state.range(1);
  auto l = MakeLayer(3, tokens, false);
  std::vector<float> out(16 * 128), logits(tokens);
  for (auto _ : state) {
    for (int qh = 0; qh < 16; ++qh) {
      const int h = qh / 8;
      const float* q = l->queries.data() + qh * 128;
      float m = -INFINITY;
      for (int64_t t = 0; t < tokens; ++t) {
        const float* k = l->keys.data() + (h * tokens + t) * 128;
        float s = 0;
        for (int j = 0; j < 128; ++j) s += q[j] * k[j];
        logits[t] = s * 0.08838835f;
        m = std::max(m, logits[t]);
      }
      float total = 0;
      float* o = out.data() + qh * 128;
      std::fill(o, o + 128, 0.0f);
      for (int64_t t = 0; t < tokens; ++t) {
        const float w = std::exp(logits[t] - m);
        total += w;
        const float* v = l->values.data() + (h * tokens + t) * 128;
        for (int j = 0; j < 128; ++j) o[j] += w * v[j];
      }
      for (int j = 0; j < 128; ++j) o[j] /= total;
    }
    benchmark::DoNotOptimize(out.data());
  }
}

BENCHMARK(BM_EncodeLayer)->ArgsProduct({{2, 3, 4}, {4096}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttendPacked)->ArgsProduct({{2, 3, 4}, {4096, 32768}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_AttendDenseFp32)->ArgsProduct({{3}, {4096, 32768}})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace ropekv::kernels

BENCHMARK_MAIN();
