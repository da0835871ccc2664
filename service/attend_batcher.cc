#include "service/attend_batcher.h"

#include <algorithm>

namespace ropekv::service {

AttendBatcher::AttendBatcher(kernels::Backend* backend, absl::Duration window, int max_items)
    : backend_(backend), window_(window), max_items_(std::max(1, max_items)) {}

absl::Status AttendBatcher::Run(absl::Span<const kernels::Backend::AttendItem> items) {
  if (window_ <= absl::ZeroDuration()) {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.calls;
      ++stats_.batches;
      stats_.items += static_cast<int64_t>(items.size());
    }
    return backend_->AttendBatch(items);
  }
  std::shared_ptr<Batch> batch;
  bool leader = false;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.calls;
    if (open_ == nullptr) {
      open_ = std::make_shared<Batch>();
      leader = true;
    }
    batch = open_;
    batch->items.insert(batch->items.end(), items.begin(), items.end());
    ++batch->callers;
    if (static_cast<int>(batch->items.size()) >= max_items_) {
      batch->closed = true;
      open_ = nullptr;
    }
    if (leader) {
      // Wait for company: until the window ends or the batch fills.
      mu_.AwaitWithTimeout(absl::Condition(&batch->closed), window_);
      if (open_ == batch) open_ = nullptr;
      batch->closed = true;
      ++stats_.batches;
      stats_.items += static_cast<int64_t>(batch->items.size());
    }
  }
  if (leader) {
    // Outside the lock: new callers open the next batch meanwhile.
    const absl::Status s = backend_->AttendBatch(batch->items);
    absl::MutexLock lock(&mu_);
    batch->status = s;
    batch->done = true;
  } else {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&batch->done));
  }
  absl::Status s;
  {
    absl::MutexLock lock(&mu_);
    s = batch->status;
  }
  if (!s.ok() && batch->callers > 1) return backend_->AttendBatch(items);  // our items alone
  return s;
}

AttendBatcher::Stats AttendBatcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace ropekv::service
