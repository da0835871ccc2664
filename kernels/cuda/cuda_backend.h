// The CUDA implementation of kernels::Backend: pages in device memory, the
// kernels of codec.cu and attention.cu, host buffers in and out.
//
// Each layer plan is uploaded to the device once and reused, cached by
// plan id (planner::LayerPlan::id) or, for a plan without one, by its full
// content. Each call runs on one of `streams` lanes (a stream with its own
// staging buffers), so up to that many calls proceed concurrently and
// overlap on the device; further calls wait for a lane. CUDA errors map to
// UNAVAILABLE (RESOURCE_EXHAUSTED when memory runs out); a sticky error
// makes every later call fail and healthy() false.
//
// Thread safety: all methods are thread-safe.
#ifndef ROPEKV_KERNELS_CUDA_CUDA_BACKEND_H_
#define ROPEKV_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace ropekv::kernels {

struct CudaBackendOptions {
  int device = 0;
  // Calls in flight at once (streams with their own staging), 1..64.
  int streams = 8;
};

// UNAVAILABLE when no device is visible or the device cannot be used.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options = {});

// Number of visible CUDA devices (0 when none or no driver).
int CudaDeviceCount();

// "<name>, compute X.Y, N GiB" of a device, for logs; "" when unavailable.
std::string CudaDeviceDescription(int device);

// Kernel timings for the benchmark program: runs the device work of one
// Attend (query rotation, split attention, merge) or one EncodeLayer
// `iterations` times back to back on one of the backend's streams, with inputs
// already on the device, and returns the mean microseconds per call
// between CUDA events. REQUIRES: `backend` came from CreateCudaBackend.
struct AttendKernelTimes {
  double total_us = 0;   // the three launches back to back, as a call runs them
  double rotate_us = 0;  // query rotation alone
  double attend_us = 0;  // split attention alone
  double merge_us = 0;   // merge of the splits and value un-rotation alone
  int num_splits = 0;
  bool tensor_cores = false;  // which attention kernel ran
};
absl::StatusOr<AttendKernelTimes> TimeAttendKernels(Backend& backend, const planner::LayerPlan& plan,
                                                    const PagedLayerView& cache,
                                                    const AttentionParams& params, int iterations);
// The launches of one AttendBatch call (rotation, attention and merge, one
// each per group of same-shape items), replayed `iterations` times.
absl::StatusOr<double> TimeAttendBatchKernels(Backend& backend, absl::Span<const Backend::AttendItem> items,
                                              int iterations);
absl::StatusOr<double> TimeEncodeKernel(Backend& backend, const planner::LayerPlan& plan,
                                        const PagedLayerView& cache, const float* keys,
                                        const float* values, int64_t num_tokens, int iterations);

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_CUDA_CUDA_BACKEND_H_
