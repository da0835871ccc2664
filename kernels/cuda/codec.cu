// Encode and decode kernels, one thread per coordinate: encode takes a
// tile of tokens per block (each rotation element loaded serves the whole
// tile), decode one token per block. Keys follow ALGORITHM.md section 3
// (permute, per-group norm, rotate, nearest centroid, corrected fp16
// norm), values section 4.
#include "kernels/cuda/device_common.cuh"

namespace ropekv::kernels::cuda {
namespace {

constexpr int kEncodeTokens = 16;  // tokens per encode block

// 32-bit words of one token's packed code stream (at most 8 bits a
// coordinate) plus one, so that a code's upper part always has a word.
__host__ __device__ constexpr int StreamWords(int d) { return d * 8 / 32 + 1; }

// Shared memory of one encode block: the tile's vectors [d][T] (permuted
// keys, then values; token-minor, so that one 16-byte load gives four
// tokens' coordinate), squared levels [T][d], norms and corrected norms
// [T][kMaxGroups + 1], packed code streams [T][StreamWords(d)].
size_t EncodeSharedBytes(int d) {
  return static_cast<size_t>(kEncodeTokens) * d * 2 * sizeof(float) +
         2 * sizeof(float) * kEncodeTokens * (kMaxGroups + 1) +
         sizeof(uint32_t) * kEncodeTokens * StreamWords(d);
}

// Zeroes the tile's packed streams.
__device__ void ClearStreams(uint32_t* streams, int d) {
  for (int e = threadIdx.x; e < kEncodeTokens * StreamWords(d); e += blockDim.x) streams[e] = 0;
}

// Copies bytes [0, bytes) of each token's packed stream to its record at
// byte `offset`, a thread per (token, byte).
__device__ void StoreStreams(const EncodeParams& p, const HeadPlanDevice& hp, long long t0, int tokens,
                             const uint32_t* streams, int d, int bytes, int offset) {
  for (int e = threadIdx.x; e < tokens * bytes; e += blockDim.x) {
    const int t = e / bytes, b = e % bytes;
    const uint32_t word = streams[t * StreamWords(d) + b / 4];
    RecordAt(p.cache, hp, p.first_token + t0 + t)[offset + b] = static_cast<uint8_t>(word >> (8 * (b % 4)));
  }
}

// Quantizes one group of every token of the tile: thread `slot` rotates
// its coordinate for all T tokens (one rotation load per T fused
// multiply-adds; the tile's coordinate j is read from shared memory as
// four 16-byte broadcasts), then picks the nearest centroid and ORs it
// into the token's packed stream at `stream_bit` (the dense LSB-first
// packing of planner/packed_layout.md). rotation_t is R transposed, so the
// threads of a warp load consecutive floats. Sums run in the same order as
// before (sequential fmaf over the group).
__device__ void QuantizeTile(int slot, int offset, int dim, const float* rotation_t, const float* boundaries,
                             const float* centroids, int bits, const float* x, int d, const float* norm,
                             int norm_stride, int tokens, int stream_bit, uint32_t* streams, float* level_sq) {
  const float* column = rotation_t + (slot - offset);
  float y[kEncodeTokens];
#pragma unroll
  for (int t = 0; t < kEncodeTokens; ++t) y[t] = 0.0f;
  static_assert(kEncodeTokens % 4 == 0, "tiles are read as float4");
  for (int j = 0; j < dim; ++j) {
    const float r = column[static_cast<long long>(j) * dim];
    const float4* xj = reinterpret_cast<const float4*>(x + (offset + j) * kEncodeTokens);
#pragma unroll
    for (int q = 0; q < kEncodeTokens / 4; ++q) {
      const float4 v = xj[q];
      y[4 * q] = fmaf(r, v.x, y[4 * q]);
      y[4 * q + 1] = fmaf(r, v.y, y[4 * q + 1]);
      y[4 * q + 2] = fmaf(r, v.z, y[4 * q + 2]);
      y[4 * q + 3] = fmaf(r, v.w, y[4 * q + 3]);
    }
  }
#pragma unroll
  for (int t = 0; t < kEncodeTokens; ++t) {
    if (t < tokens) {
      const float n = norm[t * norm_stride];
      const int code = NearestCode(boundaries, 1 << bits, n > 0.0f ? y[t] / n : 0.0f);
      uint32_t* stream = streams + t * StreamWords(d);
      const int sh = stream_bit & 31;
      atomicOr(stream + (stream_bit >> 5), static_cast<uint32_t>(code) << sh);
      if (sh + bits > 32) atomicOr(stream + (stream_bit >> 5) + 1, static_cast<uint32_t>(code) >> (32 - sh));
      const float c = centroids[code];
      level_sq[t * d + slot] = c * c;
    }
  }
}

// One block per (tile of kEncodeTokens tokens, KV head), one thread per
// coordinate: keys (permute, per-group norm, rotate, nearest centroid,
// corrected norm), then values, then every record byte of the tile.
__global__ void EncodeKernel(EncodeParams p) {
  extern __shared__ __align__(16) unsigned char encode_smem[];
  const int d = p.head_dim;
  float* x = reinterpret_cast<float*>(encode_smem);                // [d][T]
  float* level_sq = x + kEncodeTokens * d;                          // [T][d]
  float* norm = level_sq + kEncodeTokens * d;                       // [T][kMaxGroups + 1]
  float* corrected = norm + kEncodeTokens * (kMaxGroups + 1);       // [T][kMaxGroups + 1]
  uint32_t* streams = reinterpret_cast<uint32_t*>(corrected + kEncodeTokens * (kMaxGroups + 1));  // [T][words]
  constexpr int kNorms = kMaxGroups + 1;
  const long long t0 = static_cast<long long>(blockIdx.x) * kEncodeTokens;
  const int tokens = static_cast<int>(min(static_cast<long long>(kEncodeTokens), p.num_tokens - t0));
  const int h = blockIdx.y;
  const int tid = threadIdx.x;
  const HeadPlanDevice& hp = p.heads[h];
  const int num_groups = hp.num_groups;
  const float* keys = p.keys + (static_cast<long long>(h) * p.num_tokens + t0) * d;
  const float* values = p.values + (static_cast<long long>(h) * p.num_tokens + t0) * d;

  // Keys.
  ClearStreams(streams, d);
  for (int e = tid; e < kEncodeTokens * d; e += blockDim.x) {  // padding tokens read as zeros
    const int t = e % kEncodeTokens, j = e / kEncodeTokens;
    x[e] = t < tokens ? keys[static_cast<long long>(t) * d + hp.permutation[j]] : 0.0f;
  }
  __syncthreads();
  for (int e = tid; e < tokens * num_groups; e += blockDim.x) {
    const int t = e / num_groups, g = e % num_groups;
    const float* v = x + hp.group_offset[g] * kEncodeTokens + t;
    float s = 0.0f;
    for (int j = 0; j < hp.group_dim[g]; ++j) s = fmaf(v[j * kEncodeTokens], v[j * kEncodeTokens], s);
    norm[t * kNorms + g] = sqrtf(s);
  }
  __syncthreads();
  if (tid < d) {
    const int g = GroupOf(hp, tid);
    const int bit = hp.group_code_bit_offset[g] + (tid - hp.group_offset[g]) * hp.group_bits[g];
    QuantizeTile(tid, hp.group_offset[g], hp.group_dim[g], hp.rotation_t[g], hp.boundaries[g], hp.centroids[g],
                 hp.group_bits[g], x, d, norm + g, kNorms, tokens, bit, streams, level_sq);
  }
  __syncthreads();
  for (int e = tid; e < tokens * num_groups; e += blockDim.x) {
    const int t = e / num_groups, g = e % num_groups;
    const float* l = level_sq + t * d + hp.group_offset[g];
    float s = 0.0f;
    for (int j = 0; j < hp.group_dim[g]; ++j) s += l[j];
    corrected[t * kNorms + g] = norm[t * kNorms + g] / sqrtf(s);
  }
  StoreStreams(p, hp, t0, tokens, streams, d, (hp.key_code_bits + 7) / 8, hp.key_codes_offset);
  __syncthreads();

  // Values: one group of d coordinates.
  ClearStreams(streams, d);
  for (int e = tid; e < kEncodeTokens * d; e += blockDim.x) {
    const int t = e % kEncodeTokens, j = e / kEncodeTokens;
    x[e] = t < tokens ? values[static_cast<long long>(t) * d + j] : 0.0f;
  }
  __syncthreads();
  for (int t = tid; t < tokens; t += blockDim.x) {
    const float* v = x + t;
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s = fmaf(v[j * kEncodeTokens], v[j * kEncodeTokens], s);
    norm[t * kNorms + kMaxGroups] = sqrtf(s);
  }
  __syncthreads();
  if (tid < d) {
    QuantizeTile(tid, 0, d, hp.value_rotation_t, hp.value_boundaries, hp.value_centroids, hp.value_bits, x, d,
                 norm + kMaxGroups, kNorms, tokens, tid * hp.value_bits, streams, level_sq);
  }
  __syncthreads();
  for (int t = tid; t < tokens; t += blockDim.x) {
    const float* l = level_sq + t * d;
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s += l[j];
    corrected[t * kNorms + kMaxGroups] = norm[t * kNorms + kMaxGroups] / sqrtf(s);
  }
  StoreStreams(p, hp, t0, tokens, streams, d, (d * hp.value_bits + 7) / 8, hp.value_codes_offset);
  __syncthreads();
  // Norms, a thread per (token, norm).
  for (int e = tid; e < tokens * (num_groups + 1); e += blockDim.x) {
    const int t = e / (num_groups + 1), g = e % (num_groups + 1);
    const float n = corrected[t * kNorms + (g < num_groups ? g : kMaxGroups)];
    if (!(n <= 65504.0f)) atomicExch(p.overflow, 1);
    uint8_t* rec = RecordAt(p.cache, hp, p.first_token + t0 + t);
    StoreHalf(rec + (g < num_groups ? hp.key_norms_offset + 2 * g : hp.value_norm_offset), n);
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
  const size_t smem = EncodeSharedBytes(p.head_dim);
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(EncodeKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  EncodeKernel<<<grid, BlockFor(p.head_dim), smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
  DecodeKernel<<<grid, BlockFor(p.head_dim), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace ropekv::kernels::cuda
