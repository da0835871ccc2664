// A real device fault for tests: a kernel that executes a trap instruction,
// which leaves the device's context unusable (a sticky error) for every
// later CUDA call in the process, as a hardware or kernel fault would.
#ifndef ROPEKV_TESTS_GPU_FAULT_KERNEL_H_
#define ROPEKV_TESTS_GPU_FAULT_KERNEL_H_

#include <cuda_runtime.h>

namespace ropekv::testing {

// Returns the error the trap produced (never cudaSuccess on a working GPU).
cudaError_t CorruptDeviceContext(int device);

}  // namespace ropekv::testing

#endif  // ROPEKV_TESTS_GPU_FAULT_KERNEL_H_
