// Tensor-core decode attention over the paged packed cache.
//
// The same contract as AttendKernel (attention.cu): partial outputs and lse
// per split in the rotated value space, merged by MergeKernel. The
// difference is how the work is done: each warp decodes a tile of 16 tokens
// straight from the packed records into fp16 MMA fragments (one table
// lookup per pair of coordinates) and computes logits and the value sum
// with mma.sync m16n8k16 in fp32 accumulators, flash-attention style.
// Nothing is materialised in global memory; tiles are prefetched with
// cp.async a few tiles ahead.
//
// Index freedom used here: the dot products do not care in which order
// their terms are summed, so the MMA's k index (key slots) and n index
// (value dimensions) are assigned to make each thread's coordinates
// contiguous in the code stream:
//   keys:   lane (g = lane/4, c = lane%4) handles slots [c*D/4, (c+1)*D/4)
//           of token g of each 8-token half tile; k-step s, register b0 holds
//           slots c*D/4 + 4s + {0,1}, b1 holds + {2,3};
//   values: n-tile j, column g is dimension g*D/8 + j.
// Queries are split into fp16 hi + lo parts (two MMAs) so that rounding the
// query costs nothing measurable; decoded keys are centroid x group norm
// rounded to fp16, values are centroids in fp16 with the value norm folded
// into the probabilities.
#include <algorithm>
#include <cfloat>
#include <cuda_fp16.h>

#include "kernels/cuda/device_common.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 16;    // tokens per warp step (one MMA k-step of P.V)
constexpr int kStages = 3;   // tiles in flight per warp
constexpr int kRows = 16;    // query rows per pass (MMA m)
constexpr int kPairLutMaxBits = 5;  // widths above this decode one code at a time
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void Mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ __half2 AsHalf2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }
__device__ __forceinline__ uint32_t AsU32(__half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }

// 32 bits of the stream starting at bit `bit` (the buffer has a word of
// padding after its last byte).
__device__ __forceinline__ uint32_t BitsAt(const uint32_t* words, int bit) {
  const int w = bit >> 5;
  return __funnelshift_r(words[w], words[w + 1], bit & 31);
}

// Value tables: pairs of fp16 levels for narrow widths, single fp16
// levels otherwise. Key tables carry each level as fp16 hi + lo (their sum
// is the fp32 level to ~2^-22), so that keys reach the logits at fp32
// accuracy: one word per level for wide groups, two (hi pair, lo pair) per
// pair of levels for narrow ones.
constexpr int kKeyPairLutMaxBits = 4;
__host__ __device__ __forceinline__ int LutWords(int bits) {
  return bits <= kPairLutMaxBits ? 1 << (2 * bits) : (1 << bits) / 2;
}
__host__ __device__ __forceinline__ int KeyLutWords(int bits) {
  return bits <= kKeyPairLutMaxBits ? 2 << (2 * bits) : 1 << bits;
}

__device__ void FillLut(uint32_t* lut, const float* centroids, int bits, int tid) {
  const int levels = 1 << bits;
  if (bits <= kPairLutMaxBits) {
    for (int i = tid; i < levels * levels; i += kThreads) {
      lut[i] = PackHalf2(centroids[i & (levels - 1)], centroids[i >> bits]);
    }
  } else {
    for (int i = tid; i < levels / 2; i += kThreads) lut[i] = PackHalf2(centroids[2 * i], centroids[2 * i + 1]);
  }
}

__device__ __forceinline__ float HiPart(float x) { return __half2float(__float2half_rn(x)); }

__device__ void FillKeyLut(uint32_t* lut, const float* centroids, int bits, int tid) {
  const int levels = 1 << bits;
  if (bits <= kKeyPairLutMaxBits) {
    for (int i = tid; i < levels * levels; i += kThreads) {
      const float a = centroids[i & (levels - 1)], b = centroids[i >> bits];
      const float ah = HiPart(a), bh = HiPart(b);
      lut[2 * i] = PackHalf2(ah, bh);
      lut[2 * i + 1] = PackHalf2(a - ah, b - bh);
    }
  } else {
    for (int i = tid; i < levels; i += kThreads) {
      const float a = centroids[i], ah = HiPart(a);
      lut[i] = PackHalf2(ah, a - ah);
    }
  }
}

// Two consecutive codes of `bits` bits each (the first in the low bits) as
// a pair of fp16 levels.
__device__ __forceinline__ uint32_t PairLevels(const uint32_t* lut, uint32_t v, int bits) {
  if (bits <= kPairLutMaxBits) return lut[v & ((1u << (2 * bits)) - 1u)];
  const __half* single = reinterpret_cast<const __half*>(lut);
  const uint32_t mask = (1u << bits) - 1u;
  return AsU32(__halves2half2(single[v & mask], single[(v >> bits) & mask]));
}

// The same for keys, as hi and lo pairs.
__device__ __forceinline__ uint2 KeyPairLevels(const uint32_t* lut, uint32_t v, int bits) {
  if (bits <= kKeyPairLutMaxBits) return reinterpret_cast<const uint2*>(lut)[v & ((1u << (2 * bits)) - 1u)];
  const uint32_t mask = (1u << bits) - 1u;
  const uint32_t a = lut[v & mask], b = lut[(v >> bits) & mask];
  return make_uint2(__byte_perm(a, b, 0x5410), __byte_perm(a, b, 0x7632));
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Per-lane key pair descriptor: bit offset in the key code stream (12 bits),
// width (4 bits), group (3 bits), lookup table word offset (13 bits).
__device__ __forceinline__ uint32_t KeyPairInfo(const HeadPlanDevice& hp, int slot, const int* lut_base) {
  const int g = GroupOf(hp, slot);
  const int bit = hp.group_code_bit_offset[g] + (slot - hp.group_offset[g]) * hp.group_bits[g];
  return static_cast<uint32_t>(bit) | (static_cast<uint32_t>(hp.group_bits[g]) << 12) |
         (static_cast<uint32_t>(g) << 16) | (static_cast<uint32_t>(lut_base[g]) << 19);
}

// One block: one split of one KV head of one item.
template <int D>
__device__ __forceinline__ void AttendMmaBlock(const AttendParams& p, const int split, const int h) {
  constexpr int kSteps = D / 16;      // MMA k-steps over the key slots
  constexpr int kPairs = D / 8;       // key pairs per lane per token
  constexpr int kDimTiles = D / 8;    // MMA n-tiles over value dimensions
  extern __shared__ __align__(16) uint32_t smem_words[];
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const HeadPlanDevice& hp = p.heads[h];
  const int rb = hp.record_bytes;
  // Record fields in registers: the barriers in the tile loop would
  // otherwise make the compiler reload them from global memory.
  const int key_codes_offset = hp.key_codes_offset, key_norms_offset = hp.key_norms_offset;
  const int value_codes_offset = hp.value_codes_offset, value_norm_offset = hp.value_norm_offset;
  const unsigned page_tokens = static_cast<unsigned>(p.cache.page_tokens);
  const long long head_offset = static_cast<long long>(p.cache.page_tokens) * hp.record_prefix;

  // Shared layout: lookup tables | query fragments | per-warp tile buffers
  // (reused at the end to combine the warps).
  uint32_t* lut = smem_words;
  uint32_t* qfrag = lut + (p.lut_words + 3) / 4 * 4;  // 16-byte aligned  // [kSteps][32 lanes][8]
  uint32_t* kinfo_s = qfrag + kSteps * 32 * 8;  // [4][kPairs]
  unsigned char* tiles = reinterpret_cast<unsigned char*>(kinfo_s + 4 * kPairs);
  const int stage_bytes = (kTile * p.max_record_bytes + 16 + 15) / 16 * 16;
  unsigned char* my_tiles = tiles + warp * kStages * stage_bytes;

  int lut_base[kMaxGroups + 1];
  {
    int at = 0;
    for (int k = 0; k < hp.num_groups; ++k) {
      lut_base[k] = at;
      FillKeyLut(lut + at, hp.centroids[k], hp.group_bits[k], tid);
      at += KeyLutWords(hp.group_bits[k]);
    }
    lut_base[kMaxGroups] = at;
    FillLut(lut + at, hp.value_centroids, hp.value_bits, tid);
  }
  const uint32_t* vlut = lut + lut_base[kMaxGroups];
  const int vbits = hp.value_bits;
  // Key pair descriptors per lane class c (kept in shared memory: in
  // registers they cost more than the loads).
  for (int e = tid; e < 4 * kPairs; e += kThreads) {
    kinfo_s[e] = KeyPairInfo(hp, (e / kPairs) * (D / 4) + 2 * (e % kPairs), lut_base);
  }
  const uint32_t* kinfo = kinfo_s + c * kPairs;

  const long long begin = p.token_begin + split * p.tokens_per_split;
  const long long end = min(p.token_end, begin + p.tokens_per_split);
  const long long first_tile = begin / kTile * kTile;
  const int num_tiles = static_cast<int>((end - first_tile + kTile - 1) / kTile);
  const int my_tiles_count = num_tiles > warp ? (num_tiles - warp + kWarps - 1) / kWarps : 0;
  const bool even_records = (rb & 1) == 0;

  auto issue = [&](int k) {  // k-th tile of this warp into stage k % kStages
    if (k < my_tiles_count) {
      const long long t0 = first_tile + static_cast<long long>(warp + k * kWarps) * kTile;
      // Token positions fit in 32 bits (checked on the host): 32-bit division.
      const unsigned t = static_cast<unsigned>(t0);
      const uint8_t* src = p.cache.pages[t / page_tokens] + head_offset + (t % page_tokens) * rb;
      unsigned char* dst = my_tiles + (k % kStages) * stage_bytes;
      for (int i = lane; i < rb; i += 32) CpAsync16(dst + 16 * i, src + 16 * i);  // 16 * rb bytes
    }
    CpAsyncCommit();
  };

  for (int row0 = 0; row0 < p.rows; row0 += kRows) {
    __syncthreads();  // previous pass done with qfrag and the tile buffers
    for (int e = tid; e < kSteps * 32; e += kThreads) {
      const int s = e / 32, l = e % 32, lg = l / 4, lc = l % 4;
      const int slot = lc * (D / 4) + 4 * s;
      uint32_t* f = qfrag + e * 8;
#pragma unroll
      for (int half = 0; half < 2; ++half) {    // a0/a1: slots +0,1; a2/a3: +2,3
#pragma unroll
        for (int upper = 0; upper < 2; ++upper) {  // row g, row g + 8
          const int r = row0 + lg + 8 * upper;
          float x0 = 0.0f, x1 = 0.0f;
          if (r < p.rows) {
            const float* q = p.rotated + (static_cast<long long>(h) * p.rows + r) * D + slot + 2 * half;
            x0 = q[0];
            x1 = q[1];
          }
          const float h0 = __half2float(__float2half_rn(x0)), h1 = __half2float(__float2half_rn(x1));
          f[2 * half + upper] = PackHalf2(h0, h1);
          f[4 + 2 * half + upper] = PackHalf2(x0 - h0, x1 - h1);
        }
      }
    }
    __syncthreads();

    float acc[kDimTiles][4];
#pragma unroll
    for (int j = 0; j < kDimTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    float m[2] = {-FLT_MAX, -FLT_MAX};  // running max (log2 units) of rows g, g + 8
    float l[2] = {0.0f, 0.0f};          // this lane's part of the running sum
    const int q_i[2] = {(row0 + g) % p.q_len, (row0 + g + 8) % p.q_len};

#pragma unroll
    for (int k = 0; k < kStages - 1; ++k) issue(k);
    for (int k = 0; k < my_tiles_count; ++k) {
      issue(k + kStages - 1);
      CpAsyncWait<kStages - 1>();
      __syncwarp();
      const uint32_t* words = reinterpret_cast<const uint32_t*>(my_tiles + (k % kStages) * stage_bytes);
      const long long t0 = first_tile + static_cast<long long>(warp + k * kWarps) * kTile;

      // Logits S (16 rows x 16 tokens) = Q K^T.
      float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
      for (int st = 0; st < kSteps; ++st) {
        const uint4* fq = reinterpret_cast<const uint4*>(qfrag + (st * 32 + lane) * 8);
        const uint4 hi4 = fq[0], lo4 = fq[1];
        const uint32_t q_hi[4] = {hi4.x, hi4.y, hi4.z, hi4.w}, q_lo[4] = {lo4.x, lo4.y, lo4.z, lo4.w};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int tok = nt * 8 + g;
          const int rec_bit = tok * rb * 8;
          const int code_bit = rec_bit + key_codes_offset * 8;
          uint32_t b[2], b_lo[2];
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const uint32_t info = kinfo[2 * st + x];
            const int bits = (info >> 12) & 15, grp = (info >> 16) & 7;
            const uint32_t v = BitsAt(words, code_bit + static_cast<int>(info & 4095));
            const uint2 levels = KeyPairLevels(lut + (info >> 19), v, bits);
            const int norm_byte = tok * rb + key_norms_offset + 2 * grp;
            const uint32_t nb = even_records
                                    ? reinterpret_cast<const unsigned short*>(words)[norm_byte >> 1]
                                    : BitsAt(words, norm_byte * 8) & 0xFFFFu;
            const __half2 n2 = AsHalf2(nb | (nb << 16));
            // key = level x norm as hi + lo: the fma recovers the rounding
            // error of the product, the second fma adds the level's lo part.
            const __half2 hi = __hmul2(AsHalf2(levels.x), n2);
            const __half2 lo = __hfma2(AsHalf2(levels.y), n2, __hfma2(AsHalf2(levels.x), n2, __hneg2(hi)));
            b[x] = AsU32(hi);
            b_lo[x] = AsU32(lo);
          }
          Mma(s[nt], q_hi, b[0], b[1]);
          Mma(s[nt], q_lo, b[0], b[1]);
          Mma(s[nt], q_hi, b_lo[0], b_lo[1]);
        }
      }

      // Online softmax in log2 units; masked or padded tokens get -inf.
      float vnorm[2][2];
      bool visible[2][2][2];  // [nt][column][upper]
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const int tok = nt * 8 + 2 * c + x;
          const long long t = t0 + tok;
          const bool in_range = t >= begin && t < end;
          const int nbyte = tok * rb + value_norm_offset;
          const uint32_t nb = even_records ? reinterpret_cast<const unsigned short*>(words)[nbyte >> 1]
                                           : BitsAt(words, nbyte * 8) & 0xFFFFu;
          vnorm[nt][x] = in_range ? __half2float(__ushort_as_half(static_cast<unsigned short>(nb))) : 0.0f;
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            visible[nt][x][u] = in_range && (!p.causal || t <= p.causal_offset + q_i[u]);
          }
        }
      }
      float alpha[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float mx = -FLT_MAX;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            float& v = s[nt][2 * u + x];
            v = visible[nt][x][u] ? v * p.scale * kLog2e : -INFINITY;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float new_m = fmaxf(m[u], mx);
        alpha[u] = exp2f(m[u] - new_m);
        m[u] = new_m;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            float& v = s[nt][2 * u + x];
            v = exp2f(v - new_m);  // exp2(-inf) = 0 for masked tokens
            sum += v;
          }
        }
        l[u] = l[u] * alpha[u] + sum;
      }
#pragma unroll
      for (int j = 0; j < kDimTiles; ++j) {
        acc[j][0] *= alpha[0];
        acc[j][1] *= alpha[0];
        acc[j][2] *= alpha[1];
        acc[j][3] *= alpha[1];
      }
      // P with the value norms folded in, as the A operand (rows x tokens).
      uint32_t pa[4];
      pa[0] = PackHalf2(s[0][0] * vnorm[0][0], s[0][1] * vnorm[0][1]);
      pa[1] = PackHalf2(s[0][2] * vnorm[0][0], s[0][3] * vnorm[0][1]);
      pa[2] = PackHalf2(s[1][0] * vnorm[1][0], s[1][1] * vnorm[1][1]);
      pa[3] = PackHalf2(s[1][2] * vnorm[1][0], s[1][3] * vnorm[1][1]);

      // Value sum: acc (rows x dims) += P V. B operand: tokens 2c, 2c+1
      // (b0) and 2c+8, 2c+9 (b1) at dimension g*D/8 + j.
      const int toks[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
      int vbit[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        vbit[x] = (toks[x] * rb + value_codes_offset) * 8 + g * (D / 8) * vbits;
      }
#pragma unroll
      for (int j = 0; j < kDimTiles; j += 2) {
        uint32_t pair[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) pair[x] = PairLevels(vlut, BitsAt(words, vbit[x] + j * vbits), vbits);
        // pair[x] holds dims j, j+1 of token x; regroup by dimension.
        const uint32_t b0j = __byte_perm(pair[0], pair[1], 0x5410), b1j = __byte_perm(pair[2], pair[3], 0x5410);
        const uint32_t b0n = __byte_perm(pair[0], pair[1], 0x7632), b1n = __byte_perm(pair[2], pair[3], 0x7632);
        Mma(acc[j], pa, b0j, b1j);
        Mma(acc[j + 1], pa, b0n, b1n);
      }
      __syncwarp();  // the stage is refilled by the next issue
    }
    CpAsyncWait<0>();

    // Combine the four warps' states through shared memory (the tile
    // buffers are free now), then write this split's rows.
    __syncthreads();
    float* cm = reinterpret_cast<float*>(tiles);  // [kWarps][kRows] max
    float* cl = cm + kWarps * kRows;               // [kWarps][kRows] sum
    float* co = cl + kWarps * kRows;               // [kWarps][kRows][D]
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      float lu = l[u];
      lu += __shfl_xor_sync(0xffffffffu, lu, 1);
      lu += __shfl_xor_sync(0xffffffffu, lu, 2);
      if (c == 0) {
        cm[warp * kRows + g + 8 * u] = m[u];
        cl[warp * kRows + g + 8 * u] = lu;
      }
#pragma unroll
      for (int j = 0; j < kDimTiles; ++j) {
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const int dim = (2 * c + x) * (D / 8) + j;
          co[(warp * kRows + g + 8 * u) * D + dim] = acc[j][2 * u + x];
        }
      }
    }
    __syncthreads();
    const int nrows = min(kRows, p.rows - row0);
    for (int e = tid; e < nrows * D; e += kThreads) {
      const int r = e / D, dim = e % D;
      float mm = -FLT_MAX;
      for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, cm[w * kRows + r]);
      float lsum = 0.0f, o = 0.0f;
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(cm[w * kRows + r] - mm);
        lsum += f * cl[w * kRows + r];
        o += f * co[(w * kRows + r) * D + dim];
      }
      const long long out = (static_cast<long long>(h) * p.num_splits + split) * p.rows + row0 + r;
      p.partial_out[out * D + dim] = lsum > 0.0f ? o / lsum : 0.0f;
      if (dim == 0) p.partial_lse[out] = lsum > 0.0f ? (mm + log2f(lsum)) / kLog2e : -INFINITY;
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, D <= 128 ? 3 : 1) AttendMmaKernel(AttendParams p) {
  AttendMmaBlock<D>(p, blockIdx.x, blockIdx.y);
}

// A batch of items of one shape (head_dim, KV heads, rows); blockIdx.z is
// the item, and items with fewer splits than the grid leave the rest idle.
template <int D>
__global__ void __launch_bounds__(kThreads, D <= 128 ? 3 : 1) AttendMmaBatchKernel(const AttendParams* items) {
  const AttendParams p = items[blockIdx.z];
  if (static_cast<int>(blockIdx.x) >= p.num_splits) return;
  AttendMmaBlock<D>(p, blockIdx.x, blockIdx.y);
}

}  // namespace

int AttendMmaLutWords(int bits, bool key) { return key ? KeyLutWords(bits) : LutWords(bits); }

bool AttendMmaSupports(int head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

size_t AttendMmaSharedBytes(int head_dim, int max_record_bytes, int lut_words) {
  const size_t stage = (kTile * max_record_bytes + 16 + 15) / 16 * 16;
  const size_t tiles = static_cast<size_t>(kWarps) * kStages * stage;
  const size_t combine = sizeof(float) * (2 * kWarps * kRows + static_cast<size_t>(kWarps) * kRows * head_dim);
  return 4 * (static_cast<size_t>(lut_words + 3) / 4 * 4 + (head_dim / 16) * 32 * 8 + 4 * (head_dim / 8)) +
         std::max(tiles, combine);
}

namespace {

// Launches kernel<<<grid, kThreads, smem>>>(arg), opting in to more than
// 48 KB of dynamic shared memory when needed (Hopper: up to 227 KB).
template <typename Kernel, typename Arg>
cudaError_t LaunchWithSharedMemory(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, Arg arg) {
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, smem, stream>>>(arg);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchAttendMmaBatch(const AttendParams* device_items, const AttendBatchShape& b,
                                 cudaStream_t stream) {
  const size_t smem = AttendMmaSharedBytes(b.head_dim, b.max_record_bytes, b.lut_words);
  const dim3 grid(b.max_splits, b.num_kv_heads, b.num_items);
  switch (b.head_dim) {
    case 64: return LaunchWithSharedMemory(AttendMmaBatchKernel<64>, grid, smem, stream, device_items);
    case 128: return LaunchWithSharedMemory(AttendMmaBatchKernel<128>, grid, smem, stream, device_items);
    case 256: return LaunchWithSharedMemory(AttendMmaBatchKernel<256>, grid, smem, stream, device_items);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchAttendMma(const AttendParams& p, cudaStream_t stream) {
  const size_t smem = AttendMmaSharedBytes(p.head_dim, p.max_record_bytes, p.lut_words);
  const dim3 grid(p.num_splits, p.num_kv_heads);
  switch (p.head_dim) {
    case 64: return LaunchWithSharedMemory(AttendMmaKernel<64>, grid, smem, stream, p);
    case 128: return LaunchWithSharedMemory(AttendMmaKernel<128>, grid, smem, stream, p);
    case 256: return LaunchWithSharedMemory(AttendMmaKernel<256>, grid, smem, stream, p);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace ropekv::kernels::cuda
