// Encode and decode kernels: one block per (token, KV head), one thread per
// coordinate. Keys follow ALGORITHM.md section 3 (permute, per-group norm,
// rotate, nearest centroid, corrected fp16 norm), values section 4.
#include "kernels/cuda/device_common.cuh"

namespace ropekv::kernels::cuda {
namespace {

// Quantizes x[offset, offset+dim) of shared memory with rotation R; writes
// codes and squared levels; returns nothing (norms done by the caller).
__device__ void QuantizeSlot(int slot, int offset, int dim, const float* rotation,
                             const float* boundaries, const float* centroids, int bits,
                             const float* x, float norm, unsigned char* codes, float* level_sq) {
  const float* row = rotation + static_cast<long long>(slot - offset) * dim;
  float y = 0.0f;
  for (int j = 0; j < dim; ++j) y = fmaf(row[j], x[offset + j], y);
  y = norm > 0.0f ? y / norm : 0.0f;
  const int code = NearestCode(boundaries, 1 << bits, y);
  codes[slot] = static_cast<unsigned char>(code);
  const float c = centroids[code];
  level_sq[slot] = c * c;
}

__global__ void EncodeKernel(EncodeParams p) {
  __shared__ float x[kMaxHeadDim];
  __shared__ float level_sq[kMaxHeadDim];
  __shared__ unsigned char codes[kMaxHeadDim];
  __shared__ float norm[kMaxGroups];
  __shared__ float corrected[kMaxGroups + 1];  // key groups, then the value
  const long long i = blockIdx.x;
  const int h = blockIdx.y;
  const int tid = threadIdx.x;
  const int d = p.head_dim;
  const HeadPlanDevice& hp = p.heads[h];
  uint8_t* rec = RecordAt(p.cache, hp, p.first_token + i);
  const float* key = p.keys + (static_cast<long long>(h) * p.num_tokens + i) * d;
  const float* value = p.values + (static_cast<long long>(h) * p.num_tokens + i) * d;

  // Keys.
  if (tid < d) x[tid] = key[hp.permutation[tid]];
  __syncthreads();
  if (tid < hp.num_groups) {
    float s = 0.0f;
    for (int j = 0; j < hp.group_dim[tid]; ++j) {
      const float v = x[hp.group_offset[tid] + j];
      s = fmaf(v, v, s);
    }
    norm[tid] = sqrtf(s);
  }
  __syncthreads();
  if (tid < d) {
    const int g = GroupOf(hp, tid);
    QuantizeSlot(tid, hp.group_offset[g], hp.group_dim[g], hp.rotation[g], hp.boundaries[g],
                 hp.centroids[g], hp.group_bits[g], x, norm[g], codes, level_sq);
  }
  __syncthreads();
  if (tid < hp.num_groups) {
    float s = 0.0f;
    for (int j = 0; j < hp.group_dim[tid]; ++j) s += level_sq[hp.group_offset[tid] + j];
    corrected[tid] = norm[tid] / sqrtf(s);
  }
  const int key_bytes = (hp.key_code_bits + 7) / 8;
  for (int b = tid; b < key_bytes; b += blockDim.x) {
    unsigned byte = 0;
    for (int bit = 0; bit < 8; ++bit) {
      const int pos = 8 * b + bit;
      if (pos >= hp.key_code_bits) break;
      int g = 0;
      while (g + 1 < hp.num_groups && pos >= hp.group_code_bit_offset[g + 1]) ++g;
      const int rel = pos - hp.group_code_bit_offset[g];
      const int slot = hp.group_offset[g] + rel / hp.group_bits[g];
      byte |= ((codes[slot] >> (rel % hp.group_bits[g])) & 1u) << bit;
    }
    rec[hp.key_codes_offset + b] = static_cast<uint8_t>(byte);
  }
  __syncthreads();

  // Values: one group of d coordinates.
  if (tid < d) x[tid] = value[tid];
  __syncthreads();
  if (tid == 0) {
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s = fmaf(x[j], x[j], s);
    norm[0] = sqrtf(s);
  }
  __syncthreads();
  if (tid < d) {
    QuantizeSlot(tid, 0, d, hp.value_rotation, hp.value_boundaries, hp.value_centroids,
                 hp.value_bits, x, norm[0], codes, level_sq);
  }
  __syncthreads();
  if (tid == 0) {
    float s = 0.0f;
    for (int j = 0; j < d; ++j) s += level_sq[j];
    corrected[kMaxGroups] = norm[0] / sqrtf(s);
  }
  const int value_bits_total = d * hp.value_bits;
  for (int b = tid; b < (value_bits_total + 7) / 8; b += blockDim.x) {
    unsigned byte = 0;
    for (int bit = 0; bit < 8; ++bit) {
      const int pos = 8 * b + bit;
      if (pos >= value_bits_total) break;
      byte |= ((codes[pos / hp.value_bits] >> (pos % hp.value_bits)) & 1u) << bit;
    }
    rec[hp.value_codes_offset + b] = static_cast<uint8_t>(byte);
  }
  __syncthreads();
  // Norms last, from one thread.
  if (tid == 0) {
    for (int g = 0; g <= hp.num_groups; ++g) {
      const float n = g < hp.num_groups ? corrected[g] : corrected[kMaxGroups];
      if (!(n <= 65504.0f)) atomicExch(p.overflow, 1);
      StoreHalf(rec + (g < hp.num_groups ? hp.key_norms_offset + 2 * g : hp.value_norm_offset), n);
    }
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
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
  EncodeKernel<<<grid, BlockFor(p.head_dim), 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
  DecodeKernel<<<grid, BlockFor(p.head_dim), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace ropekv::kernels::cuda
