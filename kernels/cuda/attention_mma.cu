// Tensor-core decode attention over the paged packed cache.
//
// The same contract as AttendKernel (attention.cu): partial outputs and lse
// per split in the rotated value space, merged by MergeKernel. Each warp
// decodes tiles of 32 tokens straight from the packed records into fp16 MMA
// fragments and computes logits and the value sum with mma.sync m16n8k16 in
// fp32 accumulators, flash-attention style. Nothing is materialised in
// global memory; tiles are prefetched with cp.async a tile ahead. Figures
// and what limits them: kernels/bench/RESULTS.md.
//
// Roles are chosen so that no MMA lane is wasted on GQA groups of 8 and the
// decode costs a few instructions per code:
//   logits^T (tokens x rows) = K (tokens x slots) . Q^T (slots x rows):
//     A = decoded keys (M = 16 tokens), B = rotated queries (N = 8 rows),
//     kept in shared memory as ready-made fragments;
//   out^T (dims x rows) = V^T (dims x tokens) . P^T (tokens x rows):
//     A = decoded values (M = 16 dimensions), B = probabilities, which are
//     the logits' accumulators transposed in registers (movmatrix).
// Key slots are walked group by group (a group = one code width), each
// group padded to whole 16-slot k-steps with zero query entries; the
// width is a template argument inside a group, so bit offsets and masks
// are constants, and each lane's 4 slots of a k-step are 4 consecutive
// codes: one 32-bit window holds all four, and one table lookup gives the
// levels of two (a ready fragment register). A group's partial logits are
// scaled by its fp16 norm in fp32. Index freedom used: the order of a dot
// product's terms is free,
// so the MMA k index (key slots) and m index (value dimensions) are
// assigned to keep each lane's codes contiguous in the stream:
//   keys:   k-step s of group g covers slots f_s .. f_s + 15; lane
//           (r = lane/4, c = lane%4) holds slots f_s + 4c .. 4c+3 (A: k =
//           2c, 2c+1 -> +0, +1; k = 2c+8, 2c+9 -> +2, +3) of tokens r, r+8;
//   values: m-tile j, row r is dimension r*D/8 + 2j, row r+8 is r*D/8+2j+1.
// Every codebook level is an fp16 value (planner/codebook.h), so levels
// enter the MMAs exactly; keys reach the logits at fp32 accuracy by
// splitting the query into fp16 hi + lo parts, two MMAs per k-step. Values
// use the same exact levels, with the value norm folded into P (fp16).
#include <algorithm>
#include <cfloat>
#include <cstring>
#include <cuda_fp16.h>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/dispatch.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kHalfTile = kPageTokenMultiple;  // tokens per MMA m-tile; tiles never straddle a page
constexpr int kTile = 32;      // tokens per warp step
constexpr float kLog2e = 1.4426950408889634f;

// Decode tables, at offsets that are multiples of their size (placed
// largest first) so that an index can be OR-ed into the offset. Every
// codebook level is an fp16 value (planner/codebook.h), so a level is read
// exactly as one fp16 MMA input. Widths 1-4 have pair tables: entry e
// (two codes, the first in its low bits) holds both levels as a half2,
// which is one A- or B-fragment register; widths 5-8 have one fp16 level
// per entry (a width-5 pair table would take 4 KB, and with it the fourth
// block of an SM). Keys and values share the layout. Narrow widths are kept in
// several copies (entry e of copy k at e x copies + k, lane l reads copy
// l % copies): with only 4-64 entries the 32 lanes of a lookup would
// otherwise collide on a few banks. 32 copies (one per lane, no conflict)
// for widths 1-2; 16 for width 3 (at most a 2-way conflict, in 4 KB rather
// than 8); one beyond.
// LevelShift: log2 of the entry stride, i.e. where an index must sit in
// the window so that masking it yields its byte offset.
__host__ __device__ constexpr bool PairTable(int w) { return w <= 4; }
__host__ __device__ constexpr int CopyShift(int w) { return w <= 2 ? 5 : w == 3 ? 4 : 0; }
__host__ __device__ constexpr int LevelShift(int w) { return PairTable(w) ? 2 + CopyShift(w) : 1; }
__host__ __device__ constexpr int LevelTableBytes(int w) {
  return (PairTable(w) ? 1 << (2 * w) : 1 << w) << LevelShift(w);
}
// Byte offset of lane's copy within a table of width w.
__device__ __forceinline__ uint32_t CopyOffset(int w, int lane) {
  return PairTable(w) ? 4u * static_cast<uint32_t>(lane & ((1 << CopyShift(w)) - 1)) : 0u;
}

// Bytes of one head's tables (the placement leaves no gaps).
__host__ __device__ inline int TableBytes(const int* key_bits, int num_groups, int value_bits) {
  int bytes = LevelTableBytes(value_bits);
  for (int g = 0; g < num_groups; ++g) bytes += LevelTableBytes(key_bits[g]);
  return bytes;
}

// Places the tables largest first: offsets[g] for key group g,
// offsets[kMaxGroups] for the values.
inline void PlaceTables(const int* key_bits, int num_groups, int value_bits, int* offsets) {
  int at = 0;
  for (int size = 1 << 14; size >= 4; size >>= 1) {
    for (int g = 0; g < num_groups; ++g) {
      if (LevelTableBytes(key_bits[g]) == size) {
        offsets[g] = at;
        at += size;
      }
    }
    if (LevelTableBytes(value_bits) == size) {
      offsets[kMaxGroups] = at;
      at += size;
    }
  }
}

__host__ __device__ constexpr int MaxSteps(int d) { return d / 16 + kMaxGroups; }
constexpr int kStages = 2;  // cp.async stages per warp

// The 8x8 fp16 matrix held as one register per lane, transposed.
__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// 2^x by the hardware approximation (relative error about 2^-22; 2^-inf
// = 0; results below 2^-126 flush to 0, which a softmax weight may).
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

__device__ __forceinline__ uint32_t Lds32(const unsigned char* base, uint32_t offset) {
  return *reinterpret_cast<const uint32_t*>(base + offset);
}

// Fills the table of one codebook (2^bits levels, fp16 values), on the host.
void FillLevelTable(unsigned char* table, const float* centroids, int bits) {
  const int levels = 1 << bits;
  auto half_bits = [](float x) { return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(x))); };
  if (PairTable(bits)) {
    const int copies = 1 << CopyShift(bits);
    for (int i = 0; i < levels * levels * copies; ++i) {
      const int e = i / copies;
      const uint32_t v = half_bits(centroids[e & (levels - 1)]) | (half_bits(centroids[e >> bits]) << 16);
      std::memcpy(table + 4 * i, &v, 4);
    }
  } else {
    for (int i = 0; i < levels; ++i) {
      const uint16_t v = static_cast<uint16_t>(half_bits(centroids[i]));
      std::memcpy(table + 2 * i, &v, 2);
    }
  }
}

__device__ __forceinline__ uint32_t Lds16(const unsigned char* base, uint32_t offset) {
  return *reinterpret_cast<const unsigned short*>(base + offset);
}

// One k-step of a key group: the lane's 4 consecutive codes of tokens r,
// r+8 (m-tile 0) and r+16, r+24 (m-tile 1) become A fragments; two MMAs
// per n-tile (the query's fp16 hi and lo parts against the exact levels)
// accumulate into gacc. Token u's window is bits sh[u].. of ptr[u][o],
// ptr[u][o + 1]; o is the same for every lane, so it is added as a
// uniform offset.
template <int W, int NT>
__device__ __forceinline__ void KeyStep(const uint32_t* const (&ptr)[4], const int (&sh)[4], int o,
                                        const unsigned char* tables, uint32_t base, const uint4* qf,
                                        float (&gacc)[2][NT][4]) {
  constexpr int kShift = LevelShift(W);
  const int lane = threadIdx.x % 32;
  uint4 q[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) q[nt] = qf[nt * 32 + lane];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    uint32_t a[4];  // {token r: slots 0,1}, {r+8: 0,1}, {r: 2,3}, {r+8: 2,3}
#pragma unroll
    for (int uu = 0; uu < 2; ++uu) {
      const int u = 2 * mt + uu;
      if constexpr (PairTable(W)) {  // one window holds the 4 codes; a lookup gives 2 levels
        constexpr uint32_t kMask = ((1u << (2 * W)) - 1u) << kShift;
        const uint32_t x = __funnelshift_r(ptr[u][o], ptr[u][o + 1], sh[u]);
        a[uu] = Lds32(tables, (x & kMask) | base);
        a[uu + 2] = Lds32(tables, ((x >> (2 * W)) & kMask) | base);
      } else {
        constexpr uint32_t kMask = ((1u << W) - 1u) << kShift;
        uint32_t e[4];
        const uint32_t x0 = __funnelshift_r(ptr[u][o], ptr[u][o + 1], sh[u]);
        if constexpr (kShift + 4 * W <= 32) {
#pragma unroll
          for (int i = 0; i < 4; ++i) e[i] = Lds16(tables, ((x0 >> (i * W)) & kMask) | base);
        } else {  // width 8: the upper two codes from a second window, 2W bits on
          const uint32_t x1 = __funnelshift_r(ptr[u][o], ptr[u][o + 1], sh[u] + 2 * W);
          const uint32_t x1b = sh[u] + 2 * W >= 32 ? __funnelshift_r(ptr[u][o + 1], ptr[u][o + 2], sh[u] + 2 * W)
                                                   : x1;
          e[0] = Lds16(tables, (x0 & kMask) | base);
          e[1] = Lds16(tables, ((x0 >> W) & kMask) | base);
          e[2] = Lds16(tables, (x1b & kMask) | base);
          e[3] = Lds16(tables, ((x1b >> W) & kMask) | base);
        }
        a[uu] = __byte_perm(e[0], e[1], 0x5410);
        a[uu + 2] = __byte_perm(e[2], e[3], 0x5410);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      Mma(gacc[mt][nt], a, q[nt].x, q[nt].y);
      Mma(gacc[mt][nt], a, q[nt].z, q[nt].w);
    }
  }
}

// Logits of one key group, k-step by k-step. bit[u]: stream bit of the
// lane's first code of this group in token u, minus LevelShift(W). Two
// k-steps span 32 W bits, W whole words, so even steps share one set of
// word pointers and shifts, odd steps another, and a pair of steps moves
// both on by W words.
template <int W, int NT>
__device__ __forceinline__ void KeyGroup(const uint32_t* words, const unsigned char* tables, uint32_t base,
                                         const uint4* qf, int steps, const int (&bit)[4], float (&gacc)[2][NT][4]) {
  const uint32_t* even[4];
  const uint32_t* odd[4];
  int sh_even[4], sh_odd[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    even[u] = words + (bit[u] >> 5);
    sh_even[u] = bit[u] & 31;
    odd[u] = words + ((bit[u] + 16 * W) >> 5);
    sh_odd[u] = (bit[u] + 16 * W) & 31;
  }
  for (int s = 0; s < steps; s += 2) {
    const int o = (s >> 1) * W;
    KeyStep<W, NT>(even, sh_even, o, tables, base, qf + s * NT * 32, gacc);
    if (s + 1 < steps) KeyStep<W, NT>(odd, sh_odd, o, tables, base, qf + (s + 1) * NT * 32, gacc);
  }
}

template <int NT>
__device__ __forceinline__ void KeyGroupAnyWidth(int w, const uint32_t* words, const unsigned char* tables,
                                                 uint32_t base, const uint4* qf, int steps, const int (&bit)[4],
                                                 float (&gacc)[2][NT][4]) {
  // Widths are 1-8: the backend refuses any other at plan upload.
  switch (w) {
    case 1: KeyGroup<1, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 2: KeyGroup<2, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 3: KeyGroup<3, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 4: KeyGroup<4, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 5: KeyGroup<5, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 6: KeyGroup<6, NT>(words, tables, base, qf, steps, bit, gacc); break;
    case 7: KeyGroup<7, NT>(words, tables, base, qf, steps, bit, gacc); break;
    default: KeyGroup<8, NT>(words, tables, base, qf, steps, bit, gacc); break;
  }
}

// Bits [off, off + 32) of a stream held as aligned words.
template <int kOff, int N>
__device__ __forceinline__ uint32_t FieldAt(const uint32_t (&a)[N]) {
  constexpr int k = kOff / 32, sh = kOff % 32;
  if constexpr (sh == 0) {
    return a[k];
  } else if constexpr (k + 1 < N) {
    return __funnelshift_r(a[k], a[k + 1], sh);
  } else {
    return a[k] >> sh;
  }
}

// Value pair j (dimensions 2j, 2j+1 of the lane's run) of one token as
// half2 levels; `a` is the lane's run of codes, aligned at stream bit
// -LevelShift(VB). base: the table's offset plus the lane's copy.
template <int VB, int J, int N>
__device__ __forceinline__ uint32_t ValuePair(const unsigned char* tables, uint32_t base, const uint32_t (&a)[N]) {
  constexpr int kShift = LevelShift(VB);
  if constexpr (PairTable(VB)) {
    constexpr uint32_t kMask = ((1u << (2 * VB)) - 1u) << kShift;
    return Lds32(tables, (FieldAt<2 * J * VB, N>(a) & kMask) | base);
  } else {
    constexpr uint32_t kMask = ((1u << VB) - 1u) << kShift;
    const uint32_t f0 = FieldAt<2 * J * VB, N>(a), f1 = FieldAt<(2 * J + 1) * VB, N>(a);
    return __byte_perm(Lds16(tables, (f0 & kMask) | base), Lds16(tables, (f1 & kMask) | base), 0x5410);
  }
}

template <int VB, int D>
__host__ __device__ constexpr int ValueRunWords() { return (D / 8 * VB + LevelShift(VB) + 31) / 32; }

template <int VB, int D, int NT, int J>
__device__ __forceinline__ void ValueTiles(const unsigned char* tables, uint32_t base,
                                           const uint32_t (&a)[4][ValueRunWords<VB, D>()],
                                           const uint32_t (&pb)[NT][2], float (&acc)[D / 16][NT][4]) {
  if constexpr (J < D / 16) {
    constexpr int N = ValueRunWords<VB, D>();
    uint32_t pr[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) pr[u] = ValuePair<VB, J, N>(tables, base, a[u]);
    const uint32_t frag[4] = {__byte_perm(pr[0], pr[1], 0x5410), __byte_perm(pr[0], pr[1], 0x7632),
                              __byte_perm(pr[2], pr[3], 0x5410), __byte_perm(pr[2], pr[3], 0x7632)};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) Mma(acc[J][nt], frag, pb[nt][0], pb[nt][1]);
    ValueTiles<VB, D, NT, J + 1>(tables, base, a, pb, acc);
  }
}

// out^T += V^T P^T for one 16-token k-step: the lane decodes dimensions
// r*D/8 .. (r+1)*D/8 of tokens 2c, 2c+1, 2c+8, 2c+9 of the step.
// bit0: stream bit of that run in token 2c; rb_bits: record size.
template <int VB, int D, int NT>
__device__ __forceinline__ void ValueStep(const uint32_t* words, const unsigned char* tables, uint32_t base,
                                          int bit0, int rb_bits, const uint32_t (&pb)[NT][2],
                                          float (&acc)[D / 16][NT][4]) {
  constexpr int N = ValueRunWords<VB, D>();
  uint32_t a[4][N];
  const int toks[4] = {0, 1, 8, 9};
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int b = bit0 - LevelShift(VB) + toks[u] * rb_bits;
    const uint32_t* w = words + (b >> 5);
    uint32_t raw[N + 1];
#pragma unroll
    for (int k = 0; k <= N; ++k) raw[k] = w[k];
#pragma unroll
    for (int k = 0; k < N; ++k) a[u][k] = __funnelshift_r(raw[k], raw[k + 1], b);
  }
  ValueTiles<VB, D, NT, 0>(tables, base | CopyOffset(VB, threadIdx.x % 32), a, pb, acc);
}

template <int D, int NT>
__device__ __forceinline__ void ValueStepAnyWidth(int vb, const uint32_t* words, const unsigned char* tables,
                                                  uint32_t base, int bit0, int rb_bits, const uint32_t (&pb)[NT][2],
                                                  float (&acc)[D / 16][NT][4]) {
  switch (vb) {  // 1-8, as the key widths
    case 1: ValueStep<1, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 2: ValueStep<2, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 3: ValueStep<3, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 4: ValueStep<4, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 5: ValueStep<5, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 6: ValueStep<6, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    case 7: ValueStep<7, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
    default: ValueStep<8, D, NT>(words, tables, base, bit0, rb_bits, pb, acc); break;
  }
}


__host__ __device__ constexpr int StageBytes(int max_record_bytes) {
  return (kTile * max_record_bytes + 16 + 15) / 16 * 16;
}

// Shared layout: decode tables | query fragments [MaxSteps][NT][32] uint4 |
// per-warp tile stages (reused at the end to combine the warps).
__host__ __device__ constexpr int TablesRegion(int table_bytes) { return (table_bytes + 15) / 16 * 16; }
__host__ __device__ constexpr size_t SharedBytes(int d, int nt, int max_record_bytes, int table_bytes) {
  const size_t tiles = static_cast<size_t>(kWarps) * kStages * StageBytes(max_record_bytes);
  const size_t combine = sizeof(float) * (2 * kWarps * 16 + static_cast<size_t>(kWarps) * 16 * d);
  return TablesRegion(table_bytes) + static_cast<size_t>(MaxSteps(d)) * nt * 32 * 16 +
         (tiles > combine ? tiles : combine);
}

// One block: one split of one KV head of one item; rows in passes of 8 NT.
template <int D, int NT>
__device__ __forceinline__ void AttendMmaBlock(const AttendParams& p, const int split, const int h) {
  constexpr int kRowsPerPass = 8 * NT;
  constexpr int kDimTiles = D / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, r = lane / 4, c = lane % 4;
  const HeadPlanDevice& hp = p.heads[h];
  // Plan and record fields in registers: the barriers in the tile loop
  // would otherwise make the compiler reload them from global memory.
  const int rb = hp.record_bytes, rb_bits = 8 * rb;
  const int num_groups = hp.num_groups, vbits = hp.value_bits;
  const int key_codes_bit = 8 * hp.key_codes_offset, key_norms_offset = hp.key_norms_offset;
  const int value_codes_bit = 8 * hp.value_codes_offset, value_norm_offset = hp.value_norm_offset;
  const unsigned page_tokens = static_cast<unsigned>(p.cache.page_tokens);
  const long long head_offset = static_cast<long long>(p.cache.page_tokens) * hp.record_prefix;

  unsigned char* tables = smem;
  uint4* qfrag = reinterpret_cast<uint4*>(smem + TablesRegion(p.table_bytes));
  unsigned char* stages = smem + TablesRegion(p.table_bytes) + MaxSteps(D) * NT * 32 * 16;
  const int stage_bytes = StageBytes(p.max_record_bytes);
  unsigned char* my_stages = stages + warp * kStages * stage_bytes;

  // The decode tables, built at plan upload, and their offsets (in shared
  // memory: indexed by group in the tile loop, they would otherwise live
  // in local memory). The image is a whole number of 16-byte words (every
  // table is at least 128 bytes).
  __shared__ int key_table_offset[kMaxGroups + 1];  // + the value table's
  if (tid <= kMaxGroups) key_table_offset[tid] = hp.table_offset[tid];
  {
    const uint4* image = reinterpret_cast<const uint4*>(hp.table_image);
    for (int i = tid; i < hp.table_image_bytes / 16; i += kThreads) reinterpret_cast<uint4*>(tables)[i] = image[i];
  }
  // Per key group: width, k-steps, stream bit of its first code minus
  // LevelShift (the lane adds its 4c codes), mask of the lane's copy.
  __shared__ int4 group_info[kMaxGroups];
  if (tid < num_groups) {
    const int w = hp.group_bits[tid];
    group_info[tid] = make_int4(w, (hp.group_dim[tid] + 15) / 16,
                                key_codes_bit + hp.group_code_bit_offset[tid] - LevelShift(w),
                                PairTable(w) ? (1 << CopyShift(w)) - 1 : 0);
  }
  __syncthreads();
  const int value_table_offset = key_table_offset[kMaxGroups];
  // Offsets of this lane's tokens r, r+8, r+16, r+24 in a tile: stream bits
  // and the bytes of their first key norm.
  int token_bit[4];
  uint32_t token_norm[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    token_bit[u] = (r + 8 * u) * rb_bits;
    token_norm[u] = static_cast<uint32_t>((r + 8 * u) * rb + key_norms_offset);
  }

  const long long begin = p.token_begin + split * p.tokens_per_split;
  const long long end = min(p.token_end, begin + p.tokens_per_split);
  const long long first_tile = begin / kHalfTile * kHalfTile;
  const int num_tiles = static_cast<int>((end - first_tile + kTile - 1) / kTile);
  const int my_tiles_count = num_tiles > warp ? (num_tiles - warp + kWarps - 1) / kWarps : 0;

  // Where this warp's next tile starts: page and token within the page,
  // advanced by kWarps tiles per issue (no division per tile).
  unsigned tile_page = 0, tile_within = 0;
  auto restart_tiles = [&] {  // before issue(0)
    const unsigned t = static_cast<unsigned>(first_tile + static_cast<long long>(warp) * kTile);
    tile_page = t / page_tokens;
    tile_within = t % page_tokens;
  };
  auto issue = [&](int k) {  // k-th tile of this warp into stage k % kStages; called for k = 0, 1, ..
    if (k < my_tiles_count) {
      const long long t0 = first_tile + static_cast<long long>(warp + k * kWarps) * kTile;
      unsigned char* dst = my_stages + (k % kStages) * stage_bytes;
      unsigned page = tile_page, within = tile_within;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        if (half == 1) {  // page_tokens is a multiple of 16: the second half starts a page or is in the same one
          within += kHalfTile;
          if (within >= page_tokens) {
            within -= page_tokens;
            ++page;
          }
        }
        if (t0 + half * kHalfTile < end) {  // beyond `end` there may be no page
          const uint8_t* src = p.cache.pages[page] + head_offset + within * rb;
          for (int i = lane; i < rb; i += 32) CpAsync16(dst + half * kHalfTile * rb + 16 * i, src + 16 * i);
        }
      }
    }
    CpAsyncCommit();
    tile_within += kWarps * kTile;
    while (tile_within >= page_tokens) {
      tile_within -= page_tokens;
      ++tile_page;
    }
  };

  // The rotated queries. (No early launch of the merge: its waiting blocks
  // would take the place of attention blocks.)
  WaitForPrerequisite();
  for (int row0 = 0; row0 < p.rows; row0 += kRowsPerPass) {
    __syncthreads();  // tables written; previous pass done with qfrag and the stages
    // Query fragments: k-step s of group g, n-tile nt, lane (r, c): row
    // row0 + 8 nt + r, slots f_s + 4c + {0,1} (b0) and {2,3} (b1), hi and
    // lo, pre-scaled by scale x log2(e) so logits come out in log2 units.
    {
      const float qscale = p.scale * kLog2e;
      int s_base = 0;
      for (int g = 0; g < num_groups; ++g) {
        const int g_off = hp.group_offset[g], g_dim = hp.group_dim[g];
        const int steps = (g_dim + 15) / 16;
        for (int e = tid; e < steps * NT * 32; e += kThreads) {
          const int s = e / (NT * 32), nt = (e / 32) % NT, l = e % 32;
          const int row = row0 + nt * 8 + l / 4;
          const int first = s * 16 + 4 * (l % 4);  // slot within the group
          float x[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const bool ok = row < p.rows && first + i < g_dim;
            x[i] = ok ? qscale * p.rotated[(static_cast<long long>(h) * p.rows + row) * D + g_off + first + i] : 0.0f;
          }
          float hi[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) hi[i] = HiPart(x[i]);
          qfrag[(s_base + s) * NT * 32 + nt * 32 + l] =
              make_uint4(PackHalf2(hi[0], hi[1]), PackHalf2(hi[2], hi[3]), PackHalf2(x[0] - hi[0], x[1] - hi[1]),
                         PackHalf2(x[2] - hi[2], x[3] - hi[3]));
        }
        s_base += steps;
      }
    }
    __syncthreads();

    float acc[kDimTiles][NT][4];
#pragma unroll
    for (int j = 0; j < kDimTiles; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) acc[j][nt][0] = acc[j][nt][1] = acc[j][nt][2] = acc[j][nt][3] = 0.0f;
    float m[NT][2], l[NT][2];  // running max (log2 units) and this lane's part of the sum, rows 2c, 2c+1
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
      const uint32_t* words = reinterpret_cast<const uint32_t*>(stage);
      const long long t0 = first_tile + static_cast<long long>(warp + k * kWarps) * kTile;

      // Logits^T (32 tokens x 8 NT rows), group by group.
      const int toks[4] = {r, r + 8, r + 16, r + 24};
      float s[2][NT][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
      int s_base = 0;
      for (int g = 0; g < num_groups; ++g) {
        const int4 info = group_info[g];
        const int w = info.x, steps = info.y;
        const int lane_bit = info.z + 4 * c * w;
        const uint32_t base = key_table_offset[g] | ((lane & info.w) << 2);
        int bit[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) bit[u] = token_bit[u] + lane_bit;
        float gacc[2][NT][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) gacc[mt][nt][0] = gacc[mt][nt][1] = gacc[mt][nt][2] = gacc[mt][nt][3] = 0.0f;
        KeyGroupAnyWidth<NT>(w, words, tables, base, qfrag + s_base * NT * 32, steps, bit, gacc);
        s_base += steps;
        const unsigned char* norms = stage + 2 * g;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          // Records are an even number of bytes, so norms are 2-byte aligned.
          const float n0 = __half2float(__ushort_as_half(Lds16(norms, token_norm[2 * mt])));
          const float n1 = __half2float(__ushort_as_half(Lds16(norms, token_norm[2 * mt + 1])));
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            s[mt][nt][0] = fmaf(n0, gacc[mt][nt][0], s[mt][nt][0]);
            s[mt][nt][1] = fmaf(n0, gacc[mt][nt][1], s[mt][nt][1]);
            s[mt][nt][2] = fmaf(n1, gacc[mt][nt][2], s[mt][nt][2]);
            s[mt][nt][3] = fmaf(n1, gacc[mt][nt][3], s[mt][nt][3]);
          }
        }
      }

      // Online softmax in log2 units; masked or padded tokens get -inf
      // (selected, so that whatever bytes a padded record holds never
      // reach the sums), and a zero value norm. Most tiles lie wholly
      // inside the range and before every causal limit (q_i >= 0) and
      // skip the per-token tests.
      const bool whole = t0 >= begin && t0 + kTile <= end && (!p.causal || t0 + kTile - 1 <= p.causal_offset);
      float vnorm[2][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int tok = toks[2 * mt + u];
          vnorm[mt][u] = __half2float(__ushort_as_half(Lds16(stage, tok * rb + value_norm_offset)));
        }
      if (!whole) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const long long t = t0 + toks[2 * mt + u];
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
          for (int mt = 0; mt < 2; ++mt)
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
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              float& v = s[mt][nt][2 * u + x];
              v = Exp2(v - new_m);  // exp2(-inf) = 0 for masked tokens
              sum += v;
            }
          l[nt][x] = l[nt][x] * alpha[nt][x] + sum;
        }
      }
      if (__any_sync(0xffffffffu, grew)) {  // the max settles early: most tiles skip the rescale
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

      // Values, one 16-token k-step per m-tile of the logits: P^T with the
      // value norms folded in, transposed into the B operand.
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t pb[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          pb[nt][0] = Transpose8x8(PackHalf2(s[mt][nt][0] * vnorm[mt][0], s[mt][nt][1] * vnorm[mt][0]));
          pb[nt][1] = Transpose8x8(PackHalf2(s[mt][nt][2] * vnorm[mt][1], s[mt][nt][3] * vnorm[mt][1]));
        }
        const int bit0 = (mt * 16 + 2 * c) * rb_bits + value_codes_bit + r * (D / 8) * vbits;
        ValueStepAnyWidth<D, NT>(vbits, words, tables, value_table_offset, bit0, rb_bits, pb, acc);
      }
      __syncwarp();  // the stage is refilled by the next issue
    }
    CpAsyncWait<0>();

    // Combine the four warps' states through shared memory (the stages
    // are free now), then write this split's rows.
    __syncthreads();
    float* cm = reinterpret_cast<float*>(stages);  // [kWarps][16] max
    float* cl = cm + kWarps * 16;                   // [kWarps][16] sum
    float* co = cl + kWarps * 16;                   // [kWarps][16][D]
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
          const int dim = r * (D / 8) + 2 * j;
          co[(warp * 16 + row) * D + dim] = acc[j][nt][x];
          co[(warp * 16 + row) * D + dim + 1] = acc[j][nt][2 + x];
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
__global__ void __launch_bounds__(kThreads) AttendMmaKernel(const __grid_constant__ AttendParams p) {
  AttendMmaBlock<D, NT>(p, blockIdx.x, blockIdx.y);
}

// A batch of items of one shape (head_dim, KV heads, rows); blockIdx.z is
// the item, and items with fewer splits than the grid leave the rest idle.
template <int D, int NT>
__global__ void __launch_bounds__(kThreads) AttendMmaBatchKernel(const AttendParams* items) {
  const AttendParams& p = items[blockIdx.z];
  if (static_cast<int>(blockIdx.x) >= p.num_splits) return;
  AttendMmaBlock<D, NT>(p, blockIdx.x, blockIdx.y);
}

int RowTiles(int rows) { return rows > 8 ? 2 : 1; }

// Launches kernel<<<grid, kThreads, smem>>>(arg) as a dependent launch of
// the query rotation before it, opting in to more than 48 KB of dynamic
// shared memory when needed (Hopper: up to 227 KB).
template <typename Kernel, typename Arg>
cudaError_t LaunchWithSharedMemory(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, Arg arg) {
  if (const cudaError_t err = AllowSharedMemory(kernel, smem); err != cudaSuccess) return err;
  return LaunchDependent(kernel, grid, dim3(kThreads), smem, stream, arg);
}

}  // namespace

int AttendMmaTableBytes(const int* key_bits, int num_groups, int value_bits) {
  return TableBytes(key_bits, num_groups, value_bits);
}

void AttendMmaTableImage(const int* key_bits, const float* const* key_centroids, int num_groups, int value_bits,
                         const float* value_centroids, unsigned char* image, int* offsets) {
  PlaceTables(key_bits, num_groups, value_bits, offsets);
  for (int g = 0; g < num_groups; ++g) FillLevelTable(image + offsets[g], key_centroids[g], key_bits[g]);
  FillLevelTable(image + offsets[kMaxGroups], value_centroids, value_bits);
}

bool AttendMmaSupports(int head_dim, int rows, int max_record_bytes, int table_bytes) {
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) return false;
  return SharedBytes(head_dim, RowTiles(rows), max_record_bytes, table_bytes) <= 227 * 1024;
}

cudaError_t LaunchAttendMmaBatch(const AttendParams* device_items, const AttendBatchShape& b,
                                 cudaStream_t stream) {
  const int nt = RowTiles(b.rows);
  const size_t smem = SharedBytes(b.head_dim, nt, b.max_record_bytes, b.table_bytes);
  const dim3 grid(b.max_splits, b.num_kv_heads, b.num_items);
ROPEKV_DISPATCH_HEAD_DIM(b.head_dim, D, ROPEKV_DISPATCH_ROW_TILES(nt, NT, {
    return LaunchWithSharedMemory(AttendMmaBatchKernel<D, NT>, grid, smem, stream, device_items);
  }))
}

cudaError_t LaunchAttendMma(const AttendParams& p, cudaStream_t stream) {
  const int nt = RowTiles(p.rows);
  const size_t smem = SharedBytes(p.head_dim, nt, p.max_record_bytes, p.table_bytes);
  const dim3 grid(p.num_splits, p.num_kv_heads);
ROPEKV_DISPATCH_HEAD_DIM(p.head_dim, D, ROPEKV_DISPATCH_ROW_TILES(nt, NT, {
    return LaunchWithSharedMemory(AttendMmaKernel<D, NT>, grid, smem, stream, p);
  }))
}

}  // namespace ropekv::kernels::cuda
