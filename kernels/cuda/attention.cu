// Fused decode attention over the paged packed cache (split-T flash
// decoding). Never materialises K or V: each block copies a tile of packed
// records into shared memory, computes logits against the rotated queries
// of every query row of its KV head (thread per token), then accumulates
// values in the rotated space (thread per dimension). Splits are merged by
// lse in a second kernel, which also un-rotates the values once.
#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "kernels/cuda/device_common.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kThreads = 128;   // = tokens per tile
constexpr int kRowChunk = 16;   // query rows per pass
constexpr int kDimsPerThread = kMaxHeadDim / kThreads;
constexpr int kMergeThreads = 1024;
constexpr int kMergeParts = 8;  // threads per output dimension in the merge (split the sums over splits)

__device__ __forceinline__ void RotateQueriesBlock(const RotateQueryParams& p, const int h, const int r) {
  __shared__ float x[kMaxHeadDim];
  const int tid = threadIdx.x, d = p.head_dim;
  const HeadPlanDevice& hp = p.heads[h];
  const int rows = p.group * p.q_len;
  const int g = r / p.q_len, i = r % p.q_len;
  AllowDependentLaunch();  // the attention kernel may set up its tables meanwhile
  const float* q = p.queries + ((static_cast<long long>(h) * p.group + g) * p.q_len + i) * d;
  for (int j = tid; j < d; j += blockDim.x) x[j] = q[hp.permutation[j]];
  __syncthreads();
  for (int j = tid; j < d; j += blockDim.x) {
    const int grp = GroupOf(hp, j);
    const int off = hp.group_offset[grp], dim = hp.group_dim[grp];
    // Row j - off of R is column j - off of its transpose: the threads of
    // a warp load consecutive floats.
    const float* column = hp.rotation_t[grp] + (j - off);
    float s = 0.0f;
    for (int k = 0; k < dim; ++k) s = fmaf(column[static_cast<long long>(k) * dim], x[off + k], s);
    p.rotated[(static_cast<long long>(h) * rows + r) * d + j] = s;
  }
}

__global__ void RotateQueriesKernel(RotateQueryParams p) { RotateQueriesBlock(p, blockIdx.x, blockIdx.y); }
__global__ void RotateQueriesBatchKernel(const RotateQueryParams* items) {
  RotateQueriesBlock(items[blockIdx.z], blockIdx.x, blockIdx.y);
}

// R: query rows per pass (4, 8 or 16) and DPT: value dimensions per thread
// (head_dim / 128 rounded up), so small groups and heads do no padded work.
template <int R, int DPT>
__global__ void __launch_bounds__(kThreads) AttendKernel(AttendParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int split = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int d = p.head_dim;
  const HeadPlanDevice& hp = p.heads[h];
  const int rb = hp.record_bytes;
  // Shared layout: records [kThreads * rb] | q [kRowChunk * d] |
  // s [kRowChunk * kThreads] | levels (key groups, then values) | row state.
  unsigned char* records = smem;
  float* q_s = reinterpret_cast<float*>(smem + ((kThreads * rb + 15) / 16) * 16);
  float* s_s = q_s + kRowChunk * d;
  float* levels = s_s + kRowChunk * kThreads;
  int level_base[kMaxGroups];
  int total_levels = 0;
  for (int g = 0; g < hp.num_groups; ++g) {
    level_base[g] = total_levels;
    total_levels += 1 << hp.group_bits[g];
  }
  float* vlevels = levels + total_levels;
  float* vnorm_s = vlevels + (1 << hp.value_bits);  // [kThreads]
  float* m_s = vnorm_s + kThreads;
  float* l_s = m_s + kRowChunk;
  float* alpha_s = l_s + kRowChunk;
  for (int g = 0; g < hp.num_groups; ++g) {
    for (int c = tid; c < (1 << hp.group_bits[g]); c += kThreads) levels[level_base[g] + c] = hp.centroids[g][c];
  }
  for (int c = tid; c < (1 << hp.value_bits); c += kThreads) vlevels[c] = hp.value_centroids[c];

  const long long begin = p.token_begin + split * p.tokens_per_split;
  const long long end = min(p.token_end, begin + p.tokens_per_split);
  const int warp = tid / 32, lane = tid % 32;

  for (int row0 = 0; row0 < p.rows; row0 += R) {
    const int nrows = min(R, p.rows - row0);
    __syncthreads();
    for (int idx = tid; idx < nrows * d; idx += kThreads) {
      q_s[idx] = p.rotated[(static_cast<long long>(h) * p.rows + row0) * d + idx];
    }
    if (tid < R) {
      m_s[tid] = -FLT_MAX;  // finite: exp(m - new_m) stays well-defined
      l_s[tid] = 0.0f;
    }
    float acc[R][DPT];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int k = 0; k < DPT; ++k) acc[r][k] = 0.0f;
    }
    for (long long tile = begin; tile < end; tile += kThreads) {
      const int ntile = static_cast<int>(min(static_cast<long long>(kThreads), end - tile));
      __syncthreads();
      {
        // A tile inside one page is one contiguous run of records: copy it
        // with 16-byte loads when aligned, else record by record.
        const uint8_t* first = RecordAt(p.cache, hp, tile);
        const bool one_page = tile / p.cache.page_tokens == (tile + ntile - 1) / p.cache.page_tokens;
        const int bytes = ntile * rb;
        if (one_page && (reinterpret_cast<uintptr_t>(first) & 15) == 0 && (bytes & 15) == 0) {
          const uint4* src = reinterpret_cast<const uint4*>(first);
          uint4* dst = reinterpret_cast<uint4*>(records);
          for (int idx = tid; idx < bytes / 16; idx += kThreads) dst[idx] = __ldg(src + idx);
        } else if (one_page) {
          for (int idx = tid; idx < bytes; idx += kThreads) records[idx] = first[idx];
        } else {
          for (int idx = tid; idx < bytes; idx += kThreads) {
            const int t = idx / rb;
            records[idx] = RecordAt(p.cache, hp, tile + t)[idx - t * rb];
          }
        }
      }
      __syncthreads();
      // Logits: thread per token.
      {
        float logit[R];
#pragma unroll
        for (int r = 0; r < R; ++r) logit[r] = 0.0f;
        if (tid < ntile) {
          const unsigned char* rec = records + tid * rb;
          vnorm_s[tid] = LoadHalf(rec + hp.value_norm_offset);
          for (int g = 0; g < hp.num_groups; ++g) {
            float part[R];
#pragma unroll
            for (int r = 0; r < R; ++r) part[r] = 0.0f;
            const int off = hp.group_offset[g], bits = hp.group_bits[g];
            const float* lv = levels + level_base[g];
            for (int j = 0; j < hp.group_dim[g]; ++j) {
              const float c = lv[ReadCode(rec + hp.key_codes_offset,
                                          hp.group_code_bit_offset[g] + j * bits, bits)];
#pragma unroll
              for (int r = 0; r < R; ++r) {
                if (r < nrows) part[r] = fmaf(q_s[r * d + off + j], c, part[r]);
              }
            }
            const float n = LoadHalf(rec + hp.key_norms_offset + 2 * g);
#pragma unroll
            for (int r = 0; r < R; ++r) logit[r] = fmaf(n, part[r], logit[r]);
          }
        }
        const long long tok = tile + tid;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= nrows) break;
          const int i = (row0 + r) % p.q_len;
          const bool visible = tid < ntile && (!p.causal || tok <= p.causal_offset + i);
          s_s[r * kThreads + tid] = visible ? logit[r] * p.scale : -INFINITY;
        }
      }
      __syncthreads();
      // Online softmax per row: warp w owns rows w, w+4, ...
      for (int r = warp; r < nrows; r += kThreads / 32) {
        float mx = -INFINITY;
        for (int t = lane; t < kThreads; t += 32) mx = fmaxf(mx, s_s[r * kThreads + t]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float new_m = fmaxf(m_s[r], mx);
        float sum = 0.0f;
        for (int t = lane; t < kThreads; t += 32) {
          const float e = s_s[r * kThreads + t] == -INFINITY ? 0.0f : __expf(s_s[r * kThreads + t] - new_m);
          s_s[r * kThreads + t] = e;
          sum += e;
        }
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
          const float a = __expf(m_s[r] - new_m);
          alpha_s[r] = a;
          l_s[r] = l_s[r] * a + sum;
          m_s[r] = new_m;
        }
      }
      __syncthreads();
      // Values: thread per dimension, in the rotated space.
#pragma unroll
      for (int k = 0; k < DPT; ++k) {
        const int dim = tid + k * kThreads;
        if (dim >= d) break;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][k] *= (r < nrows ? alpha_s[r] : 1.0f);
        for (int t = 0; t < ntile; ++t) {
          const unsigned char* rec = records + t * rb;
          const float v = vnorm_s[t] *
                          vlevels[ReadCode(rec + hp.value_codes_offset, dim * hp.value_bits, hp.value_bits)];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if (r < nrows) acc[r][k] = fmaf(s_s[r * kThreads + t], v, acc[r][k]);
          }
        }
      }
    }
    __syncthreads();
    const long long base = (static_cast<long long>(h) * p.num_splits + split) * p.rows + row0;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= nrows) break;
      const float l = l_s[r];
#pragma unroll
      for (int k = 0; k < DPT; ++k) {
        const int dim = tid + k * kThreads;
        if (dim < d) p.partial_out[(base + r) * d + dim] = l > 0.0f ? acc[r][k] / l : 0.0f;
      }
      if (tid == 0) p.partial_lse[base + r] = l > 0.0f ? m_s[r] + logf(l) : -INFINITY;
    }
  }
}

// One block per (KV head, row): the split weights are computed in
// parallel into shared memory, then each thread sums its dimensions over
// the splits and un-rotates; loops are unrolled so that independent loads
// overlap instead of waiting one by one.
__device__ __forceinline__ void MergeBlock(const MergeParams& p, const int h, const int r) {
  __shared__ float o[kMaxHeadDim];
  __shared__ float w_s[kMaxSplits];
  __shared__ float partial[kMergeThreads];
  __shared__ float red[kMergeThreads / 32];
  __shared__ float max_lse, weight_sum;
  const int tid = threadIdx.x, d = p.head_dim;
  const HeadPlanDevice& hp = p.heads[h];
  const int rows = p.group * p.q_len;
  WaitForPrerequisite();  // the attention kernel's partial results
  const float* lse_in = p.partial_lse + static_cast<long long>(h) * p.num_splits * rows + r;
  float m = -INFINITY;
  for (int s = tid; s < p.num_splits; s += blockDim.x) m = fmaxf(m, lse_in[static_cast<long long>(s) * rows]);
  for (int o2 = 16; o2 > 0; o2 /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o2));
  if (tid % 32 == 0) red[tid / 32] = m;
  __syncthreads();
  if (tid == 0) {
    float mm = red[0];
    for (int w = 1; w < (blockDim.x + 31) / 32; ++w) mm = fmaxf(mm, red[w]);
    max_lse = mm;
  }
  __syncthreads();
  const float mx = max_lse;
  float wsum = 0.0f;
  for (int s = tid; s < p.num_splits; s += blockDim.x) {
    const float w = mx == -INFINITY ? 0.0f : __expf(lse_in[static_cast<long long>(s) * rows] - mx);
    w_s[s] = w;
    wsum += w;
  }
  for (int o2 = 16; o2 > 0; o2 /= 2) wsum += __shfl_xor_sync(0xffffffffu, wsum, o2);
  __syncthreads();  // everyone has read red[] before it is reused
  if (tid % 32 == 0) red[tid / 32] = wsum;
  __syncthreads();
  if (tid == 0) {
    float t = 0.0f;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) t += red[w];
    weight_sum = t;
  }
  __syncthreads();
  const int g = r / p.q_len, i = r % p.q_len;
  const long long out_row = (static_cast<long long>(h) * p.group + g) * p.q_len + i;
  if (mx == -INFINITY) {
    for (int j = tid; j < d; j += blockDim.x) p.out[out_row * d + j] = 0.0f;
    if (tid == 0) p.lse[out_row] = -INFINITY;
    return;
  }
  // Each dimension is served by `parts` threads that split the sums over
  // the splits and over the rotation's rows, then add up in shared memory.
  const int parts = max(1, min(kMergeParts, kMergeThreads / d)), part = tid / d, j = tid % d;
  const float* out_in = p.partial_out + (static_cast<long long>(h) * p.num_splits * rows + r) * d;
  const long long split_stride = static_cast<long long>(rows) * d;
  if (part < parts) {
    float s = 0.0f;
#pragma unroll 8
    for (int sp = part; sp < p.num_splits; sp += parts) s = fmaf(w_s[sp], out_in[sp * split_stride + j], s);
    partial[part * d + j] = s;
  }
  __syncthreads();
  if (tid < d) {
    float s = 0.0f;
    for (int q = 0; q < parts; ++q) s += partial[q * d + tid];
    o[tid] = s / weight_sum;
  }
  __syncthreads();
  // out = R_v^T o: entry (j, k) of R_v^T is R_v[k][j].
  if (part < parts) {
    const float* rot = hp.value_rotation;
    float s = 0.0f;
#pragma unroll 8
    for (int k = part; k < d; k += parts) s = fmaf(rot[static_cast<long long>(k) * d + j], o[k], s);
    partial[part * d + j] = s;
  }
  __syncthreads();
  if (tid < d) {
    float s = 0.0f;
    for (int q = 0; q < parts; ++q) s += partial[q * d + tid];
    p.out[out_row * d + tid] = s;
  }
  if (tid == 0) p.lse[out_row] = max_lse + logf(weight_sum);
}

__global__ void __launch_bounds__(kMergeThreads) MergeKernel(MergeParams p) {
  MergeBlock(p, blockIdx.x, blockIdx.y);
}
__global__ void __launch_bounds__(kMergeThreads) MergeBatchKernel(const MergeParams* items) {
  MergeBlock(items[blockIdx.z], blockIdx.x, blockIdx.y);
}

size_t AttendSharedBytes(const AttendParams& p, int max_record_bytes, int max_levels) {
  return ((kThreads * max_record_bytes + 15) / 16) * 16 +
         sizeof(float) * (kRowChunk * p.head_dim + kRowChunk * kThreads + max_levels + kThreads +
                          3 * kRowChunk);
}

}  // namespace

cudaError_t LaunchRotateQueries(const RotateQueryParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_kv_heads, p.group * p.q_len);
  RotateQueriesKernel<<<grid, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchAttend(const AttendParams& p, cudaStream_t stream) {
  const size_t smem = AttendSharedBytes(p, p.max_record_bytes, p.max_levels);
  const dim3 grid(p.num_splits, p.num_kv_heads);
  auto launch = [&](auto kernel) {
    if (const cudaError_t err = AllowSharedMemory(kernel, smem); err != cudaSuccess) return err;
    kernel<<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  };
  auto by_rows = [&](auto dpt) {
    constexpr int D = decltype(dpt)::value;
    if (p.rows <= 4) return launch(AttendKernel<4, D>);
    if (p.rows <= 8) return launch(AttendKernel<8, D>);
    return launch(AttendKernel<kRowChunk, D>);
  };
  if (p.head_dim <= kThreads) return by_rows(std::integral_constant<int, 1>());
  if (p.head_dim <= 2 * kThreads) return by_rows(std::integral_constant<int, 2>());
  return by_rows(std::integral_constant<int, kDimsPerThread>());
}

cudaError_t LaunchRotateQueriesBatch(const RotateQueryParams* device_items, const AttendBatchShape& b,
                                    cudaStream_t stream) {
  const dim3 grid(b.num_kv_heads, b.rows, b.num_items);
  RotateQueriesBatchKernel<<<grid, 128, 0, stream>>>(device_items);
  return cudaGetLastError();
}

cudaError_t LaunchMergeBatch(const MergeParams* device_items, const AttendBatchShape& b, cudaStream_t stream) {
  const dim3 grid(b.num_kv_heads, b.rows, b.num_items);
  const int parts = std::max(1, std::min(kMergeParts, kMergeThreads / b.head_dim));
  return LaunchDependent(MergeBatchKernel, grid, dim3((parts * b.head_dim + 31) / 32 * 32), 0, stream, device_items);
}

cudaError_t LaunchMerge(const MergeParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_kv_heads, p.group * p.q_len);
  // Up to kMergeParts threads per dimension (blockDim = parts x head_dim).
  const int parts = std::max(1, std::min(kMergeParts, kMergeThreads / p.head_dim));
  return LaunchDependent(MergeKernel, grid, dim3((parts * p.head_dim + 31) / 32 * 32), 0, stream, p);
}

}  // namespace ropekv::kernels::cuda
