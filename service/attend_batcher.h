// Merges the attention items of concurrent calls into one backend
// AttendBatch call (on CUDA: one launch per group of same-shape items).
//
// The first caller to arrive opens a batch and waits up to `window` for
// others to join (or until `max_items` items are in); then it runs the
// batch for everyone and wakes them. window == 0 runs each call's items at
// once (still as one AttendBatch). When a merged batch fails, every caller
// re-runs its own items alone, so one caller's bad item cannot fail
// another's call.
//
// Thread safety: Run may be called from any number of threads.
#ifndef ROPEKV_SERVICE_ATTEND_BATCHER_H_
#define ROPEKV_SERVICE_ATTEND_BATCHER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/backend.h"

namespace ropekv::service {

class AttendBatcher {
 public:
  AttendBatcher(kernels::Backend* backend, absl::Duration window, int max_items);

  // Computes `items` (their params point at the caller's buffers, which
  // must outlive the call). Returns the status of these items.
  absl::Status Run(absl::Span<const kernels::Backend::AttendItem> items);

  struct Stats {
    int64_t batches = 0;  // backend AttendBatch calls made for merged batches
    int64_t items = 0;    // items they carried
    int64_t calls = 0;    // Run calls
  };
  Stats stats() const;

 private:
  struct Batch {
    std::vector<kernels::Backend::AttendItem> items;
    int callers = 0;
    bool closed = false;
    bool done = false;
    absl::Status status;
  };

  kernels::Backend* const backend_;
  const absl::Duration window_;
  const int max_items_;
  mutable absl::Mutex mu_;
  std::shared_ptr<Batch> open_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_ATTEND_BATCHER_H_
