// Device discovery for the CUDA backend: how many devices are visible and a
// kernel launch that proves the toolchain and the device work together.
// Framework-free: POD structs and cudaError_t, C++17.
#ifndef ROPEKV_KERNELS_CUDA_DEVICE_INFO_CUH_
#define ROPEKV_KERNELS_CUDA_DEVICE_INFO_CUH_

#include <cuda_runtime_api.h>

namespace ropekv::kernels::cuda {

struct DeviceInfo {
  int ordinal;
  int compute_major;
  int compute_minor;
  size_t total_memory_bytes;
  char name[256];
};

// Number of visible devices; 0 (and cudaSuccess) when there is none.
cudaError_t CountDevices(int* count);

// Properties of device `ordinal`.
cudaError_t GetDeviceInfo(int ordinal, DeviceInfo* info);

// Launches a kernel that writes value into *out on the device and copies it
// back: a smoke test of the toolchain, driver and device.
cudaError_t RoundTripOnDevice(int ordinal, int value, int* out);

}  // namespace ropekv::kernels::cuda

#endif  // ROPEKV_KERNELS_CUDA_DEVICE_INFO_CUH_
