// Device helpers shared by the kernels: record addressing, fp16 norms, bit
// extraction (the same dense LSB-first packing as kernels/cpu/bit_packing.h)
// and the nearest-centroid search.
#ifndef ROPEKV_KERNELS_CUDA_DEVICE_COMMON_CUH_
#define ROPEKV_KERNELS_CUDA_DEVICE_COMMON_CUH_

#include <cuda_fp16.h>

#include "kernels/cuda/device_plan.cuh"

namespace ropekv::kernels::cuda {

__device__ __forceinline__ uint8_t* RecordAt(const PagedLayerDevice& c,
                                             const HeadPlanDevice& h, long long t) {
  return c.pages[t / c.page_tokens] + static_cast<long long>(c.page_tokens) * h.record_prefix +
         (t % c.page_tokens) * h.record_bytes;
}

__device__ __forceinline__ float LoadHalf(const uint8_t* p) {
  const unsigned short bits = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(bits));
}

// fp32 -> fp16 bits with round to nearest even, in integer arithmetic (the
// same rules as planner::FloatToHalf). With nvcc 13.0, storing the low
// byte of __half_as_ushort(__float2half_rn(v)) from the encode kernel was
// seen to store (uint8_t)v instead; the integer path avoids that pattern.
__device__ __forceinline__ unsigned FloatToHalfBits(float f) {
  const unsigned u = __float_as_uint(f);
  const unsigned sign = (u >> 16) & 0x8000u;
  const unsigned abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u);
  if (abs >= 0x477FF000u) return sign | 0x7C00u;
  if (abs < 0x38800000u) {
    if (abs < 0x33000000u) return sign;
    const unsigned e = abs >> 23;
    const unsigned mant = (abs & 0x7FFFFFu) | 0x800000u;
    const unsigned shift = 126u - e;
    unsigned half = mant >> shift;
    const unsigned rest = mant & ((1u << shift) - 1u);
    const unsigned mid = 1u << (shift - 1u);
    if (rest > mid || (rest == mid && (half & 1u))) ++half;
    return sign | half;
  }
  unsigned h = (abs >> 13) - (112u << 10);
  const unsigned rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return sign | h;
}

__device__ __forceinline__ void StoreHalf(uint8_t* p, float v) {
  const unsigned bits = FloatToHalfBits(v);
  p[0] = static_cast<uint8_t>(bits & 0xFFu);
  p[1] = static_cast<uint8_t>(bits >> 8);
}

// Code of `bits` bits starting at stream bit `bit` (<= 8 bits: two bytes).
__device__ __forceinline__ int ReadCode(const uint8_t* stream, int bit, int bits) {
  const int byte = bit >> 3, shift = bit & 7;
  unsigned w = stream[byte];
  if (shift + bits > 8) w |= static_cast<unsigned>(stream[byte + 1]) << 8;
  return static_cast<int>((w >> shift) & ((1u << bits) - 1u));
}

// Number of boundaries <= y: the nearest centroid, ties to the upper level
// (as kernels::NearestCode on the CPU).
__device__ __forceinline__ int NearestCode(const float* boundaries, int levels, float y) {
  int lo = 0, hi = levels - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (boundaries[mid] <= y) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ int GroupOf(const HeadPlanDevice& h, int slot) {
  int g = 0;
  while (g + 1 < h.num_groups && slot >= h.group_offset[g + 1]) ++g;
  return g;
}

}  // namespace ropekv::kernels::cuda

#endif  // ROPEKV_KERNELS_CUDA_DEVICE_COMMON_CUH_
