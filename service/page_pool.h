// One memory reservation cut into fixed-size pages.
//
// All packed caches live in pages from one pool, reserved once at start, so
// the request path never allocates. Pages are handed out all-or-nothing and
// counted per tenant against an optional quota. Page memory is host memory
// for the CPU backend (device memory for CUDA, through the same interface).
//
// Thread safety: all methods are thread-safe.
#ifndef ROPEKV_SERVICE_PAGE_POOL_H_
#define ROPEKV_SERVICE_PAGE_POOL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kernels/backend.h"

namespace ropekv::service {

class PagePool {
 public:
  // Reserves floor(total_bytes / page_bytes) pages of the backend's memory
  // (host for CPU, device for CUDA). INVALID_ARGUMENT when page_bytes <
  // 4096 or fewer than one page fits; RESOURCE_EXHAUSTED when the memory
  // cannot be reserved. REQUIRES: `backend` outlives the pool.
  static absl::StatusOr<std::unique_ptr<PagePool>> Create(int64_t total_bytes,
                                                          int64_t page_bytes,
                                                          kernels::Backend* backend);
  ~PagePool();

  // Takes `count` pages for `tenant`, all or nothing. RESOURCE_EXHAUSTED
  // when the pool has fewer free pages or the tenant's quota would be
  // exceeded; nothing is taken then.
  absl::StatusOr<std::vector<uint8_t*>> Allocate(int64_t count,
                                                 const std::string& tenant);
  // Returns pages taken by `tenant`. REQUIRES: each came from Allocate for
  // that tenant and is returned once.
  void Free(absl::Span<uint8_t* const> pages, const std::string& tenant);

  // Largest number of pages one tenant may hold (0 = no limit).
  void set_tenant_quota(int64_t pages);

  // Fault injection (tests and drills): the next `skip` calls of Allocate
  // behave normally, then `fail` calls fail with RESOURCE_EXHAUSTED as if
  // the memory were full. (0, 0) turns it off.
  void InjectAllocationFailures(int64_t skip, int64_t fail);
  // Allocate calls so far (successful or not).
  int64_t allocate_calls() const;

  int64_t page_bytes() const { return page_bytes_; }
  // The backend whose memory the pages are (it decides how pages are cut).
  const kernels::Backend& backend() const { return *backend_; }
  int64_t total_pages() const { return total_pages_; }
  int64_t free_pages() const;
  int64_t tenant_pages(const std::string& tenant) const;

 private:
  PagePool(kernels::Backend* backend, uint8_t* memory, int64_t total_pages,
           int64_t page_bytes);

  kernels::Backend* const backend_;
  uint8_t* const memory_;
  const int64_t total_pages_;
  const int64_t page_bytes_;
  mutable absl::Mutex mu_;
  std::vector<uint8_t*> free_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> tenant_pages_ ABSL_GUARDED_BY(mu_);
  int64_t tenant_quota_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t allocate_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t inject_skip_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t inject_fail_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_PAGE_POOL_H_
