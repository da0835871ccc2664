// Device helpers shared by the kernels: record addressing, fp16 norms, bit
// extraction (the same dense LSB-first packing as kernels/cpu/bit_packing.h)
// and the nearest-centroid search.
#ifndef ROPEKV_KERNELS_CUDA_DEVICE_COMMON_CUH_
#define ROPEKV_KERNELS_CUDA_DEVICE_COMMON_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/device_plan.cuh"

namespace ropekv::kernels::cuda {

// Programmatic dependent launch (Hopper): a kernel launched with
// LaunchDependent may start while the kernel before it in the stream is
// still running; it must call WaitForPrerequisite before it reads what
// that kernel wrote (or writes what it reads). Work before the wait (plan
// loads, table set-up) overlaps the previous kernel's tail. Both are
// no-ops when the kernel was launched the ordinary way.
__device__ __forceinline__ void WaitForPrerequisite() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets the next kernel of the stream, if launched with LaunchDependent,
// start now.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(arg) as a programmatic dependent
// launch (see WaitForPrerequisite).
template <typename Kernel, typename Arg>
cudaError_t LaunchDependent(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Arg arg) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, arg);
}

// Dynamic shared memory beyond 48 KB minus a kernel's static shared
// memory needs an opt-in; the kernels here have under 1 KB of static
// shared memory, so they opt in above 47 KB of dynamic (a launch that
// misses it fails with cudaErrorInvalidValue).
template <typename Kernel>
cudaError_t AllowSharedMemory(Kernel kernel, size_t dynamic_bytes) {
  if (dynamic_bytes <= 47 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_bytes));
}

// D (16x8, fp32) += A (16x16, fp16, row) . B (16x8, fp16, col): the
// fragments of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type").
__device__ __forceinline__ void Mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Asynchronous copies global -> shared (cp.async); the `valid` forms
// write zeros instead of reading when !valid.
__device__ __forceinline__ void CpAsync16(void* smem, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global));
}
__device__ __forceinline__ void CpAsync16(void* smem, const void* global, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* global, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

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
