#include "tests/gpu/fault_kernel.h"

namespace ropekv::testing {
namespace {

__global__ void TrapKernel() { __trap(); }

}  // namespace

cudaError_t CorruptDeviceContext(int device) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  TrapKernel<<<1, 1>>>();
  return cudaDeviceSynchronize();
}

}  // namespace ropekv::testing
