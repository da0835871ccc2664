// The CPU reference backend: readable first, threaded across KV heads.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cpu/bit_packing.h"
#include "kernels/cpu/codec.h"
#include "kernels/record_runs.h"
#include "kernels/validation.h"
#include "planner/half.h"

namespace ropekv::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Runs fn(i) for i in [0, n) on up to `threads` threads when the work is
// worth a thread start (roughly > 1 ms), else inline.
template <typename Fn>
void ParallelFor(int n, int threads, int64_t work_per_item, Fn fn) {
  const int workers = std::min(n, threads);
  if (workers <= 1 || work_per_item * n < (1 << 18)) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      for (int i = w; i < n; i += workers) fn(i);
    });
  }
  for (std::thread& t : pool) t.join();
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options)
      : threads_(options.num_threads > 0
                     ? options.num_threads
                     : std::max(1u, std::thread::hardware_concurrency())) {}

  const char* name() const override { return "cpu"; }

  absl::Status EncodeLayer(const planner::LayerPlan& plan,
                           const PagedLayerView& cache, int64_t first_token,
                           const float* keys, const float* values,
                           int64_t num_tokens) override {
    if (absl::Status s = CheckView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckWriteRange(cache, first_token, num_tokens); !s.ok()) return s;
    if (num_tokens > 0 && (keys == nullptr || values == nullptr)) {
      return absl::InvalidArgumentError("keys/values: expected data, got null");
    }
    const planner::PageLayout layout = MakePageLayout(plan, cache.page_tokens);
    const int num_heads = static_cast<int>(plan.heads.size());
    const int d = plan.heads[0].head_dim;
    std::vector<absl::Status> status(num_heads);
    ParallelFor(num_heads, threads_, num_tokens * d * d,
                [&](int h) {
      const planner::HeadPlan& hp = plan.heads[h];
      for (int64_t i = 0; i < num_tokens; ++i) {
        uint8_t* rec = Record(cache, layout, hp, h, first_token + i);
        const int64_t row = (static_cast<int64_t>(h) * num_tokens + i) * d;
        // The message names the argument (keys or values), then the row.
        absl::Status s = EncodeKey(hp, keys + row, rec);
        const char* what = "keys";
        if (s.ok()) {
          s = EncodeValue(hp, values + row, rec);
          what = "values";
        }
        if (!s.ok()) {
          status[h] = absl::Status(s.code(), absl::StrCat(what, ": kv_head ", h, " token ",
                                                          first_token + i, ": ",
                                                          s.message()));
          return;
        }
      }
    });
    for (const absl::Status& s : status) {
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status DecodeLayer(const planner::LayerPlan& plan,
                           const PagedLayerView& cache, int64_t first_token,
                           int64_t num_tokens, float* keys,
                           float* values) override {
    if (absl::Status s = CheckView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckReadRange(cache, first_token, num_tokens); !s.ok()) return s;
    const planner::PageLayout layout = MakePageLayout(plan, cache.page_tokens);
    const int d = plan.heads[0].head_dim;
    for (size_t h = 0; h < plan.heads.size(); ++h) {
      const planner::HeadPlan& hp = plan.heads[h];
      for (int64_t i = 0; i < num_tokens; ++i) {
        const uint8_t* rec = Record(cache, layout, hp, h, first_token + i);
        const int64_t row = (static_cast<int64_t>(h) * num_tokens + i) * d;
        if (keys != nullptr) DecodeKey(hp, rec, keys + row);
        if (values != nullptr) DecodeValue(hp, rec, values + row);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Attend(const planner::LayerPlan& plan, const PagedLayerView& cache,
                      const AttentionParams& p) override {
    absl::StatusOr<int64_t> checked = CheckAttention(plan, cache, p);
    if (!checked.ok()) return checked.status();
    const int64_t end = *checked;
    const planner::PageLayout layout = MakePageLayout(plan, cache.page_tokens);
    const int num_kv = static_cast<int>(plan.heads.size());
    const int d = plan.heads[0].head_dim;
    ParallelFor(num_kv, threads_, (end - p.token_begin) * d * 4, [&](int h) {
      AttendHead(plan.heads[h], h, num_kv, cache, layout, p, p.token_begin, end);
    });
    return absl::OkStatus();
  }

  absl::Status AttendDense(int num_kv, int d, const DenseKvView& kv,
                           const AttentionParams& p) override {
    if (num_kv < 1 || d < 1 || p.q_len < 1 || p.num_q_heads < 1 ||
        p.num_q_heads % num_kv != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dense attention: expected num_q_heads (", p.num_q_heads,
          ") a positive multiple of num_kv_heads (", num_kv, ") and q_len >= 1"));
    }
    if (kv.num_tokens < 0 || kv.first_slot < 0 ||
        kv.first_slot + kv.num_tokens > kv.capacity ||
        (kv.num_tokens > 0 && (kv.keys == nullptr || kv.values == nullptr))) {
      return absl::InvalidArgumentError("dense attention: view outside its buffers");
    }
    if (p.queries == nullptr || p.out == nullptr || p.lse == nullptr) {
      return absl::InvalidArgumentError("queries/out/lse: expected buffers");
    }
    const int group = p.num_q_heads / num_kv;
    std::vector<float> k(d), v(d), acc(d);
    for (int qh = 0; qh < p.num_q_heads; ++qh) {
      const int h = qh / group;
      for (int i = 0; i < p.q_len; ++i) {
        const float* q = p.queries + (static_cast<int64_t>(qh) * p.q_len + i) * d;
        float m = kNegInf, l = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < kv.num_tokens; ++j) {
          if (p.causal && kv.first_position + j > p.causal_offset + i) break;
          const int64_t row = (static_cast<int64_t>(h) * kv.capacity + kv.first_slot + j) * d;
          float logit = 0;
          for (int c = 0; c < d; ++c) logit += q[c] * planner::HalfToFloat(kv.keys[row + c]);
          logit *= p.scale;
          if (logit > m) {
            const float r = std::exp(m - logit);
            l *= r;
            for (float& a : acc) a *= r;
            m = logit;
          }
          const float w = std::exp(logit - m);
          l += w;
          for (int c = 0; c < d; ++c) acc[c] += w * planner::HalfToFloat(kv.values[row + c]);
        }
        float* out = p.out + (static_cast<int64_t>(qh) * p.q_len + i) * d;
        float* lse = p.lse + static_cast<int64_t>(qh) * p.q_len + i;
        if (l == 0) {
          std::fill(out, out + d, 0.0f);
          *lse = kNegInf;
        } else {
          for (int c = 0; c < d; ++c) out[c] = acc[c] / l;
          *lse = m + std::log(l);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint8_t*> AllocateArena(int64_t bytes) override {
    // 256-byte aligned; untouched pages cost no physical memory.
    void* memory = std::aligned_alloc(256, static_cast<size_t>((bytes + 255) / 256 * 256));
    if (memory == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot reserve ", bytes, " bytes of host memory"));
    }
    return static_cast<uint8_t*>(memory);
  }

  void FreeArena(uint8_t* arena) override { std::free(arena); }

  absl::Status ReadRecords(const planner::LayerPlan& plan, const PagedLayerView& cache,
                           int64_t first, int64_t n, uint8_t* out) override {
    if (absl::Status s = CheckView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckReadRange(cache, first, n); !s.ok()) return s;
    ForEachRecordRun(plan, cache, first, n, [&](const uint8_t* src, int64_t bytes) {
      std::memcpy(out, src, bytes);
      out += bytes;
    });
    return absl::OkStatus();
  }

  absl::Status WriteRecords(const planner::LayerPlan& plan, const PagedLayerView& cache,
                            int64_t first, int64_t n, const uint8_t* records) override {
    if (absl::Status s = CheckView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckWriteRange(cache, first, n); !s.ok()) return s;
    if (absl::Status s = CheckRecords(plan, records, n); !s.ok()) return s;
    ForEachRecordRun(plan, cache, first, n, [&](uint8_t* dst, int64_t bytes) {
      std::memcpy(dst, records, bytes);
      records += bytes;
    });
    return absl::OkStatus();
  }

  absl::Status MergeStates(const MergeParams& p) override {
    if (p.partial_out.size() != p.partial_lse.size() || p.partial_out.empty()) {
      return absl::InvalidArgumentError(
          "partial_out/partial_lse: expected the same, non-zero count");
    }
    if (p.rows < 0 || p.head_dim < 1 || p.out == nullptr || p.lse == nullptr) {
      return absl::InvalidArgumentError("rows/head_dim/out/lse: bad arguments");
    }
    const size_t parts = p.partial_out.size();
    for (int64_t r = 0; r < p.rows; ++r) {
      float m = kNegInf;
      for (size_t c = 0; c < parts; ++c) m = std::max(m, p.partial_lse[c][r]);
      float* o = p.out + r * p.head_dim;
      std::fill(o, o + p.head_dim, 0.0f);
      if (m == kNegInf) {  // no part saw a token
        p.lse[r] = kNegInf;
        continue;
      }
      double total = 0;
      for (size_t c = 0; c < parts; ++c) {
        const double w = std::exp(static_cast<double>(p.partial_lse[c][r]) - m);
        if (w == 0) continue;
        total += w;
        const float* src = p.partial_out[c] + r * p.head_dim;
        for (int j = 0; j < p.head_dim; ++j) o[j] += static_cast<float>(w * src[j]);
      }
      for (int j = 0; j < p.head_dim; ++j) o[j] = static_cast<float>(o[j] / total);
      p.lse[r] = static_cast<float>(m + std::log(total));
    }
    return absl::OkStatus();
  }

 private:
  static uint8_t* Record(const PagedLayerView& cache,
                         const planner::PageLayout& layout,
                         const planner::HeadPlan& hp, size_t head, int64_t token) {
    uint8_t* page = cache.pages[token / cache.page_tokens];
    return page + layout.head_offsets[head] +
           (token % cache.page_tokens) * hp.layout.record_bytes;
  }

  // One KV head: rotate its group's queries once, then stream the tokens,
  // sharing each unpacked token among all query rows of the group.
  static void AttendHead(const planner::HeadPlan& hp, int h, int num_kv,
                         const PagedLayerView& cache,
                         const planner::PageLayout& layout,
                         const AttentionParams& p, int64_t begin, int64_t end) {
    const int d = hp.head_dim;
    const int num_q = AttentionRowsPerHead(p, num_kv);  // group * q_len
    const int group = num_q / p.q_len;
    std::vector<float> q_rot(static_cast<size_t>(num_q) * d);
    for (int g = 0; g < group; ++g) {
      for (int i = 0; i < p.q_len; ++i) {
        const int qh = h * group + g;
        RotateQuery(hp, p.queries + (static_cast<int64_t>(qh) * p.q_len + i) * d,
                    q_rot.data() + (static_cast<size_t>(g) * p.q_len + i) * d);
      }
    }
    std::vector<float> m(num_q, kNegInf), l(num_q, 0.0f);
    std::vector<float> acc(static_cast<size_t>(num_q) * d, 0.0f);
    std::vector<float> key_levels(d), value_rot(d), group_norms(hp.key_groups.size());
    uint8_t codes[planner::kMaxHeadDim];
    for (int64_t t = begin; t < end; ++t) {
      // Rows that see this token: with a causal mask, query i sees t when
      // t <= causal_offset + i.
      const int first_i =
          p.causal ? static_cast<int>(std::clamp<int64_t>(t - p.causal_offset, 0, p.q_len))
                   : 0;
      if (first_i >= p.q_len) continue;
      const uint8_t* rec = Record(cache, layout, hp, h, t);
      const uint8_t* stream = rec + hp.layout.key_codes_offset;
      for (size_t g = 0; g < hp.key_groups.size(); ++g) {
        const planner::KeyGroupPlan& grp = hp.key_groups[g];
        group_norms[g] = planner::HalfToFloat(static_cast<uint16_t>(
            rec[hp.layout.key_norms_offset + 2 * g] |
            (rec[hp.layout.key_norms_offset + 2 * g + 1] << 8)));
        UnpackBits(stream, grp.code_bit_offset, grp.dim, grp.bits, codes);
        for (int j = 0; j < grp.dim; ++j) {
          key_levels[grp.offset + j] = grp.codebook.centroids[codes[j]];
        }
      }
      const float vnorm = planner::HalfToFloat(static_cast<uint16_t>(
          rec[hp.layout.value_norm_offset] | (rec[hp.layout.value_norm_offset + 1] << 8)));
      UnpackBits(rec + hp.layout.value_codes_offset, 0, d, hp.value_bits, codes);
      for (int j = 0; j < d; ++j) {
        value_rot[j] = vnorm * hp.value_codebook.centroids[codes[j]];
      }
      for (int g = 0; g < group; ++g) {
        for (int i = first_i; i < p.q_len; ++i) {
          const int row = g * p.q_len + i;
          const float* q = q_rot.data() + static_cast<size_t>(row) * d;
          float logit = 0;
          for (size_t gi = 0; gi < hp.key_groups.size(); ++gi) {
            const planner::KeyGroupPlan& grp = hp.key_groups[gi];
            float s = 0;
            for (int j = grp.offset; j < grp.offset + grp.dim; ++j) {
              s += q[j] * key_levels[j];
            }
            logit += group_norms[gi] * s;
          }
          logit *= p.scale;
          // Online softmax: rescale the running sums when the max moves.
          float* a = acc.data() + static_cast<size_t>(row) * d;
          if (logit > m[row]) {
            const float r = std::exp(m[row] - logit);
            l[row] *= r;
            for (int j = 0; j < d; ++j) a[j] *= r;
            m[row] = logit;
          }
          const float w = std::exp(logit - m[row]);
          l[row] += w;
          for (int j = 0; j < d; ++j) a[j] += w * value_rot[j];
        }
      }
    }
    // Un-rotate once: out = R_v^T (acc / l).
    for (int g = 0; g < group; ++g) {
      for (int i = 0; i < p.q_len; ++i) {
        const int row = g * p.q_len + i;
        const int qh = h * group + g;
        float* out = p.out + (static_cast<int64_t>(qh) * p.q_len + i) * d;
        float* lse = p.lse + static_cast<int64_t>(qh) * p.q_len + i;
        if (l[row] == 0) {
          std::fill(out, out + d, 0.0f);
          *lse = kNegInf;
          continue;
        }
        const float* a = acc.data() + static_cast<size_t>(row) * d;
        const double inv = 1.0 / l[row];
        for (int j = 0; j < d; ++j) {
          double s = 0;
          for (int k = 0; k < d; ++k) {
            s += static_cast<double>(hp.value_rotation[static_cast<size_t>(k) * d + j]) * a[k];
          }
          out[j] = static_cast<float>(s * inv);
        }
        *lse = m[row] + std::log(l[row]);
      }
    }
  }

  // Query rows one KV head serves: group size x q_len.
  static int AttentionRowsPerHead(const AttentionParams& p, int num_kv) {
    return p.num_q_heads / num_kv * p.q_len;
  }

  int threads_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace ropekv::kernels
