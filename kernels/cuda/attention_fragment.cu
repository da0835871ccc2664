// Tensor-core decode attention over pages in the fragment layout
// (fragment_layout.cuh): the same contract as AttendMmaKernel
// (attention_mma.cu), partial outputs and lse per split in the rotated value
// space, merged by MergeKernel.
//
// What changes against attention_mma.cu is the decode. There every code is
// cut out of a record at a run-time bit offset (a funnel shift over two
// loaded words) and looked up in a shared-memory table; here the codes were
// put at store time where the MMA wants them, so a lane loads w words per
// unit (one per 32-bit bank, no conflict), recovers 4 nibble words with
// constant masks, and each nibble word becomes one A fragment through
// register lookup tables: prmt picks bytes with 3-bit selectors, so the
// low and the high bytes of 8 fp16 levels are two registers each, and
// 4 prmt give the 4 registers of a fragment of 8 codes. Width 4 looks up
// both halves of its 16 levels and selects by the nibbles' top bits. No
// shared-memory table and no run-time shift is left in the tile loop.
//
// A warp takes blocks of 64 tokens (4 m-tiles of 16) a step; logits^T =
// K Q^T and out^T = V^T P^T as in attention_mma.cu, the query split into
// fp16 hi + lo parts against the exact fp16 levels.
#include <cfloat>
#include <cuda_fp16.h>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/fragment_layout.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlock = kFragmentBlockTokens;
constexpr int kStages = 2;
// Blocks per SM the register allocation is held to: with one row tile, 4
// blocks (128 registers) fit without spills and lift occupancy from 3; with
// two, holding them to 128 spills, so they get what they need.
template <int NT>
constexpr int MinBlocks() { return NT == 1 ? 4 : 1; }
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ float HiPart(float x) { return __half2float(__float2half_rn(x)); }

// Register lookup table of one codebook: t[0], t[1] the low bytes of levels
// 0-7, t[2], t[3] their high bytes; t[4..7] the same for levels 8-15.
struct Lut {
  uint32_t t[8];
};

// The A fragment of nibble word n (8 codes of width W): registers a0..a3
// hold codes {0,1}, {2,3}, {4,5}, {6,7} as half2 levels.
template <int W>
__device__ __forceinline__ void Fragment(uint32_t n, const Lut& lut, uint32_t (&a)[4]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t sel = half == 0 ? n : n >> 16;  // prmt reads the selector's low 4 nibbles
    uint32_t lo, hi;
    if constexpr (W <= 3) {
      lo = __byte_perm(lut.t[0], lut.t[1], sel);
      hi = __byte_perm(lut.t[2], lut.t[3], sel);
    } else {
      const uint32_t idx = sel & 0x7777u;
      const uint32_t upper = __byte_perm(0u, 0xFFFFFFFFu, (sel >> 1) & 0x4444u);  // 0xFF where code >= 8
      lo = (__byte_perm(lut.t[4], lut.t[5], idx) & upper) | (__byte_perm(lut.t[0], lut.t[1], idx) & ~upper);
      hi = (__byte_perm(lut.t[6], lut.t[7], idx) & upper) | (__byte_perm(lut.t[2], lut.t[3], idx) & ~upper);
    }
    a[2 * half] = __byte_perm(lo, hi, 0x5140);
    a[2 * half + 1] = __byte_perm(lo, hi, 0x7362);
  }
}

// Logits of one key group: `words` points at the lane's word 0 of the
// group's first unit in the stage; qf at the group's first k-step.
template <int W, int NT>
__device__ __forceinline__ void KeyGroup(const uint32_t* words, int steps, const Lut& lut, const uint4* qf,
                                         float (&gacc)[4][NT][4]) {
  const int lane = threadIdx.x % 32;
  for (int s = 0; s < steps; ++s) {
    uint32_t u[W];
#pragma unroll
    for (int i = 0; i < W; ++i) u[i] = words[(s * W + i) * 32];
    uint4 q[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) q[nt] = qf[(s * NT + nt) * 32 + lane];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      uint32_t a[4];
      Fragment<W>(NibbleWord<W>(u, m), lut, a);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        Mma(gacc[m][nt], a, q[nt].x, q[nt].y);
        Mma(gacc[m][nt], a, q[nt].z, q[nt].w);
      }
    }
  }
}

template <int NT>
__device__ __forceinline__ void KeyGroupAnyWidth(int w, const uint32_t* words, int steps, const Lut& lut,
                                                 const uint4* qf, float (&gacc)[4][NT][4]) {
  // Widths are 1-4: plans with others are not given this layout.
  switch (w) {
    case 1: KeyGroup<1, NT>(words, steps, lut, qf, gacc); break;
    case 2: KeyGroup<2, NT>(words, steps, lut, qf, gacc); break;
    case 3: KeyGroup<3, NT>(words, steps, lut, qf, gacc); break;
    default: KeyGroup<4, NT>(words, steps, lut, qf, gacc); break;
  }
}

// out^T += V^T P^T over the block's 4 m-tiles (k-steps of 16 tokens).
template <int VB, int D, int NT>
__device__ __forceinline__ void ValueTiles(const uint32_t* words, const Lut& lut, const uint32_t (&pb)[4][NT][2],
                                           float (&acc)[D / 16][NT][4]) {
#pragma unroll
  for (int j = 0; j < D / 16; ++j) {
    uint32_t u[VB];
#pragma unroll
    for (int i = 0; i < VB; ++i) u[i] = words[(j * VB + i) * 32];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      uint32_t a[4];
      Fragment<VB>(NibbleWord<VB>(u, m), lut, a);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) Mma(acc[j][nt], a, pb[m][nt][0], pb[m][nt][1]);
    }
  }
}

template <int D, int NT>
__device__ __forceinline__ void ValueTilesAnyWidth(int vb, const uint32_t* words, const Lut& lut,
                                                   const uint32_t (&pb)[4][NT][2], float (&acc)[D / 16][NT][4]) {
  switch (vb) {
    case 1: ValueTiles<1, D, NT>(words, lut, pb, acc); break;
    case 2: ValueTiles<2, D, NT>(words, lut, pb, acc); break;
    case 3: ValueTiles<3, D, NT>(words, lut, pb, acc); break;
    default: ValueTiles<4, D, NT>(words, lut, pb, acc); break;
  }
}

// Bytes of a block that hold codes and norms (the rest of its
// 64 x record_bytes is padding of the canonical size).
__host__ __device__ constexpr int StageBytes(int max_record_bytes) { return kBlock * max_record_bytes; }

// Shared layout: query fragments [D / 16][NT][32] uint4 | per-warp stages
// (reused at the end to combine the warps).
__host__ __device__ constexpr size_t SharedBytes(int d, int nt, int max_record_bytes) {
  const size_t stages = static_cast<size_t>(kWarps) * kStages * StageBytes(max_record_bytes);
  const size_t combine = sizeof(float) * (2 * kWarps * 16 + static_cast<size_t>(kWarps) * 16 * d);
  return static_cast<size_t>(d / 16) * nt * 32 * 16 + (stages > combine ? stages : combine);
}

template <int D, int NT>
__device__ __forceinline__ void AttendFragmentBlock(const AttendParams& p, const int split, const int h) {
  constexpr int kRowsPerPass = 8 * NT;
  constexpr int kDimTiles = D / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, r = lane / 4, c = lane % 4;
  const HeadPlanDevice& hp = p.heads[h];
  const int rb = hp.record_bytes;
  const int num_groups = hp.num_groups, vbits = hp.value_bits;
  const unsigned page_tokens = static_cast<unsigned>(p.cache.page_tokens);
  const long long head_offset = static_cast<long long>(p.cache.page_tokens) * hp.record_prefix;

  uint4* qfrag = reinterpret_cast<uint4*>(smem);
  unsigned char* stages = smem + kDimTiles * NT * 32 * 16;
  const int stage_bytes = StageBytes(p.max_record_bytes);
  unsigned char* my_stages = stages + warp * kStages * stage_bytes;

  // Lookup tables (key groups, then values) and per group: width, k-steps,
  // first unit word.
  __shared__ Lut luts[kMaxGroups + 1];
  __shared__ int4 group_info[kMaxGroups];
  __shared__ int code_words_shared;
  if (tid <= num_groups) {
    const bool is_value = tid == num_groups;
    const int w = is_value ? vbits : hp.group_bits[tid];
    const float* levels = is_value ? hp.value_centroids : hp.centroids[tid];
    Lut lut = {};
    for (int v = 0; v < (1 << w); ++v) {
      const uint32_t bits = __half_as_ushort(__float2half_rn(levels[v]));
      const int reg = (v & 7) / 4 + (v >= 8 ? 4 : 0), shift = 8 * (v % 4);
      lut.t[reg] |= (bits & 0xFFu) << shift;
      lut.t[reg + 2] |= (bits >> 8) << shift;
    }
    luts[tid] = lut;
  }
  if (tid == 0) {
    int base = 0;
    for (int g = 0; g < num_groups; ++g) {
      const int steps = hp.group_dim[g] / 16;
      group_info[g] = make_int4(hp.group_bits[g], steps, base, 0);
      base += steps * hp.group_bits[g];
    }
    code_words_shared = base + kDimTiles * vbits;
  }
  __syncthreads();
  const int code_words = code_words_shared;
  const int value_unit_base = code_words - kDimTiles * vbits;
  const int used_chunks = (128 * code_words + 128 * (num_groups + 1)) / 16;
  const int norms_offset = 128 * code_words;

  const long long begin = p.token_begin + split * p.tokens_per_split;
  const long long end = min(p.token_end, begin + p.tokens_per_split);
  const long long first_tile = begin / kBlock * kBlock;
  const int num_tiles = static_cast<int>((end - first_tile + kBlock - 1) / kBlock);
  const int my_tiles_count = num_tiles > warp ? (num_tiles - warp + kWarps - 1) / kWarps : 0;

  unsigned tile_page = 0, tile_within = 0;
  auto restart_tiles = [&] {
    const unsigned t = static_cast<unsigned>(first_tile + static_cast<long long>(warp) * kBlock);
    tile_page = t / page_tokens;
    tile_within = t % page_tokens;
  };
  auto issue = [&](int k) {  // k-th block of this warp into stage k % kStages
    if (k < my_tiles_count) {
      unsigned char* dst = my_stages + (k % kStages) * stage_bytes;
      const uint8_t* src = p.cache.pages[tile_page] + head_offset + static_cast<long long>(tile_within) * rb;
      for (int i = lane; i < used_chunks; i += 32) CpAsync16(dst + 16 * i, src + 16 * i);
    }
    CpAsyncCommit();
    tile_within += kWarps * kBlock;
    while (tile_within >= page_tokens) {
      tile_within -= page_tokens;
      ++tile_page;
    }
  };

  WaitForPrerequisite();
  for (int row0 = 0; row0 < p.rows; row0 += kRowsPerPass) {
    __syncthreads();
    // Query fragments: k-step s (groups are whole k-steps, so slots
    // 16 s ..), n-tile nt, lane (r, c): row row0 + 8 nt + r, slots
    // 16 s + 2c + {0, 1} (b0) and + 8 (b1), hi and lo parts, pre-scaled
    // by scale x log2(e).
    {
      const float qscale = p.scale * kLog2e;
      for (int e = tid; e < kDimTiles * NT * 32; e += kThreads) {
        const int s = e / (NT * 32), nt = (e / 32) % NT, l = e % 32;
        const int row = row0 + nt * 8 + l / 4;
        const int first = s * 16 + 2 * (l % 4);
        float x[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int slot = first + (i & 1) + 8 * (i >> 1);
          x[i] = row < p.rows ? qscale * p.rotated[(static_cast<long long>(h) * p.rows + row) * D + slot] : 0.0f;
        }
        float hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) hi[i] = HiPart(x[i]);
        qfrag[e] = make_uint4(PackHalf2(hi[0], hi[1]), PackHalf2(hi[2], hi[3]), PackHalf2(x[0] - hi[0], x[1] - hi[1]),
                              PackHalf2(x[2] - hi[2], x[3] - hi[3]));
      }
    }
    __syncthreads();

    float acc[kDimTiles][NT][4];
#pragma unroll
    for (int j = 0; j < kDimTiles; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) acc[j][nt][0] = acc[j][nt][1] = acc[j][nt][2] = acc[j][nt][3] = 0.0f;
    float m[NT][2], l[NT][2];
    int q_i[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        m[nt][x] = -FLT_MAX;
        l[nt][x] = 0.0f;
        q_i[nt][x] = (row0 + nt * 8 + 2 * c + x) % p.q_len;
      }

    restart_tiles();
#pragma unroll
    for (int k = 0; k < kStages - 1; ++k) issue(k);
    for (int k = 0; k < my_tiles_count; ++k) {
      issue(k + kStages - 1);
      CpAsyncWait<kStages - 1>();
      __syncwarp();
      const unsigned char* stage = my_stages + (k % kStages) * stage_bytes;
      const uint32_t* words = reinterpret_cast<const uint32_t*>(stage) + lane;
      const long long t0 = first_tile + static_cast<long long>(warp + k * kWarps) * kBlock;

      // Logits^T (64 tokens x 8 NT rows): s[m][nt] holds tokens 16 m + r
      // (elements 0, 1) and 16 m + r + 8 (2, 3), rows 2c, 2c + 1.
      float s[4][NT][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
      int s_base = 0;
      for (int g = 0; g < num_groups; ++g) {
        const int4 info = group_info[g];
        float gacc[4][NT][4];
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) gacc[mt][nt][0] = gacc[mt][nt][1] = gacc[mt][nt][2] = gacc[mt][nt][3] = 0.0f;
        const Lut lut = luts[g];
        KeyGroupAnyWidth<NT>(info.x, words + info.z * 32, info.y, lut, qfrag + s_base * NT * 32, gacc);
        s_base += info.y;
        const uint4 nv = *reinterpret_cast<const uint4*>(stage + norms_offset + 128 * g + 16 * r);
        const uint32_t nw[4] = {nv.x, nv.y, nv.z, nv.w};  // word mt: tokens 16 mt + r (low), + 8 (high)
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          const float2 n = __half22float2(*reinterpret_cast<const __half2*>(&nw[mt]));
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            s[mt][nt][0] = fmaf(n.x, gacc[mt][nt][0], s[mt][nt][0]);
            s[mt][nt][1] = fmaf(n.x, gacc[mt][nt][1], s[mt][nt][1]);
            s[mt][nt][2] = fmaf(n.y, gacc[mt][nt][2], s[mt][nt][2]);
            s[mt][nt][3] = fmaf(n.y, gacc[mt][nt][3], s[mt][nt][3]);
          }
        }
      }

      // Online softmax in log2 units, masked tokens at -inf with a zero
      // value norm (as attention_mma.cu).
      const bool whole = t0 >= begin && t0 + kBlock <= end && (!p.causal || t0 + kBlock - 1 <= p.causal_offset);
      float vnorm[4][2];
      {
        const uint4 nv = *reinterpret_cast<const uint4*>(stage + norms_offset + 128 * num_groups + 16 * r);
        const uint32_t nw[4] = {nv.x, nv.y, nv.z, nv.w};
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          const float2 n = __half22float2(*reinterpret_cast<const __half2*>(&nw[mt]));
          vnorm[mt][0] = n.x;
          vnorm[mt][1] = n.y;
        }
      }
      if (!whole) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const long long t = t0 + 16 * mt + r + 8 * u;
            const bool in_range = t >= begin && t < end;
            if (!in_range) vnorm[mt][u] = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int x = 0; x < 2; ++x) {
                const bool visible = in_range && (!p.causal || t <= p.causal_offset + q_i[nt][x]);
                float& v = s[mt][nt][2 * u + x];
                v = visible ? v : -INFINITY;
              }
          }
      }
      bool grew = false;
      float alpha[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          float mx = -FLT_MAX;
#pragma unroll
          for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int u = 0; u < 2; ++u) mx = fmaxf(mx, s[mt][nt][2 * u + x]);
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
          const float new_m = fmaxf(m[nt][x], mx);
          alpha[nt][x] = Exp2(m[nt][x] - new_m);
          grew |= new_m > m[nt][x];
          m[nt][x] = new_m;
          float sum = 0.0f;
#pragma unroll
          for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              float& v = s[mt][nt][2 * u + x];
              v = Exp2(v - new_m);
              sum += v;
            }
          l[nt][x] = l[nt][x] * alpha[nt][x] + sum;
        }
      }
      if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int j = 0; j < kDimTiles; ++j)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            acc[j][nt][0] *= alpha[nt][0];
            acc[j][nt][1] *= alpha[nt][1];
            acc[j][nt][2] *= alpha[nt][0];
            acc[j][nt][3] *= alpha[nt][1];
          }
      }

      // P^T with the value norms folded in, transposed into B fragments.
      uint32_t pb[4][NT][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          pb[mt][nt][0] = Transpose8x8(PackHalf2(s[mt][nt][0] * vnorm[mt][0], s[mt][nt][1] * vnorm[mt][0]));
          pb[mt][nt][1] = Transpose8x8(PackHalf2(s[mt][nt][2] * vnorm[mt][1], s[mt][nt][3] * vnorm[mt][1]));
        }
      const Lut vlut = luts[num_groups];
      ValueTilesAnyWidth<D, NT>(vbits, words + value_unit_base * 32, vlut, pb, acc);
      __syncwarp();
    }
    CpAsyncWait<0>();

    __syncthreads();
    float* cm = reinterpret_cast<float*>(stages);
    float* cl = cm + kWarps * 16;
    float* co = cl + kWarps * 16;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        float lx = l[nt][x];
        lx += __shfl_xor_sync(0xffffffffu, lx, 4);
        lx += __shfl_xor_sync(0xffffffffu, lx, 8);
        lx += __shfl_xor_sync(0xffffffffu, lx, 16);
        const int row = nt * 8 + 2 * c + x;
        if (r == 0) {
          cm[warp * 16 + row] = m[nt][x];
          cl[warp * 16 + row] = lx;
        }
#pragma unroll
        for (int j = 0; j < kDimTiles; ++j) {
          co[(warp * 16 + row) * D + 16 * j + r] = acc[j][nt][x];
          co[(warp * 16 + row) * D + 16 * j + r + 8] = acc[j][nt][2 + x];
        }
      }
    }
    __syncthreads();
    const int nrows = min(kRowsPerPass, p.rows - row0);
    for (int e = tid; e < nrows * D; e += kThreads) {
      const int rr = e / D, dim = e % D;
      float mm = -FLT_MAX;
      for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, cm[w * 16 + rr]);
      float lsum = 0.0f, o = 0.0f;
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(cm[w * 16 + rr] - mm);
        lsum += f * cl[w * 16 + rr];
        o += f * co[(w * 16 + rr) * D + dim];
      }
      const long long out = (static_cast<long long>(h) * p.num_splits + split) * p.rows + row0 + rr;
      p.partial_out[out * D + dim] = lsum > 0.0f ? o / lsum : 0.0f;
      if (dim == 0) p.partial_lse[out] = lsum > 0.0f ? (mm + log2f(lsum)) / kLog2e : -INFINITY;
    }
  }
}

template <int D, int NT>
__global__ void __launch_bounds__(kThreads, MinBlocks<NT>()) AttendFragmentKernel(const __grid_constant__ AttendParams p) {
  AttendFragmentBlock<D, NT>(p, blockIdx.x, blockIdx.y);
}

template <int D, int NT>
__global__ void __launch_bounds__(kThreads, MinBlocks<NT>()) AttendFragmentBatchKernel(const AttendParams* items) {
  const AttendParams& p = items[blockIdx.z];
  if (static_cast<int>(blockIdx.x) >= p.num_splits) return;
  AttendFragmentBlock<D, NT>(p, blockIdx.x, blockIdx.y);
}

int RowTiles(int rows) { return rows > 8 ? 2 : 1; }

template <typename Kernel, typename Arg>
cudaError_t LaunchWithSharedMemory(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, Arg arg) {
  if (const cudaError_t err = AllowSharedMemory(kernel, smem); err != cudaSuccess) return err;
  return LaunchDependent(kernel, grid, dim3(kThreads), smem, stream, arg);
}

}  // namespace

bool FragmentLayoutSupports(int head_dim, const int* group_bits, const int* group_dim, int num_groups,
                            int value_bits, int page_tokens) {
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) return false;
  if (page_tokens % kFragmentBlockTokens != 0) return false;
  if (value_bits < 1 || value_bits > kFragmentMaxWidth) return false;
  for (int g = 0; g < num_groups; ++g) {
    if (group_bits[g] < 1 || group_bits[g] > kFragmentMaxWidth || group_dim[g] % 16 != 0) return false;
  }
  return true;
}

bool AttendFragmentSupports(int head_dim, int rows, int max_record_bytes) {
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) return false;
  return SharedBytes(head_dim, RowTiles(rows), max_record_bytes) <= 227 * 1024;
}

cudaError_t LaunchAttendFragment(const AttendParams& p, cudaStream_t stream) {
  const int nt = RowTiles(p.rows);
  const size_t smem = SharedBytes(p.head_dim, nt, p.max_record_bytes);
  const dim3 grid(p.num_splits, p.num_kv_heads);
  ROPEKV_DISPATCH_HEAD_DIM(p.head_dim, D, ROPEKV_DISPATCH_ROW_TILES(nt, NT, {
    return LaunchWithSharedMemory(AttendFragmentKernel<D, NT>, grid, smem, stream, p);
  }))
}

cudaError_t LaunchAttendFragmentBatch(const AttendParams* device_items, const AttendBatchShape& b,
                                      cudaStream_t stream) {
  const int nt = RowTiles(b.rows);
  const size_t smem = SharedBytes(b.head_dim, nt, b.max_record_bytes);
  const dim3 grid(b.max_splits, b.num_kv_heads, b.num_items);
  ROPEKV_DISPATCH_HEAD_DIM(b.head_dim, D, ROPEKV_DISPATCH_ROW_TILES(nt, NT, {
    return LaunchWithSharedMemory(AttendFragmentBatchKernel<D, NT>, grid, smem, stream, device_items);
  }))
}

}  // namespace ropekv::kernels::cuda
