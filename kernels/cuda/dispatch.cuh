// Dispatch of runtime sizes onto the kernel instances this build has, in
// one place (FlashInfer's utils.cuh style): a value with no instance fails
// loudly instead of falling through to another instance.
//
// Host side, a launcher returns kNoKernelInstance, which the backend maps
// to INTERNAL (plans are validated before they reach a kernel, so a missing
// instance is a bug, not bad input). Code widths are dispatched inside the
// attention kernel's tile loop, where a branch costs: the backend refuses
// (INTERNAL) any plan with a width outside 1-8 when it is uploaded, so the
// kernel's switch over 1-8 never sees another width.
#ifndef ROPEKV_KERNELS_CUDA_DISPATCH_CUH_
#define ROPEKV_KERNELS_CUDA_DISPATCH_CUH_

#include <cuda_runtime_api.h>

namespace ropekv::kernels::cuda {

// What a launcher returns for a size it has no instance of.
inline constexpr cudaError_t kNoKernelInstance = cudaErrorNotYetImplemented;

}  // namespace ropekv::kernels::cuda

// Runs the statements after it with `constexpr int NAME` equal to `value`
// for head_dim 64, 128 or 256; other values return kNoKernelInstance.
#define ROPEKV_DISPATCH_HEAD_DIM(value, NAME, ...)                          \
  switch (value) {                                                          \
    case 64: { constexpr int NAME = 64; __VA_ARGS__ }                       \
    case 128: { constexpr int NAME = 128; __VA_ARGS__ }                     \
    case 256: { constexpr int NAME = 256; __VA_ARGS__ }                     \
    default: return ::ropekv::kernels::cuda::kNoKernelInstance;             \
  }

// The same for the attention kernel's query row tiles (1 or 2).
#define ROPEKV_DISPATCH_ROW_TILES(value, NAME, ...)                         \
  switch (value) {                                                          \
    case 1: { constexpr int NAME = 1; __VA_ARGS__ }                         \
    case 2: { constexpr int NAME = 2; __VA_ARGS__ }                         \
    default: return ::ropekv::kernels::cuda::kNoKernelInstance;             \
  }

#endif  // ROPEKV_KERNELS_CUDA_DISPATCH_CUH_
