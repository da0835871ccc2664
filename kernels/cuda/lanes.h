// What one CUDA call in flight owns: a stream and staging buffers that
// only grow (no allocation once warm), and the parameters of its last
// launches (replayed by the benchmark timers).
//
// Thread safety: a Lane is used by one call at a time (the backend leases
// it); the buffers are not thread-safe.
#ifndef ROPEKV_KERNELS_CUDA_LANES_H_
#define ROPEKV_KERNELS_CUDA_LANES_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>

#include "kernels/cuda/device_plan.cuh"

namespace ropekv::kernels::cuda_host {

namespace dev = ::ropekv::kernels::cuda;

// Memory that only grows (warm-up allocations; none afterwards): device
// memory, or page-locked host memory (kPinned) for asynchronous copies.
template <bool kPinned>
struct GrowingBuffer {
  void* ptr = nullptr;
  size_t size = 0;
  cudaError_t Ensure(size_t bytes) {
    if (bytes <= size) return cudaSuccess;
    const size_t grown = std::max(bytes, size * 2);
    Release();
    const cudaError_t err = kPinned ? cudaMallocHost(&ptr, grown) : cudaMalloc(&ptr, grown);
    if (err == cudaSuccess) size = grown;
    return err;
  }
  void Release() {
    if (ptr != nullptr) kPinned ? cudaFreeHost(ptr) : cudaFree(ptr);
    ptr = nullptr;
    size = 0;
  }
  template <typename T>
  T* as(size_t byte_offset = 0) const { return reinterpret_cast<T*>(static_cast<char*>(ptr) + byte_offset); }
};
using DeviceBuffer = GrowingBuffer<false>;
using PinnedBuffer = GrowingBuffer<true>;

// The device pointers of one AttendBatch group's launches.
struct BatchLaunch {
  const dev::RotateQueryParams* rotate = nullptr;
  const dev::AttendParams* attend = nullptr;
  const dev::MergeParams* merge = nullptr;
  dev::AttendBatchShape shape{};
};

// What one call in flight needs: its own stream and staging buffers. A call
// holds a lane from start to end, so calls on different lanes overlap on
// the device (copies of one with kernels of another) and never share a
// buffer. Buffers only grow: no allocation once warm.
struct Lane {
  cudaStream_t stream = nullptr;
  DeviceBuffer in_k, in_v, out_k, out_v, page_table, rotated, partial_out, partial_lse, out, lse, flag;
  // AttendBatch: inputs [queries | page tables | launch parameters] and
  // outputs [out | lse], each laid out as its pinned twin (one copy each way).
  DeviceBuffer batch_in, batch_out;
  PinnedBuffer pinned_in, pinned_out;
  // The last launches' parameters (pointing into this lane's buffers),
  // replayed by the timing helpers on this lane.
  dev::EncodeParams last_encode = {};
  dev::RotateQueryParams last_rotate = {};
  dev::AttendParams last_attend = {};
  bool last_attend_mma = false;
  BatchLaunch last_batch;
  dev::MergeParams last_merge = {};

  ~Lane() {
    for (DeviceBuffer* b : {&in_k, &in_v, &out_k, &out_v, &page_table, &rotated, &partial_out, &partial_lse,
                            &out, &lse, &flag, &batch_in, &batch_out}) {
      b->Release();
    }
    pinned_in.Release();
    pinned_out.Release();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

}  // namespace ropekv::kernels::cuda_host

#endif  // ROPEKV_KERNELS_CUDA_LANES_H_
