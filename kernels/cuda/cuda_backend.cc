// Host adapter of the CUDA kernels: plans to the device, host buffers in and
// out, cudaError_t to absl::Status.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cuda/device_plan.cuh"
#include "kernels/cuda/device_plan_upload.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/lanes.h"
#include "kernels/record_runs.h"
#include "kernels/validation.h"
#include "planner/half.h"

namespace ropekv::kernels {
namespace {

namespace dev = ::ropekv::kernels::cuda;
using cuda_host::BatchLaunch;
using cuda_host::DeviceBuffer;
using cuda_host::DevicePlan;
using cuda_host::Lane;
using cuda_host::PinnedBuffer;

// Returns the mapped status from the enclosing method on a CUDA error.
#define RETURN_IF_CUDA(expr, what)                       \
  do {                                                   \
    const cudaError_t err_ = (expr);                     \
    if (err_ != cudaSuccess) return CudaError(err_, what); \
  } while (0)

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, std::vector<std::unique_ptr<Lane>> lanes, int sm_count)
      : device_(device), sm_count_(sm_count), cpu_(CreateCpuBackend({.num_threads = 2})),
        lanes_(std::move(lanes)) {
    for (const auto& l : lanes_) free_lanes_.push_back(l.get());
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    for (auto& [key, plan] : plans_) cuda_host::FreeDevicePlan(&plan);
    for (auto& [content, plan] : anonymous_plans_) cuda_host::FreeDevicePlan(&plan);
    lanes_.clear();
  }

  const char* name() const override { return "cuda"; }
  bool healthy() const override {
    absl::MutexLock lock(&sticky_mu_);
    return sticky_.ok();
  }

  // A lane for the duration of one call (waits while all are busy), with
  // this backend's device current on the calling thread.
  class LaneLease {
   public:
    explicit LaneLease(CudaBackend* b) : b_(b) {
      b_->pool_mu_.LockWhen(absl::Condition(
          +[](std::vector<Lane*>* free) { return !free->empty(); }, &b_->free_lanes_));
      lane_ = b_->free_lanes_.back();
      b_->free_lanes_.pop_back();
      b_->pool_mu_.Unlock();
      cudaSetDevice(b_->device_);
    }
    ~LaneLease() {
      absl::MutexLock lock(&b_->pool_mu_);
      b_->free_lanes_.push_back(lane_);
    }
    Lane& operator*() const { return *lane_; }

   private:
    CudaBackend* b_;
    Lane* lane_;
  };

  absl::Status Sticky() const {
    absl::MutexLock lock(&sticky_mu_);
    return sticky_;
  }

  absl::Status EncodeLayer(const planner::LayerPlan& plan, const PagedLayerView& cache,
                           int64_t first_token, const float* keys, const float* values,
                           int64_t num_tokens) override {
    LaneLease lane(this);
    return EncodeOn(*lane, plan, cache, first_token, keys, values, num_tokens);
  }

  absl::Status EncodeOn(Lane& ln, const planner::LayerPlan& plan, const PagedLayerView& cache,
                        int64_t first_token, const float* keys, const float* values, int64_t num_tokens) {
    if (absl::Status s = CheckDeviceView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckWriteRange(cache, first_token, num_tokens); !s.ok()) return s;
    if (num_tokens == 0) return absl::OkStatus();
    const int d = plan.heads[0].head_dim;
    const size_t n = plan.heads.size() * static_cast<size_t>(num_tokens) * d;
    for (const float* src : {keys, values}) {
      if (const int64_t i = planner::FirstNonFinite(src, static_cast<int64_t>(n)); i >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            src == keys ? "key" : "value", ": expected finite values, got ", src[i],
            " at kv_head ", i / (num_tokens * d), " token ", first_token + i / d % num_tokens));
      }
    }
    if (absl::Status s = Sticky(); !s.ok()) return s;
    absl::StatusOr<const DevicePlan*> dp = Upload(plan);
    if (!dp.ok()) return dp.status();
    RETURN_IF_CUDA(ln.in_k.Ensure(n * 4), "staging");
    RETURN_IF_CUDA(ln.in_v.Ensure(n * 4), "staging");
    RETURN_IF_CUDA(ln.flag.Ensure(4), "flag");
    RETURN_IF_CUDA(cudaMemcpyAsync(ln.in_k.ptr, keys, n * 4, cudaMemcpyHostToDevice, ln.stream), "copy keys");
    RETURN_IF_CUDA(cudaMemcpyAsync(ln.in_v.ptr, values, n * 4, cudaMemcpyHostToDevice, ln.stream), "copy values");
    RETURN_IF_CUDA(cudaMemsetAsync(ln.flag.ptr, 0, 4, ln.stream), "flag");
    dev::EncodeParams p{};
    p.heads = (*dp)->heads;
    p.num_heads = (*dp)->num_heads;
    p.head_dim = d;
    p.keys = ln.in_k.as<float>();
    p.values = ln.in_v.as<float>();
    p.num_tokens = num_tokens;
    p.first_token = first_token;
    absl::StatusOr<dev::PagedLayerDevice> pages = UploadPages(ln, cache);
    if (!pages.ok()) return pages.status();
    p.cache = *pages;
    p.overflow = ln.flag.as<int>();
    p.max_levels = (*dp)->max_levels;
    ln.last_encode = p;
    RETURN_IF_CUDA(dev::LaunchEncode(p, ln.stream), "encode launch");
    int overflow = 0;
    RETURN_IF_CUDA(cudaMemcpyAsync(&overflow, ln.flag.ptr, 4, cudaMemcpyDeviceToHost, ln.stream), "flag");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "encode");
    if (overflow != 0) {
      const char* what = overflow == dev::kOverflowKeys     ? "keys"
                         : overflow == dev::kOverflowValues ? "values"
                                                            : "keys and values";
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a vector norm is beyond the fp16 range of stored norms (65504)"));
    }
    return absl::OkStatus();
  }

  absl::Status DecodeLayer(const planner::LayerPlan& plan, const PagedLayerView& cache,
                           int64_t first_token, int64_t num_tokens, float* keys,
                           float* values) override {
    if (absl::Status s = CheckDeviceView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckReadRange(cache, first_token, num_tokens); !s.ok()) return s;
    if (num_tokens == 0) return absl::OkStatus();
    LaneLease lane(this);
    Lane& ln = *lane;
    if (absl::Status s = Sticky(); !s.ok()) return s;
    absl::StatusOr<const DevicePlan*> dp = Upload(plan);
    if (!dp.ok()) return dp.status();
    const size_t n = plan.heads.size() * static_cast<size_t>(num_tokens) * (*dp)->head_dim;
    RETURN_IF_CUDA(ln.out_k.Ensure(n * 4), "staging");
    RETURN_IF_CUDA(ln.out_v.Ensure(n * 4), "staging");
    dev::DecodeParams p{};
    p.heads = (*dp)->heads;
    p.num_heads = (*dp)->num_heads;
    p.head_dim = (*dp)->head_dim;
    p.first_token = first_token;
    p.num_tokens = num_tokens;
    absl::StatusOr<dev::PagedLayerDevice> pages = UploadPages(ln, cache);
    if (!pages.ok()) return pages.status();
    p.cache = *pages;
    p.keys = keys != nullptr ? ln.out_k.as<float>() : nullptr;
    p.values = values != nullptr ? ln.out_v.as<float>() : nullptr;
    RETURN_IF_CUDA(dev::LaunchDecode(p, ln.stream), "decode launch");
    if (keys != nullptr) RETURN_IF_CUDA(cudaMemcpyAsync(keys, ln.out_k.ptr, n * 4, cudaMemcpyDeviceToHost, ln.stream), "copy");
    if (values != nullptr) RETURN_IF_CUDA(cudaMemcpyAsync(values, ln.out_v.ptr, n * 4, cudaMemcpyDeviceToHost, ln.stream), "copy");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "decode");
    return absl::OkStatus();
  }

  // The tensor-core kernel needs 16-token tiles that never straddle a page,
  // 16-byte aligned pages, tiles that fit in shared memory and fp16
  // codebook levels; anything else takes the scalar kernel.
  static bool MmaEligible(const DevicePlan& dp, const PagedLayerView& cache, int64_t end, int rows) {
    return dev::AttendMmaSupports(dp.head_dim, rows, dp.max_record_bytes, dp.table_bytes) &&
           cache.page_tokens % dev::kPageTokenMultiple == 0 &&
           end < (int64_t{1} << 31) && dp.half_levels &&
           std::all_of(cache.pages, cache.pages + cache.num_pages, [](const uint8_t* page) {
             return reinterpret_cast<uintptr_t>(page) % dev::kPageAlignment == 0;
           });
  }

  // Splits of one item's token range: a few blocks per SM in flight over
  // the whole launch (`items` items of the same size), each block with
  // enough tiles to amortise its set-up (decode tables, query fragments).
  std::pair<int64_t, int64_t> Splits(int64_t tokens, int num_kv, bool mma, int items) const {
    const int64_t tile = 128;  // tokens: a tile per warp at least
    const int64_t tiles = std::max<int64_t>(1, (tokens + tile - 1) / tile);
    const int64_t waves = mma ? 4 : 8;
    const int64_t blocks = std::max<int64_t>(1, (waves * sm_count_ + int64_t{num_kv} * items - 1) / (int64_t{num_kv} * items));
    int64_t splits = std::min<int64_t>({tiles, int64_t{dev::kMaxSplits}, blocks});
    const int64_t per_split = ((tiles + splits - 1) / splits) * tile;
    splits = std::max<int64_t>(1, (tokens + per_split - 1) / per_split);
    return {splits, per_split};
  }

  // The attention kernels' parameters of one item: filled here only, for
  // single calls and batches alike.
  static dev::AttendParams LaunchParams(const DevicePlan& dp, const AttentionParams& a, int64_t end, int rows,
                                        float* rotated, dev::PagedLayerDevice pages, int64_t splits,
                                        int64_t per_split, float* partial_out, float* partial_lse) {
    dev::AttendParams p{};
    p.heads = dp.heads;
    p.num_kv_heads = dp.num_heads;
    p.head_dim = dp.head_dim;
    p.rows = rows;
    p.q_len = a.q_len;
    p.rotated = rotated;
    p.causal = a.causal ? 1 : 0;
    p.causal_offset = a.causal_offset;
    p.scale = a.scale;
    p.token_begin = a.token_begin;
    p.token_end = end;
    p.cache = pages;
    p.num_splits = static_cast<int>(splits);
    p.tokens_per_split = per_split;
    p.max_record_bytes = dp.max_record_bytes;
    p.max_levels = dp.max_levels;
    p.table_bytes = dp.table_bytes;
    p.partial_out = partial_out;
    p.partial_lse = partial_lse;
    return p;
  }

  absl::Status AttendBatch(absl::Span<const AttendItem> items) override {
    LaneLease lane(this);
    return AttendBatchOn(*lane, items);
  }

  absl::Status AttendBatchOn(Lane& ln, absl::Span<const AttendItem> items) {
    std::map<std::tuple<int, int, int>, std::vector<size_t>> groups;  // (head_dim, KV heads, rows)
    std::vector<size_t> singles;
    std::vector<int64_t> ends(items.size());
    auto indexed = [](size_t i, const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("item ", i, ": ", s.message()));
    };
    for (size_t i = 0; i < items.size(); ++i) {
      const AttendItem& it = items[i];
      if (it.plan == nullptr) return indexed(i, absl::InvalidArgumentError("plan: expected a layer plan"));
      if (absl::Status s = CheckDeviceView(*it.plan, it.cache); !s.ok()) return indexed(i, s);
      absl::StatusOr<int64_t> end = CheckAttention(*it.plan, it.cache, it.params);
      if (!end.ok()) return indexed(i, end.status());
      ends[i] = *end;
      const int num_kv = static_cast<int>(it.plan->heads.size()), d = it.plan->heads[0].head_dim;
      const int rows = it.params.num_q_heads / num_kv * it.params.q_len;
      absl::StatusOr<const DevicePlan*> dp = Upload(*it.plan);
      if (!dp.ok()) return indexed(i, dp.status());
      if (MmaEligible(**dp, it.cache, *end, rows)) {
        groups[{d, num_kv, rows}].push_back(i);
      } else {
        singles.push_back(i);
      }
    }
    for (size_t i : singles) {
      if (absl::Status s = AttendOn(ln, *items[i].plan, items[i].cache, items[i].params); !s.ok()) {
        return indexed(i, s);
      }
    }
    for (const auto& [shape, idx] : groups) {
      if (absl::Status s = AttendGroup(ln, items, ends, idx); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One launch of each kernel for items of one shape: queries, page tables
  // and parameters go up in three copies from pinned memory, outputs come
  // back in one.
  absl::Status AttendGroup(Lane& ln, absl::Span<const AttendItem> items, const std::vector<int64_t>& ends,
                           const std::vector<size_t>& idx) {
    if (absl::Status s = Sticky(); !s.ok()) return s;
    const size_t n = idx.size();
    const AttendItem& first = items[idx[0]];
    const int num_kv = static_cast<int>(first.plan->heads.size()), d = first.plan->heads[0].head_dim;
    const int num_q = first.params.num_q_heads, q_len = first.params.q_len;
    const int group = num_q / num_kv, rows = group * q_len;
    const size_t q_floats = static_cast<size_t>(num_q) * q_len * d, lse_floats = static_cast<size_t>(num_q) * q_len;
    std::vector<const DevicePlan*> plans(n);
    std::vector<int64_t> splits(n), per_split(n), split_base(n), page_base(n);
    int64_t total_splits = 0, total_pages = 0;
    dev::AttendBatchShape shape{static_cast<int>(n), num_kv, d, rows, 0, 0, 0};
    for (size_t k = 0; k < n; ++k) {
      const AttendItem& it = items[idx[k]];
      absl::StatusOr<const DevicePlan*> dp = Upload(*it.plan);
      if (!dp.ok()) return dp.status();
      plans[k] = *dp;
      std::tie(splits[k], per_split[k]) = Splits(ends[idx[k]] - it.params.token_begin, num_kv, true, static_cast<int>(n));
      split_base[k] = total_splits;
      total_splits += splits[k];
      page_base[k] = total_pages;
      total_pages += it.cache.num_pages;
      shape.max_splits = std::max(shape.max_splits, static_cast<int>(splits[k]));
      shape.max_record_bytes = std::max(shape.max_record_bytes, (*dp)->max_record_bytes);
      shape.table_bytes = std::max(shape.table_bytes, (*dp)->table_bytes);
    }
    const size_t params_bytes = n * (sizeof(dev::RotateQueryParams) + sizeof(dev::AttendParams) + sizeof(dev::MergeParams));
    const size_t pages_bytes = static_cast<size_t>(std::max<int64_t>(1, total_pages)) * sizeof(uint8_t*);
    // Input block [queries | page tables | parameters], the parameters
    // 256-byte aligned like a fresh allocation; output block [out | lse].
    const size_t in_q = n * q_floats * 4;
    const size_t params_at = (in_q + pages_bytes + 255) / 256 * 256;
    const size_t in_bytes = params_at + params_bytes;
    const size_t out_bytes = n * (q_floats + lse_floats) * 4;
    RETURN_IF_CUDA(ln.rotated.Ensure(n * q_floats * 4), "staging");
    RETURN_IF_CUDA(ln.partial_out.Ensure(static_cast<size_t>(total_splits) * num_kv * rows * d * 4), "workspace");
    RETURN_IF_CUDA(ln.partial_lse.Ensure(static_cast<size_t>(total_splits) * num_kv * rows * 4), "workspace");
    RETURN_IF_CUDA(ln.batch_in.Ensure(in_bytes), "staging");
    RETURN_IF_CUDA(ln.batch_out.Ensure(out_bytes), "staging");
    RETURN_IF_CUDA(ln.pinned_in.Ensure(in_bytes), "pinned staging");
    RETURN_IF_CUDA(ln.pinned_out.Ensure(out_bytes), "pinned staging");

    char* const dev_in = ln.batch_in.as<char>();
    float* const dev_out = ln.batch_out.as<float>();
    auto* rq = ln.pinned_in.as<dev::RotateQueryParams>(params_at);
    auto* ap = reinterpret_cast<dev::AttendParams*>(rq + n);
    auto* mp = reinterpret_cast<dev::MergeParams*>(ap + n);
    auto* d_rq = reinterpret_cast<dev::RotateQueryParams*>(dev_in + params_at);
    auto* d_ap = reinterpret_cast<dev::AttendParams*>(d_rq + n);
    auto* d_mp = reinterpret_cast<dev::MergeParams*>(d_ap + n);
    uint8_t** host_pages = ln.pinned_in.as<uint8_t*>(in_q);
    uint8_t* const* dev_pages = reinterpret_cast<uint8_t* const*>(dev_in + in_q);
    for (size_t k = 0; k < n; ++k) {
      const AttendItem& it = items[idx[k]];
      std::memcpy(ln.pinned_in.as<float>(k * q_floats * 4), it.params.queries, q_floats * 4);
      std::copy(it.cache.pages, it.cache.pages + it.cache.num_pages, host_pages + page_base[k]);
      float* q_dev = reinterpret_cast<float*>(dev_in) + k * q_floats;
      float* rot_dev = ln.rotated.as<float>() + k * q_floats;
      float* po = ln.partial_out.as<float>() + split_base[k] * num_kv * rows * d;
      float* pl = ln.partial_lse.as<float>() + split_base[k] * num_kv * rows;
      rq[k] = dev::RotateQueryParams{plans[k]->heads, num_kv, d, group, q_len, q_dev, rot_dev};
      ap[k] = LaunchParams(*plans[k], it.params, ends[idx[k]], rows, rot_dev,
                           dev::PagedLayerDevice{dev_pages + page_base[k], it.cache.page_tokens}, splits[k],
                           per_split[k], po, pl);
      mp[k] = dev::MergeParams{plans[k]->heads, num_kv, d, group, q_len, static_cast<int>(splits[k]), po, pl,
                               dev_out + k * q_floats, dev_out + n * q_floats + k * lse_floats};
    }
    // One copy up, three launches, one copy down, one synchronisation of
    // this lane's stream.
    RETURN_IF_CUDA(cudaMemcpyAsync(dev_in, ln.pinned_in.ptr, in_bytes, cudaMemcpyHostToDevice, ln.stream), "copy inputs");
    ln.last_batch = {d_rq, d_ap, d_mp, shape};
    RETURN_IF_CUDA(LaunchBatch(ln, ln.last_batch), "attend launch");
    RETURN_IF_CUDA(cudaMemcpyAsync(ln.pinned_out.ptr, dev_out, out_bytes, cudaMemcpyDeviceToHost, ln.stream), "copy outputs");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "attend");
    for (size_t k = 0; k < n; ++k) {
      const AttendItem& it = items[idx[k]];
      std::memcpy(it.params.out, ln.pinned_out.as<float>(k * q_floats * 4), q_floats * 4);
      std::memcpy(it.params.lse, ln.pinned_out.as<float>((n * q_floats + k * lse_floats) * 4), lse_floats * 4);
    }
    return absl::OkStatus();
  }

  static cudaError_t LaunchBatch(Lane& ln, const BatchLaunch& b) {
    cudaError_t e = dev::LaunchRotateQueriesBatch(b.rotate, b.shape, ln.stream);
    if (e == cudaSuccess) e = dev::LaunchAttendMmaBatch(b.attend, b.shape, ln.stream);
    if (e == cudaSuccess) e = dev::LaunchMergeBatch(b.merge, b.shape, ln.stream);
    return e;
  }

  // Benchmark support: one real AttendBatch call, then its launches
  // replayed between events.
  absl::StatusOr<double> TimeAttendBatch(absl::Span<const AttendItem> items, int iterations) {
    LaneLease lane(this);
    Lane& ln = *lane;
    if (absl::Status s = AttendBatchOn(ln, items); !s.ok()) return s;
    const BatchLaunch b = ln.last_batch;
    return TimeLaunches(ln, iterations, [&] { return LaunchBatch(ln, b); });
  }

  absl::Status Attend(const planner::LayerPlan& plan, const PagedLayerView& cache,
                      const AttentionParams& a) override {
    LaneLease lane(this);
    return AttendOn(*lane, plan, cache, a);
  }

  absl::Status AttendOn(Lane& ln, const planner::LayerPlan& plan, const PagedLayerView& cache,
                        const AttentionParams& a) {
    if (absl::Status s = CheckDeviceView(plan, cache); !s.ok()) return s;
    absl::StatusOr<int64_t> checked = CheckAttention(plan, cache, a);
    if (!checked.ok()) return checked.status();
    const int64_t end = *checked;
    const int num_kv = static_cast<int>(plan.heads.size());
    if (absl::Status s = Sticky(); !s.ok()) return s;
    absl::StatusOr<const DevicePlan*> dp = Upload(plan);
    if (!dp.ok()) return dp.status();
    const int d = (*dp)->head_dim;
    const int group = a.num_q_heads / num_kv;
    const int rows = group * a.q_len;
    const size_t q_floats = static_cast<size_t>(a.num_q_heads) * a.q_len * d;
    const int64_t tokens = end - a.token_begin;
    const bool mma = MmaEligible(**dp, cache, end, rows);
    const auto [splits, per_split] = Splits(tokens, num_kv, mma, 1);
    RETURN_IF_CUDA(ln.in_k.Ensure(q_floats * 4), "staging");
    RETURN_IF_CUDA(ln.rotated.Ensure(q_floats * 4), "staging");
    RETURN_IF_CUDA(ln.partial_out.Ensure(static_cast<size_t>(num_kv) * splits * rows * d * 4), "workspace");
    RETURN_IF_CUDA(ln.partial_lse.Ensure(static_cast<size_t>(num_kv) * splits * rows * 4), "workspace");
    RETURN_IF_CUDA(ln.out.Ensure(q_floats * 4), "staging");
    RETURN_IF_CUDA(ln.lse.Ensure(static_cast<size_t>(a.num_q_heads) * a.q_len * 4), "staging");
    RETURN_IF_CUDA(cudaMemcpyAsync(ln.in_k.ptr, a.queries, q_floats * 4, cudaMemcpyHostToDevice, ln.stream), "copy queries");
    absl::StatusOr<dev::PagedLayerDevice> pages = UploadPages(ln, cache);
    if (!pages.ok()) return pages.status();

    dev::RotateQueryParams rq{(*dp)->heads, num_kv, d, group, a.q_len, ln.in_k.as<float>(),
                              ln.rotated.as<float>()};
    ln.last_rotate = rq;
    RETURN_IF_CUDA(dev::LaunchRotateQueries(rq, ln.stream), "rotate launch");
    const dev::AttendParams ap = LaunchParams(**dp, a, end, rows, ln.rotated.as<float>(), *pages, splits, per_split,
                                              ln.partial_out.as<float>(), ln.partial_lse.as<float>());
    ln.last_attend = ap;
    ln.last_attend_mma = mma;
    RETURN_IF_CUDA(mma ? dev::LaunchAttendMma(ap, ln.stream) : dev::LaunchAttend(ap, ln.stream), "attend launch");
    dev::MergeParams mp{(*dp)->heads, num_kv, d, group, a.q_len, static_cast<int>(splits),
                        ln.partial_out.as<float>(), ln.partial_lse.as<float>(), ln.out.as<float>(),
                        ln.lse.as<float>()};
    ln.last_merge = mp;
    RETURN_IF_CUDA(dev::LaunchMerge(mp, ln.stream), "merge launch");
    RETURN_IF_CUDA(cudaMemcpyAsync(a.out, ln.out.ptr, q_floats * 4, cudaMemcpyDeviceToHost, ln.stream), "copy out");
    RETURN_IF_CUDA(cudaMemcpyAsync(a.lse, ln.lse.ptr, static_cast<size_t>(a.num_q_heads) * a.q_len * 4,
                                   cudaMemcpyDeviceToHost, ln.stream), "copy lse");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "attend");
    return absl::OkStatus();
  }

  // Benchmark support (see cuda_backend.h): the same launches as Attend /
  // EncodeLayer, repeated between events.
  absl::StatusOr<AttendKernelTimes> TimeAttend(const planner::LayerPlan& plan, const PagedLayerView& cache,
                                               const AttentionParams& a, int iterations) {
    // One real call stages queries, page table and workspace on the device.
    std::vector<float> out(static_cast<size_t>(a.num_q_heads) * a.q_len * plan.heads[0].head_dim);
    std::vector<float> lse(static_cast<size_t>(a.num_q_heads) * a.q_len);
    AttentionParams warm = a;
    warm.out = out.data();
    warm.lse = lse.data();
    LaneLease lane(this);
    Lane& ln = *lane;
    if (absl::Status s = AttendOn(ln, plan, cache, warm); !s.ok()) return s;
    auto rotate = [&] { return dev::LaunchRotateQueries(ln.last_rotate, ln.stream); };
    auto attend = [&] {
      return ln.last_attend_mma ? dev::LaunchAttendMma(ln.last_attend, ln.stream) : dev::LaunchAttend(ln.last_attend, ln.stream);
    };
    auto merge = [&] { return dev::LaunchMerge(ln.last_merge, ln.stream); };
    AttendKernelTimes t;
    t.num_splits = ln.last_attend.num_splits;
    t.tensor_cores = ln.last_attend_mma;
    absl::StatusOr<double> us = TimeLaunches(ln, iterations, [&] {
      cudaError_t e = rotate();
      if (e == cudaSuccess) e = attend();
      if (e == cudaSuccess) e = merge();
      return e;
    });
    if (!us.ok()) return us.status();
    t.total_us = *us;
    for (auto [launch, field] : {std::pair<std::function<cudaError_t()>, double*>{rotate, &t.rotate_us},
                                 {attend, &t.attend_us}, {merge, &t.merge_us}}) {
      us = TimeLaunches(ln, iterations, launch);
      if (!us.ok()) return us.status();
      *field = *us;
    }
    return t;
  }

  absl::StatusOr<double> TimeEncode(const planner::LayerPlan& plan, const PagedLayerView& cache,
                                    const float* keys, const float* values, int64_t n,
                                    int iterations) {
    LaneLease lane(this);
    Lane& ln = *lane;
    if (absl::Status s = EncodeOn(ln, plan, cache, 0, keys, values, n); !s.ok()) return s;
    return TimeLaunches(ln, iterations, [&] { return dev::LaunchEncode(ln.last_encode, ln.stream); });
  }

  absl::Status AttendDense(int num_kv, int head_dim, const DenseKvView& kv,
                           const AttentionParams& p) override {
    return cpu_->AttendDense(num_kv, head_dim, kv, p);  // fp16 tokens live in host memory
  }

  absl::Status MergeStates(const MergeParams& p) override { return cpu_->MergeStates(p); }

  absl::StatusOr<uint8_t*> AllocateArena(int64_t bytes) override {
    cudaSetDevice(device_);
    void* ptr = nullptr;
    const cudaError_t err = cudaMalloc(&ptr, static_cast<size_t>(bytes));
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot reserve ", bytes, " bytes of device memory: ", cudaGetErrorString(err)));
    }
    return static_cast<uint8_t*>(ptr);
  }

  void FreeArena(uint8_t* arena) override { cudaFree(arena); }

  void ForgetPlan(uint64_t plan_id) override ABSL_LOCKS_EXCLUDED(plans_mu_) {
    if (plan_id == 0) return;
    absl::MutexLock lock(&plans_mu_);
    auto it = plans_.find(plan_id);
    if (it == plans_.end()) return;
    cudaSetDevice(device_);
    cuda_host::FreeDevicePlan(&it->second);
    plans_.erase(it);
  }

  // The tensor-core attention reads 16-token tiles with 16-byte copies:
  // tiles never straddle a page and pages start 16-byte aligned.
  PageConstraints page_constraints() const override {
    return {.token_multiple = dev::kPageTokenMultiple, .alignment = dev::kPageAlignment};
  }

  absl::Status WriteRecords(const planner::LayerPlan& plan, const PagedLayerView& cache,
                            int64_t first, int64_t n, const uint8_t* records) override {
    if (absl::Status s = CheckDeviceView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckWriteRange(cache, first, n); !s.ok()) return s;
    if (absl::Status s = CheckRecords(plan, records, n); !s.ok()) return s;
    if (absl::Status s = Sticky(); !s.ok()) return s;
    LaneLease lane(this);
    Lane& ln = *lane;
    cudaError_t err = cudaSuccess;
    ForEachRecordRun(plan, cache, first, n, [&](uint8_t* dst, int64_t bytes) {
      if (err == cudaSuccess) err = cudaMemcpyAsync(dst, records, bytes, cudaMemcpyHostToDevice, ln.stream);
      records += bytes;
    });
    RETURN_IF_CUDA(err, "copy records");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "write records");
    return absl::OkStatus();
  }

  absl::Status ReadRecords(const planner::LayerPlan& plan, const PagedLayerView& cache,
                           int64_t first, int64_t n, uint8_t* out) override {
    if (absl::Status s = CheckDeviceView(plan, cache); !s.ok()) return s;
    if (absl::Status s = CheckReadRange(cache, first, n); !s.ok()) return s;
    if (absl::Status s = Sticky(); !s.ok()) return s;
    LaneLease lane(this);
    Lane& ln = *lane;
    cudaError_t err = cudaSuccess;
    ForEachRecordRun(plan, cache, first, n, [&](const uint8_t* src, int64_t bytes) {
      if (err == cudaSuccess) err = cudaMemcpyAsync(out, src, bytes, cudaMemcpyDeviceToHost, ln.stream);
      out += bytes;
    });
    RETURN_IF_CUDA(err, "copy records");
    RETURN_IF_CUDA(cudaStreamSynchronize(ln.stream), "read records");
    return absl::OkStatus();
  }

 private:
  absl::Status CudaError(cudaError_t err, const char* what) ABSL_LOCKS_EXCLUDED(sticky_mu_) {
    const std::string message =
        absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
    // A size the kernels have no instance for: a bug, since plans are
    // validated before they get here.
    if (err == dev::kNoKernelInstance) {
      cudaGetLastError();
      return absl::InternalError(absl::StrCat("no CUDA kernel instance in ", what, " for this plan"));
    }
    // Out of device or pinned memory: the caller may retry with less.
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(message);
    }
    const absl::Status s = absl::UnavailableError(message);
    // Errors that leave the context unusable are sticky.
    if (err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure ||
        err == cudaErrorHardwareStackError || err == cudaErrorIllegalInstruction ||
        err == cudaErrorMisalignedAddress || err == cudaErrorInvalidAddressSpace ||
        err == cudaErrorInvalidPc || err == cudaErrorECCUncorrectable ||
        err == cudaErrorAssert || err == cudaErrorLaunchTimeout) {
      absl::MutexLock lock(&sticky_mu_);
      if (sticky_.ok()) sticky_ = s;
    } else {
      cudaGetLastError();  // clear a non-sticky error
    }
    return s;
  }

  template <typename Launch>
  absl::StatusOr<double> TimeLaunches(Lane& ln, int iterations, Launch launch) {
    cudaEvent_t start, stop;
    RETURN_IF_CUDA(cudaEventCreate(&start), "event");
    RETURN_IF_CUDA(cudaEventCreate(&stop), "event");
    for (int i = 0; i < 3; ++i) RETURN_IF_CUDA(launch(), "warm-up");
    RETURN_IF_CUDA(cudaEventRecord(start, ln.stream), "event");
    for (int i = 0; i < iterations; ++i) RETURN_IF_CUDA(launch(), "timed launch");
    RETURN_IF_CUDA(cudaEventRecord(stop, ln.stream), "event");
    RETURN_IF_CUDA(cudaEventSynchronize(stop), "event");
    float ms = 0;
    RETURN_IF_CUDA(cudaEventElapsedTime(&ms, start, stop), "event");
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return 1000.0 * ms / iterations;
  }

  // The shared checks plus what only the kernels limit.
  static absl::Status CheckDeviceView(const planner::LayerPlan& plan, const PagedLayerView& c) {
    if (absl::Status s = CheckView(plan, c); !s.ok()) return s;
    if (plan.heads[0].head_dim > dev::kMaxHeadDim) {
      return absl::InvalidArgumentError(absl::StrCat("head_dim: expected <= ", dev::kMaxHeadDim,
                                                     " for the CUDA kernels"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<dev::PagedLayerDevice> UploadPages(Lane& ln, const PagedLayerView& c) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(1, c.num_pages)) * sizeof(uint8_t*);
    RETURN_IF_CUDA(ln.page_table.Ensure(bytes), "page table");
    if (c.num_pages > 0) {
      RETURN_IF_CUDA(cudaMemcpyAsync(ln.page_table.ptr, c.pages, c.num_pages * sizeof(uint8_t*),
                                     cudaMemcpyHostToDevice, ln.stream), "page table");
    }
    return dev::PagedLayerDevice{ln.page_table.as<uint8_t* const>(), c.page_tokens};
  }

  // The plan on the device, uploaded on first use (synchronously; plans
  // are few and stay until the backend goes).
  absl::StatusOr<const DevicePlan*> Upload(const planner::LayerPlan& plan) ABSL_LOCKS_EXCLUDED(plans_mu_) {
    absl::MutexLock lock(&plans_mu_);
    if (plan.id != 0) {
      auto it = plans_.find(plan.id);
      if (it != plans_.end()) return &it->second;
    } else {
      for (const auto& [content, dp] : anonymous_plans_) {
        if (content == plan) return &dp;
      }
    }
    DevicePlan dp;
    cudaError_t upload_error = cudaSuccess;
    if (absl::Status st = cuda_host::BuildDevicePlan(plan, &dp, &upload_error); !st.ok()) {
      return upload_error != cudaSuccess ? CudaError(upload_error, "plan upload") : st;
    }
    if (plan.id == 0) {
      anonymous_plans_.emplace_back(plan, dp);
      return &anonymous_plans_.back().second;
    }
    return &plans_.emplace(plan.id, dp).first->second;
  }

  const int device_;
  const int sm_count_;
  std::unique_ptr<Backend> cpu_;  // fp16 sinks/window and merges of host data
  // Lock order: pool_mu_, plans_mu_, sticky_mu_ (never the reverse).
  mutable absl::Mutex sticky_mu_;
  absl::Status sticky_ ABSL_GUARDED_BY(sticky_mu_);
  absl::Mutex plans_mu_;
  // Device plans by plan id (planner::LayerPlan::id: equal ids, equal
  // content), and those of plans without an id with a copy of their
  // content, compared in full on every lookup (only plans made by hand).
  std::map<uint64_t, DevicePlan> plans_ ABSL_GUARDED_BY(plans_mu_);
  std::deque<std::pair<planner::LayerPlan, DevicePlan>> anonymous_plans_ ABSL_GUARDED_BY(plans_mu_);
  std::vector<std::unique_ptr<Lane>> lanes_;
  absl::Mutex pool_mu_;
  std::vector<Lane*> free_lanes_ ABSL_GUARDED_BY(pool_mu_);
};

}  // namespace

absl::StatusOr<AttendKernelTimes> TimeAttendKernels(Backend& backend, const planner::LayerPlan& plan,
                                                    const PagedLayerView& cache,
                                                    const AttentionParams& params, int iterations) {
  return static_cast<CudaBackend&>(backend).TimeAttend(plan, cache, params, iterations);
}

absl::StatusOr<double> TimeAttendBatchKernels(Backend& backend, absl::Span<const Backend::AttendItem> items,
                                              int iterations) {
  return static_cast<CudaBackend&>(backend).TimeAttendBatch(items, iterations);
}

absl::StatusOr<double> TimeEncodeKernel(Backend& backend, const planner::LayerPlan& plan,
                                        const PagedLayerView& cache, const float* keys,
                                        const float* values, int64_t num_tokens, int iterations) {
  return static_cast<CudaBackend&>(backend).TimeEncode(plan, cache, keys, values, num_tokens,
                                                       iterations);
}

std::string CudaDeviceDescription(int device) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return absl::StrCat(prop.name, ", compute ", prop.major, ".", prop.minor, ", ",
                      prop.totalGlobalMem >> 30, " GiB");
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  const int count = CudaDeviceCount();
  if (options.device < 0 || options.device >= count) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", options.device, " not visible (",
                                               count, " devices)"));
  }
  cudaError_t err = cudaSetDevice(options.device);
  int sms = 0;
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, options.device);
  if (options.streams < 1 || options.streams > 64) {
    return absl::InvalidArgumentError(absl::StrCat("streams: expected 1..64, got ", options.streams));
  }
  std::vector<std::unique_ptr<Lane>> lanes;
  for (int i = 0; i < options.streams && err == cudaSuccess; ++i) {
    lanes.push_back(std::make_unique<Lane>());
    err = cudaStreamCreateWithFlags(&lanes.back()->stream, cudaStreamNonBlocking);
  }
  if (err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", options.device, ": ", cudaGetErrorString(err)));
  }
  return std::unique_ptr<Backend>(new CudaBackend(options.device, std::move(lanes), sms));
}

}  // namespace ropekv::kernels
