#include "client/bench/load.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace ropekv::client {

// Values below 2^kSubBits get a bucket each; above, bucket = (octave,
// top kSubBits bits below the leading one).
int LatencyHistogram::BucketOf(int64_t v) {
  if (v < (int64_t{1} << kSubBits)) return static_cast<int>(std::max<int64_t>(v, 0));
  const int msb = 63 - __builtin_clzll(static_cast<uint64_t>(v));
  const int shift = msb - kSubBits;
  const int sub = static_cast<int>((v >> shift) & ((1 << kSubBits) - 1));
  return ((shift + 1) << kSubBits) + sub;
}

int64_t LatencyHistogram::BucketLow(int b) {
  if (b < (1 << kSubBits)) return b;
  const int shift = (b >> kSubBits) - 1;
  const int64_t sub = b & ((1 << kSubBits) - 1);
  return ((int64_t{1} << kSubBits) + sub) << shift;
}

void LatencyHistogram::Record(int64_t nanos) {
  nanos = std::max<int64_t>(nanos, 0);
  const int b = BucketOf(nanos);
  if (static_cast<int>(counts_.size()) <= b) counts_.resize(b + 1, 0);
  ++counts_[b];
  ++count_;
  min_ = std::min(min_, nanos);
  max_ = std::max(max_, nanos);
  sum_ += static_cast<double>(nanos);
}

void LatencyHistogram::Merge(const LatencyHistogram& o) {
  if (counts_.size() < o.counts_.size()) counts_.resize(o.counts_.size(), 0);
  for (size_t i = 0; i < o.counts_.size(); ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
  sum_ += o.sum_;
}

int64_t LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * count_)));
  int64_t seen = 0;
  for (size_t b = 0; b < counts_.size(); ++b) {
    seen += counts_[b];
    if (seen >= rank) {
      // Middle of the bucket, kept inside the observed range.
      const int64_t lo = BucketLow(static_cast<int>(b)), hi = BucketLow(static_cast<int>(b) + 1);
      return std::clamp(lo + (hi - lo - 1) / 2, min_, max_);
    }
  }
  return max_;
}

LoadResult RunLoad(const LoadOptions& o, const LoadOp& op) {
  const int workers = std::max(1, o.concurrency);
  const absl::Time start = absl::Now();
  const absl::Time measure_from = start + o.warmup;
  const absl::Time end = measure_from + o.duration;

  // Open loop: the due time of call k, handed out in order.
  absl::Mutex schedule_mu;
  absl::Time next_due = start;
  std::mt19937_64 gen(o.seed);
  std::exponential_distribution<double> gap(o.rate > 0 ? o.rate : 1.0);
  auto take_due = [&]() {
    absl::MutexLock lock(&schedule_mu);
    const absl::Time due = next_due;
    const double seconds = o.poisson ? gap(gen) : 1.0 / o.rate;
    next_due += absl::Seconds(seconds);
    return due;
  };

  std::vector<LoadResult> parts(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      LoadResult& r = parts[w];
      while (true) {
        absl::Time due;
        if (o.rate > 0) {
          due = take_due();
          if (due >= end) break;
          absl::SleepFor(due - absl::Now());
        } else {
          due = absl::Now();
          if (due >= end) break;
        }
        const absl::Time started = absl::Now();
        int64_t bytes = 0;
        const absl::Status s = op(w, &bytes);
        const absl::Time done = absl::Now();
        if (due < measure_from) continue;
        if (s.ok()) {
          ++r.ok;
          r.bytes += bytes;
          r.latency.Record(absl::ToInt64Nanoseconds(done - due));
          if (o.rate > 0 && started - due > absl::Milliseconds(1)) ++r.late_starts;
        } else {
          ++r.errors[absl::StatusCodeToString(s.code())];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  LoadResult total;
  for (const LoadResult& r : parts) {
    total.latency.Merge(r.latency);
    total.ok += r.ok;
    total.bytes += r.bytes;
    total.late_starts += r.late_starts;
    for (const auto& [code, n] : r.errors) total.errors[code] += n;
  }
  // The measured window: the duration (an open loop offers calls over
  // exactly that long), or longer when counted calls finished after it.
  total.seconds = std::max({absl::ToDoubleSeconds(absl::Now() - measure_from), absl::ToDoubleSeconds(o.duration), 1e-9});
  return total;
}

}  // namespace ropekv::client
