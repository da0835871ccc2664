// Encode and decode kernels. Keys follow planner/ALGORITHM.md section 3 (permute,
// per-group norm, rotate, nearest centroid, corrected fp16 norm), values
// section 4.
//
// Encode: one block per (tile of kEncodeTokens tokens, KV head). The
// rotations y = R u run on the tensor cores as one GEMM per group,
// Y (tokens x dim) = U (tokens x dim) . R^T, with mma.sync m16n8k16 in
// fp32 accumulators: U and R are split into fp16 hi + lo parts (three MMAs,
// hi.hi + hi.lo + lo.hi), which keeps y at fp32 accuracy. U is the
// normalised vector (|u_j| <= 1), so its lo parts stay clear of the fp16
// subnormal range whatever the scale of the input. The codes agree with the
// CPU's except at near-ties, where the two sums' roundings differ.
// Decode: one token per block, a thread per coordinate.
#include <cuda_fp16.h>

#include "kernels/cuda/device_common.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kEncodeTokens = 32;  // tokens per encode block: two MMA m-tiles
constexpr int kEncodeWarps = 4;
constexpr int kEncodeThreads = 32 * kEncodeWarps;
constexpr int kTilesPerWarp = 4;   // n-tiles (8 output coordinates each) a warp takes per pass

// 32-bit words of one token's packed code stream (at most 8 bits a
// coordinate) plus one, so that a code's upper part always has a word.
__host__ __device__ constexpr int StreamWords(int d) { return d * 8 / 32 + 1; }
// Row stride of the tile in 4-byte elements: 8 more than d, so that the
// 8-byte loads of one MMA fragment (8 rows x 4 pairs) hit distinct banks.
__host__ __device__ constexpr int TileStride(int d) { return d + 8; }

// Shared memory of one encode block: the key and the value tile, each
// [T][TileStride(d)] (fp32 inputs, then in place each element's fp16 hi
// and lo parts), norms and
// their inverses [T][kMaxGroups + 1], corrected norms [T][kMaxGroups + 1],
// packed code streams [T][StreamWords(d)], record pointers [T],
// boundaries and levels [max_levels] each, the codes [T][d] and each
// slot's group [d] (one byte each).
size_t EncodeSharedBytes(int d, int max_levels) {
  return 2 * sizeof(float) * kEncodeTokens * TileStride(d) + 3 * sizeof(float) * kEncodeTokens * (kMaxGroups + 1) +
         sizeof(uint32_t) * kEncodeTokens * StreamWords(d) + sizeof(uint8_t*) * kEncodeTokens +
         2 * sizeof(float) * max_levels + static_cast<size_t>(kEncodeTokens) * d + d;
}

// u -> {fp16(u), fp16(u - fp16(u))} in one 32-bit word (hi in the low half).
__device__ __forceinline__ uint32_t SplitHalf(float u) {
  const __half hi = __float2half_rn(u);
  const __half lo = __float2half_rn(u - __half2float(hi));
  return static_cast<uint32_t>(__half_as_ushort(hi)) | (static_cast<uint32_t>(__half_as_ushort(lo)) << 16);
}

// Normalises each group of the tile's first `tokens` rows (x times the
// inverse of its group's norm; zero vectors stay zero) and splits it in
// place into fp16 hi/lo words. The rows of padding tokens stay 0.0f, whose
// bits are a zero hi/lo pair. A warp per row, a lane per slot.
__device__ void SplitTile(float* tile, int stride, int d, const uint8_t* group_of, const float* inv_norm,
                          int norm_stride, int tokens) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < tokens; t += kEncodeWarps) {
    for (int j = lane; j < d; j += 32) {
      float* x = tile + t * stride + j;
      const float u = *x * inv_norm[t * norm_stride + (group_of == nullptr ? 0 : group_of[j])];
      *reinterpret_cast<uint32_t*>(x) = SplitHalf(u);
    }
  }
}

// Rotates and quantizes one group of the tile: Y = U R^T for slots
// [offset, offset + dim), then each y's nearest centroid goes to codes[t][slot]
// and is OR-ed into the token's packed stream at code_bit + (slot - offset)
// x bits (the dense LSB-first packing of planner/packed_layout.md).
// Warp lead_warp + w takes n-tiles w, w + 4, .. (kTilesPerWarp a pass)
// for both m-tiles; fragments: A (m = token, k = slot) from the split tile,
// B (k, n) = R[n][k] from the rotation's fragment copy
// (RotationFragmentIndex).
__device__ void RotateQuantizeGroup(const uint32_t* tile, int stride, int offset, int dim,
                                    const uint32_t* rotation_frags, const float* boundaries, int bits, int code_bit,
                                    int tokens, uint8_t* codes, int d, uint32_t* streams, int lead_warp) {
  // Warps take n-tiles round robin from lead_warp on, so that the groups
  // of one head, most of them one or two n-tiles wide, spread over the
  // warps instead of all starting on warp 0.
  const int warp = (threadIdx.x / 32 + kEncodeWarps - lead_warp) % kEncodeWarps;
  const int lane = threadIdx.x % 32, r = lane / 4, c = lane % 4;
  const int n_tiles = (dim + 7) / 8, k_steps = (dim + 15) / 16;
  const uint4* frags = reinterpret_cast<const uint4*>(rotation_frags);
  for (int first = warp; first < n_tiles; first += kEncodeWarps * kTilesPerWarp) {
    float acc[2][kTilesPerWarp][4] = {};
    // B fragments of k-step s: {hi k0, hi k1, lo k0, lo k1} per n-tile, one
    // 16-byte load each, a step ahead (they come from L1/L2).
    auto load_b = [&](int s, uint32_t (&b)[kTilesPerWarp][4]) {
#pragma unroll
      for (int i = 0; i < kTilesPerWarp; ++i) {
        const int nt = min(first + i * kEncodeWarps, n_tiles - 1);  // tiles past the end are not used
        const uint4 v = __ldg(frags + RotationFragmentIndex(nt, s, k_steps, lane));
        b[i][0] = v.x;
        b[i][1] = v.y;
        b[i][2] = v.z;
        b[i][3] = v.w;
      }
    };
    uint32_t b[kTilesPerWarp][4];
    load_b(0, b);
    for (int s = 0; s < k_steps; ++s) {
      uint32_t next[kTilesPerWarp][4];
      if (s + 1 < k_steps) load_b(s + 1, next);
      // A: rows r, r+8 of each m-tile; slots 16s + 2c (+1) and + 8. Group
      // dims are even, so a pair is wholly inside the group or outside.
      uint32_t a_hi[2][4], a_lo[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int row = 16 * mt + r + 8 * (q & 1), k = 16 * s + 2 * c + 8 * (q >> 1);
          uint2 v = make_uint2(0u, 0u);
          if (k < dim) v = *reinterpret_cast<const uint2*>(tile + row * stride + offset + k);
          a_hi[mt][q] = __byte_perm(v.x, v.y, 0x5410);
          a_lo[mt][q] = __byte_perm(v.x, v.y, 0x7632);
        }
      }
#pragma unroll
      for (int i = 0; i < kTilesPerWarp; ++i) {
        if (first + i * kEncodeWarps >= n_tiles) break;  // warp-uniform
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          Mma(acc[mt][i], a_hi[mt], b[i][0], b[i][1]);
          Mma(acc[mt][i], a_hi[mt], b[i][2], b[i][3]);
          Mma(acc[mt][i], a_lo[mt], b[i][0], b[i][1]);
        }
      }
      if (s + 1 < k_steps) {
#pragma unroll
        for (int i = 0; i < kTilesPerWarp; ++i)
#pragma unroll
          for (int q = 0; q < 4; ++q) b[i][q] = next[i][q];
      }
    }
    // Accumulator q of (mt, i): token 16 mt + r + 8 (q >> 1), output
    // coordinate 8 nt + 2c + (q & 1).
#pragma unroll
    for (int i = 0; i < kTilesPerWarp; ++i) {
      const int nt = first + i * kEncodeWarps;
      if (nt >= n_tiles) break;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int t = 16 * mt + r + 8 * (q >> 1), n = 8 * nt + 2 * c + (q & 1);
          if (t < tokens && n < dim) {
            const int code = NearestCode(boundaries, 1 << bits, acc[mt][i][q]);
            codes[t * d + offset + n] = static_cast<uint8_t>(code);
            const int bit = code_bit + n * bits, sh = bit & 31;
            uint32_t* stream = streams + t * StreamWords(d) + (bit >> 5);
            atomicOr(stream, static_cast<uint32_t>(code) << sh);
            if (sh + bits > 32) atomicOr(stream + 1, static_cast<uint32_t>(code) >> (32 - sh));
          }
        }
      }
    }
  }
}

// Norms of value rows (one group of d) and their inverses, a warp per
// token: a long sequential sum per thread would hold the whole block at
// the next barrier.
__device__ void ValueNorms(const float* tile, int stride, int d, int tokens, float* norm, float* inv_norm) {
  constexpr int kNorms = kMaxGroups + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < tokens; t += kEncodeWarps) {
    float s = 0.0f;
    for (int j = lane; j < d; j += 32) s = fmaf(tile[t * stride + j], tile[t * stride + j], s);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      const float n = sqrtf(s);
      norm[t * kNorms + kMaxGroups] = n;
      inv_norm[t * kNorms + kMaxGroups] = n > 0.0f ? 1.0f / n : 0.0f;
    }
  }
}

// Value rows' corrected norms n / ||c[codes]||, a warp per token.
__device__ void ValueCorrectedNorms(const uint8_t* codes, int d, int tokens, const float* levels, const float* norm,
                                    float* corrected) {
  constexpr int kNorms = kMaxGroups + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < tokens; t += kEncodeWarps) {
    float s = 0.0f;
    for (int j = lane; j < d; j += 32) {
      const float c = levels[codes[t * d + j]];
      s = fmaf(c, c, s);
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) corrected[t * kNorms + kMaxGroups] = norm[t * kNorms + kMaxGroups] / sqrtf(s);
  }
}

// Key group norms (a sequential fmaf over the group; groups are a few
// dimensions each) and their inverses (0 for a zero vector), a thread per
// (token, group).
__device__ void GroupNorms(const float* tile, int stride, const HeadPlanDevice& hp, bool values, int tokens,
                           float* norm, float* inv_norm) {
  constexpr int kNorms = kMaxGroups + 1;
  const int groups = values ? 1 : hp.num_groups;
  for (int e = threadIdx.x; e < tokens * groups; e += blockDim.x) {
    const int t = e / groups, g = e % groups;
    const int off = values ? 0 : hp.group_offset[g], dim = values ? hp.head_dim : hp.group_dim[g];
    const float* v = tile + t * stride + off;
    float s = 0.0f;
    for (int j = 0; j < dim; ++j) s = fmaf(v[j], v[j], s);
    const float n = sqrtf(s);
    norm[t * kNorms + (values ? kMaxGroups : g)] = n;
    inv_norm[t * kNorms + (values ? kMaxGroups : g)] = n > 0.0f ? 1.0f / n : 0.0f;
  }
}

// Corrected norms n / ||c[codes]|| (sum in slot order), a thread per
// (token, group).
__device__ void CorrectedNorms(const uint8_t* codes, int d, const HeadPlanDevice& hp, bool values, int tokens,
                               const float* levels, const int* level_offset, const float* norm, float* corrected) {
  constexpr int kNorms = kMaxGroups + 1;
  const int groups = values ? 1 : hp.num_groups;
  for (int e = threadIdx.x; e < tokens * groups; e += blockDim.x) {
    const int t = e / groups, g = e % groups;
    const int off = values ? 0 : hp.group_offset[g], dim = values ? hp.head_dim : hp.group_dim[g];
    const float* centroids = levels + level_offset[values ? kMaxGroups : g];
    const uint8_t* code = codes + t * d + off;
    float s = 0.0f;
    for (int j = 0; j < dim; ++j) {
      const float cj = centroids[code[j]];
      s += cj * cj;
    }
    const int slot = values ? kMaxGroups : g;
    corrected[t * kNorms + slot] = norm[t * kNorms + slot] / sqrtf(s);
  }
}

__device__ void ClearStreams(uint32_t* streams, int d) {
  for (int e = threadIdx.x; e < kEncodeTokens * StreamWords(d); e += blockDim.x) streams[e] = 0;
}

// Copies bytes [0, bytes) of each token's packed stream to its record at
// byte `offset`, a warp per token.
__device__ void StoreStreams(uint8_t* const* records, int tokens, const uint32_t* streams, int d, int bytes,
                             int offset) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // A lane per stream word: one 32-bit load, up to four byte stores.
  for (int t = warp; t < tokens; t += kEncodeWarps) {
    uint8_t* rec = records[t] + offset;
    const uint32_t* stream = streams + t * StreamWords(d);
    for (int k = lane; 4 * k < bytes; k += 32) {
      const uint32_t word = stream[k];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        if (4 * k + b < bytes) rec[4 * k + b] = static_cast<uint8_t>(word >> (8 * b));
      }
    }
  }
}

__global__ void __launch_bounds__(kEncodeThreads) EncodeKernel(EncodeParams p) {
  extern __shared__ __align__(16) unsigned char encode_smem[];
  constexpr int kNorms = kMaxGroups + 1;
  const int d = p.head_dim, stride = TileStride(d);
  float* tile = reinterpret_cast<float*>(encode_smem);                                    // [T][stride] keys
  float* value_tile = tile + kEncodeTokens * stride;                                      // [T][stride]
  float* norm = value_tile + kEncodeTokens * stride;                                      // [T][kNorms]
  float* inv_norm = norm + kEncodeTokens * kNorms;                                        // [T][kNorms]
  float* corrected = inv_norm + kEncodeTokens * kNorms;                                   // [T][kNorms]
  uint32_t* streams = reinterpret_cast<uint32_t*>(corrected + kEncodeTokens * kNorms);    // [T][words]
  uint8_t** records = reinterpret_cast<uint8_t**>(streams + kEncodeTokens * StreamWords(d));  // [T]
  float* boundaries = reinterpret_cast<float*>(records + kEncodeTokens);                  // [max_levels]
  float* levels = boundaries + p.max_levels;                                              // [max_levels]
  uint8_t* codes = reinterpret_cast<uint8_t*>(levels + p.max_levels);                     // [T][d]
  uint8_t* group_of = codes + kEncodeTokens * d;                                          // [d]
  __shared__ int level_offset[kMaxGroups + 1];  // of each group's codebook in boundaries / levels

  const long long t0 = static_cast<long long>(blockIdx.x) * kEncodeTokens;
  const int tokens = static_cast<int>(min(static_cast<long long>(kEncodeTokens), p.num_tokens - t0));
  const int h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const HeadPlanDevice& hp = p.heads[h];
  const int num_groups = hp.num_groups;
  const float* keys = p.keys + (static_cast<long long>(h) * p.num_tokens + t0) * d;
  const float* values = p.values + (static_cast<long long>(h) * p.num_tokens + t0) * d;

  // Both tiles are copied asynchronously at once, so that every load of
  // the block is in flight together (the rows are read from DRAM once;
  // waiting on them one by one would dominate the kernel). Key slot j
  // gathers dimension permutation[j]; padding tokens read as zeros.
  for (int j = lane; j < d; j += 32) {
    const int dim = hp.permutation[j];
    for (int t = warp; t < kEncodeTokens; t += kEncodeWarps) {
      const bool valid = t < tokens;
      CpAsync4(tile + t * stride + j, keys + (valid ? static_cast<long long>(t) * d + dim : 0), valid);
    }
  }
  CpAsyncCommit();
  if (d % 4 == 0) {  // rows of 16-byte words (the tile's stride is a multiple of 4 as well)
    for (int j = 4 * lane; j < d; j += 4 * 32) {
      for (int t = warp; t < kEncodeTokens; t += kEncodeWarps) {
        const bool valid = t < tokens;
        CpAsync16(value_tile + t * stride + j, values + (valid ? static_cast<long long>(t) * d + j : 0), valid);
      }
    }
  } else {
    for (int j = lane; j < d; j += 32) {
      for (int t = warp; t < kEncodeTokens; t += kEncodeWarps) {
        const bool valid = t < tokens;
        CpAsync4(value_tile + t * stride + j, values + (valid ? static_cast<long long>(t) * d + j : 0), valid);
      }
    }
  }
  CpAsyncCommit();

  // Plan tables in shared memory: the nearest-level search and the
  // corrected norms read them for every coordinate.
  if (tid == 0) {
    int at = 0;
    for (int g = 0; g < num_groups; ++g) {
      level_offset[g] = at;
      at += 1 << hp.group_bits[g];
    }
    level_offset[kMaxGroups] = at;
  }
  for (int j = tid; j < d; j += blockDim.x) group_of[j] = static_cast<uint8_t>(GroupOf(hp, j));
  if (tid < tokens) records[tid] = RecordAt(p.cache, hp, p.first_token + t0 + tid);
  ClearStreams(streams, d);
  __syncthreads();
  for (int g = 0; g <= num_groups; ++g) {
    const bool v = g == num_groups;
    const int n = 1 << (v ? hp.value_bits : hp.group_bits[g]);
    const int at = level_offset[v ? kMaxGroups : g];
    const float* b = v ? hp.value_boundaries : hp.boundaries[g];
    const float* c = v ? hp.value_centroids : hp.centroids[g];
    for (int i = tid; i < n; i += blockDim.x) {
      levels[at + i] = c[i];
      if (i + 1 < n) boundaries[at + i] = b[i];
    }
  }

  // Keys.
  CpAsyncWait<1>();
  __syncthreads();
  GroupNorms(tile, stride, hp, false, tokens, norm, inv_norm);
  __syncthreads();
  SplitTile(tile, stride, d, group_of, inv_norm, kNorms, tokens);
  __syncthreads();
  for (int g = 0, lead = 0; g < num_groups; ++g) {
    RotateQuantizeGroup(reinterpret_cast<const uint32_t*>(tile), stride, hp.group_offset[g], hp.group_dim[g],
                        hp.rotation_frags[g], boundaries + level_offset[g], hp.group_bits[g],
                        hp.group_code_bit_offset[g], tokens, codes, d, streams, lead);
    lead = (lead + (hp.group_dim[g] + 7) / 8) % kEncodeWarps;
  }
  __syncthreads();
  CorrectedNorms(codes, d, hp, false, tokens, levels, level_offset, norm, corrected);
  StoreStreams(records, tokens, streams, d, (hp.key_code_bits + 7) / 8, hp.key_codes_offset);
  __syncthreads();

  // Values: one group of d coordinates, no permutation.
  ClearStreams(streams, d);
  tile = value_tile;
  CpAsyncWait<0>();
  __syncthreads();
  ValueNorms(tile, stride, d, tokens, norm, inv_norm);
  __syncthreads();
  SplitTile(tile, stride, d, nullptr, inv_norm + kMaxGroups, kNorms, tokens);
  __syncthreads();
  RotateQuantizeGroup(reinterpret_cast<const uint32_t*>(tile), stride, 0, d, hp.value_rotation_frags,
                      boundaries + level_offset[kMaxGroups], hp.value_bits, 0, tokens, codes, d, streams, 0);
  __syncthreads();
  ValueCorrectedNorms(codes, d, tokens, levels + level_offset[kMaxGroups], norm, corrected);
  StoreStreams(records, tokens, streams, d, (d * hp.value_bits + 7) / 8, hp.value_codes_offset);
  __syncthreads();
  // Norms, a thread per (token, norm).
  for (int e = tid; e < tokens * (num_groups + 1); e += blockDim.x) {
    const int t = e / (num_groups + 1), g = e % (num_groups + 1);
    const float n = corrected[t * kNorms + (g < num_groups ? g : kMaxGroups)];
    if (!(n <= 65504.0f)) atomicOr(p.overflow, g < num_groups ? kOverflowKeys : kOverflowValues);
    StoreHalf(records[t] + (g < num_groups ? hp.key_norms_offset + 2 * g : hp.value_norm_offset), n);
  }
}

__global__ void DecodeKernel(DecodeParams p) {
  __shared__ float level[kMaxHeadDim];
  const long long i = blockIdx.x;
  const int h = blockIdx.y;
  const int tid = threadIdx.x;
  const int d = p.head_dim;
  const HeadPlanDevice& hp = p.heads[h];
  const uint8_t* rec = RecordAt(p.cache, hp, p.first_token + i);
  const long long row = (static_cast<long long>(h) * p.num_tokens + i) * d;
  if (p.keys != nullptr) {
    int g = 0;
    if (tid < d) {
      g = GroupOf(hp, tid);
      const int rel = tid - hp.group_offset[g];
      const int code = ReadCode(rec + hp.key_codes_offset,
                                hp.group_code_bit_offset[g] + rel * hp.group_bits[g],
                                hp.group_bits[g]);
      level[tid] = hp.centroids[g][code];
    }
    __syncthreads();
    if (tid < d) {
      const int off = hp.group_offset[g], dim = hp.group_dim[g], col = tid - off;
      const float* r = hp.rotation[g];
      float s = 0.0f;
      for (int k = 0; k < dim; ++k) s = fmaf(r[static_cast<long long>(k) * dim + col], level[off + k], s);
      p.keys[row + hp.permutation[tid]] = LoadHalf(rec + hp.key_norms_offset + 2 * g) * s;
    }
    __syncthreads();
  }
  if (p.values != nullptr) {
    if (tid < d) {
      level[tid] = hp.value_centroids[ReadCode(rec + hp.value_codes_offset, tid * hp.value_bits,
                                               hp.value_bits)];
    }
    __syncthreads();
    if (tid < d) {
      float s = 0.0f;
      for (int k = 0; k < d; ++k) {
        s = fmaf(hp.value_rotation[static_cast<long long>(k) * d + tid], level[k], s);
      }
      p.values[row + tid] = LoadHalf(rec + hp.value_norm_offset) * s;
    }
  }
}

int BlockFor(int head_dim) { return ((head_dim + 31) / 32) * 32; }

}  // namespace

cudaError_t LaunchEncode(const EncodeParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((p.num_tokens + kEncodeTokens - 1) / kEncodeTokens),
                  static_cast<unsigned>(p.num_heads));
  const size_t smem = EncodeSharedBytes(p.head_dim, p.max_levels);
  if (const cudaError_t err = AllowSharedMemory(EncodeKernel, smem); err != cudaSuccess) return err;
  EncodeKernel<<<grid, kEncodeThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
  DecodeKernel<<<grid, BlockFor(p.head_dim), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace ropekv::kernels::cuda
