#include "service/page_pool.h"

#include <cstdlib>
#include <new>

#include "absl/strings/str_cat.h"

namespace ropekv::service {

absl::StatusOr<std::unique_ptr<PagePool>> PagePool::Create(int64_t total_bytes,
                                                          int64_t page_bytes,
                                                          kernels::Backend* backend) {
  if (page_bytes < 4096 || page_bytes % 256 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_bytes: expected a multiple of 256 >= 4096, got ", page_bytes));
  }
  const int alignment = backend->page_constraints().alignment;
  if (alignment > 1 && page_bytes % alignment != 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_bytes: the ", backend->name(),
                                                   " backend needs a multiple of ", alignment, ", got ",
                                                   page_bytes));
  }
  const int64_t pages = total_bytes / page_bytes;
  if (pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory_bytes: expected at least one page (", page_bytes, " bytes), got ",
        total_bytes));
  }
  absl::StatusOr<uint8_t*> memory = backend->AllocateArena(pages * page_bytes);
  if (!memory.ok()) return memory.status();
  return std::unique_ptr<PagePool>(new PagePool(backend, *memory, pages, page_bytes));
}

PagePool::PagePool(kernels::Backend* backend, uint8_t* memory, int64_t total_pages,
                   int64_t page_bytes)
    : backend_(backend), memory_(memory), total_pages_(total_pages), page_bytes_(page_bytes) {
  free_.reserve(total_pages);
  // Lowest addresses handed out first.
  for (int64_t i = total_pages - 1; i >= 0; --i) free_.push_back(memory + i * page_bytes);
}

PagePool::~PagePool() { backend_->FreeArena(memory_); }

absl::StatusOr<std::vector<uint8_t*>> PagePool::Allocate(int64_t count,
                                                         const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  if (count < 0) return absl::InvalidArgumentError("page count must be >= 0");
  ++allocate_calls_;
  if (inject_fail_ > 0) {
    if (inject_skip_ > 0) {
      --inject_skip_;
    } else {
      --inject_fail_;
      return absl::ResourceExhaustedError(absl::StrCat(
          "cache memory is full (injected failure): ", count, " pages needed"));
    }
  }
  if (count > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cache memory is full: ", count, " pages needed, ", free_.size(), " of ",
        total_pages_, " free"));
  }
  const int64_t held = tenant_pages_[tenant];
  if (tenant_quota_ > 0 && held + count > tenant_quota_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant quota exceeded: ", held, " pages held, ", count, " more needed, quota ",
        tenant_quota_));
  }
  std::vector<uint8_t*> out(free_.end() - count, free_.end());
  free_.resize(free_.size() - count);
  tenant_pages_[tenant] = held + count;
  return out;
}

void PagePool::Free(absl::Span<uint8_t* const> pages, const std::string& tenant) {
  if (pages.empty()) return;
  absl::MutexLock lock(&mu_);
  free_.insert(free_.end(), pages.begin(), pages.end());
  tenant_pages_[tenant] -= static_cast<int64_t>(pages.size());
}

void PagePool::set_tenant_quota(int64_t pages) {
  absl::MutexLock lock(&mu_);
  tenant_quota_ = pages;
}

void PagePool::InjectAllocationFailures(int64_t skip, int64_t fail) {
  absl::MutexLock lock(&mu_);
  inject_skip_ = skip;
  inject_fail_ = fail;
}

int64_t PagePool::allocate_calls() const {
  absl::MutexLock lock(&mu_);
  return allocate_calls_;
}

int64_t PagePool::free_pages() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t PagePool::tenant_pages(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = tenant_pages_.find(tenant);
  return it == tenant_pages_.end() ? 0 : it->second;
}

}  // namespace ropekv::service
