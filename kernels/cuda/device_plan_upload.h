// A layer plan's copy in device memory, as the kernels read it: per head
// the permutation, rotations (as written, transposed for the query
// rotation, and as the encode MMA's B fragments), codebooks and the
// attention kernel's decode tables, all in one blob; and the host-side
// facts the backend chooses kernels by.
//
// Thread safety: pure functions over their arguments.
#ifndef ROPEKV_KERNELS_CUDA_DEVICE_PLAN_UPLOAD_H_
#define ROPEKV_KERNELS_CUDA_DEVICE_PLAN_UPLOAD_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/cuda/device_plan.cuh"
#include "planner/plan.h"

namespace ropekv::kernels::cuda_host {

namespace dev = ::ropekv::kernels::cuda;

// One layer's plans in device memory.
struct DevicePlan {
  void* blob = nullptr;                   // matrices, codebooks, permutations
  dev::HeadPlanDevice* heads = nullptr;   // [num_heads]
  int num_heads = 0;
  int head_dim = 0;
  int max_record_bytes = 0;
  int max_levels = 0;
  int table_bytes = 0;  // tensor-core kernel's decode tables, max over heads
  bool half_levels = false;  // every codebook level an fp16 value (HalfExactLevels)
};

// Builds the device copy of `plan` on the current device. INTERNAL when
// the plan has sizes the kernels have no instance for; when a CUDA call
// fails, sets *cuda_error and returns UNAVAILABLE (the caller maps the
// error), with nothing left allocated.
absl::Status BuildDevicePlan(const planner::LayerPlan& plan, DevicePlan* out, cudaError_t* cuda_error);
void FreeDevicePlan(DevicePlan* plan);

}  // namespace ropekv::kernels::cuda_host

#endif  // ROPEKV_KERNELS_CUDA_DEVICE_PLAN_UPLOAD_H_
