// The fragment page layout measured before it is wired into the backend:
// the same random cache (codes, fp16 norms, fp16 codebook levels) stored
// once as canonical records and once in the fragment layout
// (kernels/cuda/fragment_layout.cuh); the tensor-core kernel of each layout
// (attention_mma.cu, attention_fragment.cu) runs the same split attention,
// both are checked against an fp64 reference of the split partials, and
// each is timed alone (CUDA events around back-to-back launches, best of
// several repetitions). One JSON object per line.
//
//   ropekv_fragment_bench > fragment_bench.jsonl
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/device_plan.cuh"
#include "kernels/cuda/fragment_layout.cuh"

namespace ropekv::kernels::cuda {
namespace {

#define CHECK_CUDA(x)                                                                   \
  do {                                                                                  \
    const cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

struct Config {
  const char* name;
  int kv_heads;
  int rows;  // query rows per KV head (GQA group x q_len)
  int d;
  std::vector<std::pair<int, int>> groups;  // (width, dims), ascending width
  int value_bits;
  long long tokens;
};

float RoundHalf(float x) { return __half2float(__float2half_rn(x)); }
uint16_t HalfBits(float x) { return __half_as_ushort(__float2half_rn(x)); }

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(1, v.size() * sizeof(T))));
  CHECK_CUDA(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

void SetBits(std::vector<uint8_t>& buf, size_t byte0, long long bit, int width, int code) {
  for (int b = 0; b < width; ++b) {
    if ((code >> b) & 1) buf[byte0 + (bit + b) / 8] |= static_cast<uint8_t>(1u << ((bit + b) % 8));
  }
}

struct Timing {
  double best_us;
  double worst_us;
};

template <typename F>
Timing Time(F launch, int reps, int iters) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) CHECK_CUDA(launch());
  Timing t{1e30, 0};
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a));
    for (int i = 0; i < iters; ++i) CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    const double us = 1e3 * ms / iters;
    t.best_us = std::min(t.best_us, us);
    t.worst_us = std::max(t.worst_us, us);
  }
  return t;
}

void Run(const Config& cfg, int sm_count) {
  const int kv = cfg.kv_heads, d = cfg.d, rows = cfg.rows, vb = cfg.value_bits;
  const int num_groups = static_cast<int>(cfg.groups.size());
  const long long tokens = cfg.tokens;
  const int page_tokens = 256;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0, 1);
  std::uniform_real_distribution<float> uniform(0.5f, 2.0f);

  // Plan: group offsets, code bit offsets, record layout (planner/packed_layout.md).
  int group_offset[kMaxGroups], group_bit[kMaxGroups], key_bits = 0, slot = 0;
  for (int g = 0; g < num_groups; ++g) {
    group_offset[g] = slot;
    group_bit[g] = key_bits;
    slot += cfg.groups[g].second;
    key_bits += cfg.groups[g].first * cfg.groups[g].second;
  }
  const int key_codes_offset = 2 * (num_groups + 1);
  const int value_codes_offset = key_codes_offset + (key_bits + 7) / 8;
  const int rb = value_codes_offset + (d * vb + 7) / 8;

  // Codebooks: sorted fp16 levels.
  std::vector<std::vector<float>> levels(num_groups + 1);
  for (int g = 0; g <= num_groups; ++g) {
    const int w = g < num_groups ? cfg.groups[g].first : vb;
    for (int i = 0; i < (1 << w); ++i) levels[g].push_back(RoundHalf(0.1f * normal(gen)));
    std::sort(levels[g].begin(), levels[g].end());
  }

  // The cache: codes per (head, token, slot / dim), fp16 norms.
  std::vector<uint8_t> kcode(static_cast<size_t>(kv) * tokens * d), vcode(kcode.size());
  std::vector<float> knorm(static_cast<size_t>(kv) * tokens * num_groups), vnorm(static_cast<size_t>(kv) * tokens);
  for (int h = 0; h < kv; ++h)
    for (long long t = 0; t < tokens; ++t) {
      for (int g = 0; g < num_groups; ++g) {
        knorm[(h * tokens + t) * num_groups + g] = RoundHalf(uniform(gen));
        for (int j = 0; j < cfg.groups[g].second; ++j)
          kcode[(h * tokens + t) * d + group_offset[g] + j] = static_cast<uint8_t>(gen() % (1u << cfg.groups[g].first));
      }
      vnorm[h * tokens + t] = RoundHalf(uniform(gen));
      for (int j = 0; j < d; ++j) vcode[(h * tokens + t) * d + j] = static_cast<uint8_t>(gen() % (1u << vb));
    }

  // Pages: head h's region at page_tokens x h x rb (all heads share the plan shape).
  const long long num_pages = (tokens + page_tokens - 1) / page_tokens;
  const size_t page_bytes = static_cast<size_t>(page_tokens) * kv * rb;
  std::vector<uint8_t> canon(num_pages * page_bytes, 0), frag(num_pages * page_bytes, 0);
  int code_words = 0;
  for (int g = 0; g < num_groups; ++g) code_words += cfg.groups[g].second / 16 * cfg.groups[g].first;
  code_words += d / 16 * vb;
  for (int h = 0; h < kv; ++h) {
    for (long long t = 0; t < tokens; ++t) {
      const size_t rec = (t / page_tokens) * page_bytes + static_cast<size_t>(page_tokens) * h * rb + (t % page_tokens) * rb;
      for (int g = 0; g < num_groups; ++g) {
        const uint16_t n = HalfBits(knorm[(h * tokens + t) * num_groups + g]);
        std::memcpy(&canon[rec + 2 * g], &n, 2);
        for (int j = 0; j < cfg.groups[g].second; ++j)
          SetBits(canon, rec + key_codes_offset, group_bit[g] + j * cfg.groups[g].first, cfg.groups[g].first,
                  kcode[(h * tokens + t) * d + group_offset[g] + j]);
      }
      const uint16_t n = HalfBits(vnorm[h * tokens + t]);
      std::memcpy(&canon[rec + 2 * num_groups], &n, 2);
      for (int j = 0; j < d; ++j) SetBits(canon, rec + value_codes_offset, j * vb, vb, vcode[(h * tokens + t) * d + j]);
    }
    for (long long t0 = 0; t0 < tokens; t0 += kFragmentBlockTokens) {
      const size_t block = (t0 / page_tokens) * page_bytes + static_cast<size_t>(page_tokens) * h * rb + (t0 % page_tokens) * rb;
      auto put = [&](int unit_base, int w, int lane, int m, int p, int code) {
        for (int b = 0; b < w; ++b) {
          if (((code >> b) & 1) == 0) continue;
          const FragmentBit fb = FragmentCodeBit(w, m, p, b);
          uint32_t word;
          const size_t at = block + FragmentWordOffset(unit_base, fb.word, lane);
          std::memcpy(&word, &frag[at], 4);
          word |= 1u << fb.bit;
          std::memcpy(&frag[at], &word, 4);
        }
      };
      int base = 0;
      for (int g = 0; g < num_groups; ++g) {
        const int w = cfg.groups[g].first;
        for (int s = 0; s < cfg.groups[g].second / 16; ++s, base += w)
          for (int lane = 0; lane < 32; ++lane)
            for (int m = 0; m < 4; ++m)
              for (int p = 0; p < 8; ++p) {
                const FragmentElement e = KeyFragmentElement(lane, m, p);
                const long long t = t0 + e.token;
                if (t < tokens) put(base, w, lane, m, p, kcode[(h * tokens + t) * d + group_offset[g] + 16 * s + e.index]);
              }
      }
      for (int j = 0; j < d / 16; ++j, base += vb)
        for (int lane = 0; lane < 32; ++lane)
          for (int m = 0; m < 4; ++m)
            for (int p = 0; p < 8; ++p) {
              const FragmentElement e = ValueFragmentElement(lane, m, p);
              const long long t = t0 + e.token;
              if (t < tokens) put(base, vb, lane, m, p, vcode[(h * tokens + t) * d + 16 * j + e.index]);
            }
      for (int tt = 0; tt < kFragmentBlockTokens && t0 + tt < tokens; ++tt) {
        for (int g = 0; g <= num_groups; ++g) {
          const float x = g < num_groups ? knorm[(h * tokens + t0 + tt) * num_groups + g] : vnorm[h * tokens + t0 + tt];
          const uint16_t n = HalfBits(x);
          std::memcpy(&frag[block + FragmentNormOffset(code_words, g, tt)], &n, 2);
        }
      }
    }
  }

  // Device plan (only what the attention kernels read).
  std::vector<int> bits_list;
  std::vector<const float*> level_ptrs;
  std::vector<float*> level_dev;
  for (int g = 0; g <= num_groups; ++g) level_dev.push_back(ToDevice(levels[g]));
  int key_bits_arr[kMaxGroups];
  const float* key_levels[kMaxGroups];
  for (int g = 0; g < num_groups; ++g) {
    key_bits_arr[g] = cfg.groups[g].first;
    key_levels[g] = levels[g].data();
  }
  const int table_bytes = AttendMmaTableBytes(key_bits_arr, num_groups, vb);
  std::vector<unsigned char> image(table_bytes);
  int table_offsets[kMaxGroups + 1];
  AttendMmaTableImage(key_bits_arr, key_levels, num_groups, vb, levels[num_groups].data(), image.data(), table_offsets);
  unsigned char* image_dev = ToDevice(image);
  std::vector<HeadPlanDevice> heads(kv);
  for (int h = 0; h < kv; ++h) {
    HeadPlanDevice& hp = heads[h];
    std::memset(&hp, 0, sizeof(hp));
    hp.head_dim = d;
    hp.num_groups = num_groups;
    for (int g = 0; g < num_groups; ++g) {
      hp.group_bits[g] = cfg.groups[g].first;
      hp.group_offset[g] = group_offset[g];
      hp.group_dim[g] = cfg.groups[g].second;
      hp.group_code_bit_offset[g] = group_bit[g];
      hp.centroids[g] = level_dev[g];
    }
    hp.value_bits = vb;
    hp.value_centroids = level_dev[num_groups];
    hp.key_norms_offset = 0;
    hp.value_norm_offset = 2 * num_groups;
    hp.key_codes_offset = key_codes_offset;
    hp.key_code_bits = key_bits;
    hp.value_codes_offset = value_codes_offset;
    hp.record_bytes = rb;
    hp.record_prefix = h * rb;
    hp.table_image = image_dev;
    hp.table_image_bytes = table_bytes;
    for (int i = 0; i <= kMaxGroups; ++i) hp.table_offset[i] = table_offsets[i];
  }
  HeadPlanDevice* heads_dev = ToDevice(heads);

  auto upload_pages = [&](const std::vector<uint8_t>& host, uint8_t** arena) {
    *arena = ToDevice(host);
    std::vector<uint8_t*> ptrs(num_pages);
    for (long long i = 0; i < num_pages; ++i) ptrs[i] = *arena + i * page_bytes;
    return ToDevice(ptrs);
  };
  uint8_t *canon_arena, *frag_arena;
  uint8_t** canon_pages = upload_pages(canon, &canon_arena);
  uint8_t** frag_pages = upload_pages(frag, &frag_arena);

  // Queries (rotated space), splits as the backend chooses them.
  std::vector<float> q(static_cast<size_t>(kv) * rows * d);
  for (float& x : q) x = 4.0f * normal(gen);
  float* q_dev = ToDevice(q);
  const long long tile = 128, tiles = (tokens + tile - 1) / tile;
  const long long blocks = std::max<long long>(1, (4LL * sm_count + kv - 1) / kv);
  long long splits = std::min<long long>({tiles, static_cast<long long>(kMaxSplits), blocks});
  const long long per_split = ((tiles + splits - 1) / splits) * tile;
  splits = std::max<long long>(1, (tokens + per_split - 1) / per_split);
  const size_t out_n = static_cast<size_t>(kv) * splits * rows * d, lse_n = static_cast<size_t>(kv) * splits * rows;
  float *out_a, *lse_a, *out_b, *lse_b;
  CHECK_CUDA(cudaMalloc(&out_a, out_n * 4));
  CHECK_CUDA(cudaMalloc(&out_b, out_n * 4));
  CHECK_CUDA(cudaMalloc(&lse_a, lse_n * 4));
  CHECK_CUDA(cudaMalloc(&lse_b, lse_n * 4));

  AttendParams p{};
  p.heads = heads_dev;
  p.num_kv_heads = kv;
  p.head_dim = d;
  p.rows = rows;
  p.q_len = 1;
  p.rotated = q_dev;
  p.causal = 0;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.token_begin = 0;
  p.token_end = tokens;
  p.num_splits = static_cast<int>(splits);
  p.tokens_per_split = per_split;
  p.max_record_bytes = rb;
  p.max_levels = 0;
  p.table_bytes = table_bytes;
  AttendParams pa = p, pb = p;
  pa.cache = {canon_pages, page_tokens};
  pa.partial_out = out_a;
  pa.partial_lse = lse_a;
  pb.cache = {frag_pages, page_tokens};
  pb.partial_out = out_b;
  pb.partial_lse = lse_b;

  int key_bits_list[kMaxGroups], key_dims[kMaxGroups];
  for (int g = 0; g < num_groups; ++g) {
    key_bits_list[g] = cfg.groups[g].first;
    key_dims[g] = cfg.groups[g].second;
  }
  const bool frag_ok = FragmentLayoutSupports(d, key_bits_list, key_dims, num_groups, vb, page_tokens) &&
                       AttendFragmentSupports(d, rows, rb);
  const bool mma_ok = AttendMmaSupports(d, rows, rb, table_bytes);
  if (mma_ok) CHECK_CUDA(LaunchAttendMma(pa, nullptr));
  if (frag_ok) CHECK_CUDA(LaunchAttendFragment(pb, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> oa(out_n), la(lse_n), ob(out_n), lb(lse_n);
  CHECK_CUDA(cudaMemcpy(oa.data(), out_a, out_n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(la.data(), lse_a, lse_n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(ob.data(), out_b, out_n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(lb.data(), lse_b, lse_n * 4, cudaMemcpyDeviceToHost));

  // fp64 reference of every split's partials.
  double err_a = 0, err_b = 0, lse_err_a = 0, lse_err_b = 0;
  std::vector<double> logit(per_split), out(d);
  for (int h = 0; h < kv; ++h)
    for (long long sp = 0; sp < splits; ++sp) {
      const long long b0 = sp * per_split, b1 = std::min(tokens, b0 + per_split);
      for (int row = 0; row < rows; ++row) {
        const float* qr = &q[(static_cast<size_t>(h) * rows + row) * d];
        double mx = -1e300;
        for (long long t = b0; t < b1; ++t) {
          double s = 0;
          for (int g = 0; g < num_groups; ++g) {
            double gs = 0;
            for (int j = 0; j < cfg.groups[g].second; ++j) {
              const int sl = group_offset[g] + j;
              gs += static_cast<double>(qr[sl]) * levels[g][kcode[(h * tokens + t) * d + sl]];
            }
            s += gs * knorm[(h * tokens + t) * num_groups + g];
          }
          logit[t - b0] = s * p.scale;
          mx = std::max(mx, logit[t - b0]);
        }
        double sum = 0;
        std::fill(out.begin(), out.end(), 0.0);
        for (long long t = b0; t < b1; ++t) {
          const double w = std::exp(logit[t - b0] - mx);
          sum += w;
          const double wn = w * vnorm[h * tokens + t];
          for (int j = 0; j < d; ++j) out[j] += wn * levels[num_groups][vcode[(h * tokens + t) * d + j]];
        }
        const size_t o = (static_cast<size_t>(h) * splits + sp) * rows + row;
        double scale_row = 1e-30;
        for (int j = 0; j < d; ++j) scale_row = std::max(scale_row, std::fabs(out[j] / sum));
        for (int j = 0; j < d; ++j) {
          const double ref = out[j] / sum;
          err_a = std::max(err_a, std::fabs(oa[o * d + j] - ref) / scale_row);
          err_b = std::max(err_b, std::fabs(ob[o * d + j] - ref) / scale_row);
        }
        const double lse = mx + std::log(sum);
        lse_err_a = std::max(lse_err_a, std::fabs(la[o] - lse));
        lse_err_b = std::max(lse_err_b, std::fabs(lb[o] - lse));
      }
    }

  const int iters = tokens >= 131072 ? 50 : 200;
  Timing ta{0, 0}, tb{0, 0};
  if (mma_ok) ta = Time([&] { return LaunchAttendMma(pa, nullptr); }, 5, iters);
  if (frag_ok) tb = Time([&] { return LaunchAttendFragment(pb, nullptr); }, 5, iters);
  const double bytes = static_cast<double>(tokens) * kv * rb;
  std::printf(
      "{\"name\": \"%s\", \"kv_heads\": %d, \"rows\": %d, \"head_dim\": %d, \"key_groups\": %d, \"value_bits\": %d, "
      "\"tokens\": %lld, \"record_bytes\": %d, \"splits\": %lld, \"packed_bytes\": %.0f, "
      "\"mma_us\": %.3f, \"mma_us_worst\": %.3f, \"fragment_us\": %.3f, \"fragment_us_worst\": %.3f, "
      "\"speedup\": %.3f, \"fragment_GBps\": %.1f, \"mma_max_rel_err\": %.3g, \"fragment_max_rel_err\": %.3g, "
      "\"mma_lse_err\": %.3g, \"fragment_lse_err\": %.3g, \"fragment_supported\": %d}\n",
      cfg.name, kv, rows, d, num_groups, vb, tokens, rb, splits, bytes, ta.best_us, ta.worst_us, tb.best_us,
      tb.worst_us, tb.best_us > 0 ? ta.best_us / tb.best_us : 0.0, tb.best_us > 0 ? bytes / tb.best_us / 1e3 : 0.0,
      err_a, err_b, lse_err_a, lse_err_b, frag_ok ? 1 : 0);
  std::fflush(stdout);

  for (float* x : level_dev) cudaFree(x);
  cudaFree(image_dev);
  cudaFree(heads_dev);
  cudaFree(canon_arena);
  cudaFree(frag_arena);
  cudaFree(canon_pages);
  cudaFree(frag_pages);
  cudaFree(q_dev);
  cudaFree(out_a);
  cudaFree(out_b);
  cudaFree(lse_a);
  cudaFree(lse_b);
}

}  // namespace
}  // namespace ropekv::kernels::cuda

int main(int argc, char** argv) {
  using ropekv::kernels::cuda::Config;
  int sm_count = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::vector<Config> configs;
  // Uniform K3V3 at 16/2 heads by context; odd lengths end in a partial block.
  for (long long t : {4096LL, 32768LL, 131072LL, 524288LL}) configs.push_back({"16/2 K3V3", 2, 8, 128, {{3, 128}}, 3, t});
  configs.push_back({"16/2 K3V3 partial block", 2, 8, 128, {{3, 128}}, 3, 4096 + 37});
  for (int b : {1, 2, 4})
    for (long long t : {131072LL, 524288LL}) {
      configs.push_back({b == 1 ? "16/2 K1V1" : b == 2 ? "16/2 K2V2" : "16/2 K4V4", 2, 8, 128, {{b, 128}}, b, t});
    }
  // RoPE-like mixed widths (3 groups of 16-dim multiples), 100-byte record.
  for (long long t : {32768LL, 131072LL, 524288LL})
    configs.push_back({"16/2 K2/3/4 V3", 2, 8, 128, {{2, 64}, {3, 32}, {4, 32}}, 3, t});
  configs.push_back({"32/8 K3V3", 8, 4, 128, {{3, 128}}, 3, 131072});
  configs.push_back({"32/8 K3V3", 8, 4, 128, {{3, 128}}, 3, 524288});
  configs.push_back({"32/2 K3V3 (two row tiles)", 2, 16, 128, {{3, 128}}, 3, 32768});
  configs.push_back({"16/2 d64 K3V3", 2, 8, 64, {{3, 64}}, 3, 131072});
  configs.push_back({"16/2 d256 K3V3", 2, 8, 256, {{3, 256}}, 3, 131072});
  for (const Config& c : configs) {
    if (quick && c.tokens > 32768) continue;
    ropekv::kernels::cuda::Run(c, sm_count);
  }
  return 0;
}
