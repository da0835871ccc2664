// Load generation and latency statistics for ropekv-bench.
//
// RunLoad drives an operation from `concurrency` worker threads, either
//   - closed loop (rate == 0): each worker issues its next call as soon as
//     the previous one returns; latency = call time; or
//   - open loop (rate > 0): calls are due at fixed intervals of 1/rate (or
//     exponential gaps with `poisson`), shared by the workers; latency is
//     measured from the time a call was due, not from when a worker got
//     to it, so queueing behind a slow server shows in the percentiles
//     (no coordinated omission).
// Calls due (open loop) or started (closed loop) during the warm-up are
// run but not counted. Every failure is counted by status code.
//
// LatencyHistogram keeps counts in log-linear buckets: 128 sub-buckets per
// power of two, so any percentile it reports is within 1/128 (< 0.8%) of
// the exact value of some sample at that rank.
//
// Thread safety: LatencyHistogram is not synchronised (one per worker,
// merged at the end); RunLoad calls `op` concurrently from its workers.
#ifndef ROPEKV_CLIENT_BENCH_LOAD_H_
#define ROPEKV_CLIENT_BENCH_LOAD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace ropekv::client {

class LatencyHistogram {
 public:
  static constexpr int kSubBits = 7;  // 2^7 sub-buckets per octave

  void Record(int64_t nanos);
  void Merge(const LatencyHistogram& other);
  int64_t count() const { return count_; }
  int64_t min() const { return count_ > 0 ? min_ : 0; }
  int64_t max() const { return max_; }
  double mean() const { return count_ > 0 ? sum_ / count_ : 0.0; }
  // The value at quantile q in [0, 1] (nearest rank), to within the bucket
  // width; 0 when empty.
  int64_t Percentile(double q) const;

 private:
  static int BucketOf(int64_t v);
  static int64_t BucketLow(int b);
  std::vector<int64_t> counts_;
  int64_t count_ = 0;
  int64_t min_ = INT64_MAX;
  int64_t max_ = 0;
  double sum_ = 0;
};

struct LoadOptions {
  int concurrency = 1;
  double rate = 0;        // calls per second over all workers; 0 = closed loop
  bool poisson = false;   // open loop: exponential gaps instead of fixed ones
  uint64_t seed = 1;
  absl::Duration warmup = absl::Seconds(1);
  absl::Duration duration = absl::Seconds(5);
};

struct LoadResult {
  LatencyHistogram latency;  // counted calls that succeeded
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // status code name -> count
  int64_t bytes = 0;        // what successful counted calls reported
  double seconds = 0;       // length of the measured window
  int64_t late_starts = 0;  // open loop: counted calls that started > 1 ms after due
};

// `op(worker)` performs one call and returns its status and, through
// `bytes`, the payload it moved (for throughput).
using LoadOp = std::function<absl::Status(int worker, int64_t* bytes)>;

LoadResult RunLoad(const LoadOptions& options, const LoadOp& op);

}  // namespace ropekv::client

#endif  // ROPEKV_CLIENT_BENCH_LOAD_H_
