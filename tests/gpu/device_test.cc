// The CUDA toolchain end to end: a kernel built for the configured
// architecture runs on the visible device and returns what it wrote.
#include "gtest/gtest.h"
#include "kernels/cuda/device_info.cuh"

namespace ropekv::kernels::cuda {
namespace {

int VisibleDevices() {
  int count = 0;
  return CountDevices(&count) == cudaSuccess ? count : 0;
}

TEST(DeviceTest, KernelRoundTripOnEveryDevice) {
  const int count = VisibleDevices();
  if (count == 0) GTEST_SKIP() << "no CUDA device visible";
  for (int d = 0; d < count; ++d) {
    DeviceInfo info;
    ASSERT_EQ(GetDeviceInfo(d, &info), cudaSuccess);
    std::printf("[ device   ] %d: %s, compute %d.%d, %.1f GiB\n", d, info.name,
                info.compute_major, info.compute_minor,
                info.total_memory_bytes / 1073741824.0);
    int out = 0;
    ASSERT_EQ(RoundTripOnDevice(d, 0x5EED + d, &out), cudaSuccess);
    EXPECT_EQ(out, 0x5EED + d);
  }
}

}  // namespace
}  // namespace ropekv::kernels::cuda
