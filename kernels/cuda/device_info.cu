#include <cstring>

#include "kernels/cuda/device_info.cuh"

namespace ropekv::kernels::cuda {
namespace {

__global__ void WriteValue(int value, int* out) { *out = value; }

}  // namespace

cudaError_t CountDevices(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    *count = 0;
    cudaGetLastError();  // clear the non-sticky error
    return cudaSuccess;
  }
  return err;
}

cudaError_t GetDeviceInfo(int ordinal, DeviceInfo* info) {
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, ordinal);
  if (err != cudaSuccess) return err;
  info->ordinal = ordinal;
  info->compute_major = prop.major;
  info->compute_minor = prop.minor;
  info->total_memory_bytes = prop.totalGlobalMem;
  std::strncpy(info->name, prop.name, sizeof(info->name) - 1);
  info->name[sizeof(info->name) - 1] = '\0';
  return cudaSuccess;
}

cudaError_t RoundTripOnDevice(int ordinal, int value, int* out) {
  cudaError_t err = cudaSetDevice(ordinal);
  if (err != cudaSuccess) return err;
  int* device_value = nullptr;
  err = cudaMalloc(&device_value, sizeof(int));
  if (err != cudaSuccess) return err;
  WriteValue<<<1, 1>>>(value, device_value);
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    err = cudaMemcpy(out, device_value, sizeof(int), cudaMemcpyDeviceToHost);
  }
  cudaFree(device_value);
  return err;
}

}  // namespace ropekv::kernels::cuda
