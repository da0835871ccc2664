// What every backend shares: the page arithmetic of the Backend interface.
#include "kernels/backend.h"

#include <algorithm>

namespace ropekv::kernels {

int64_t Backend::PageBytesPerToken(const planner::LayerPlan& plan) const {
  int64_t bytes = 0;
  for (const planner::HeadPlan& h : plan.heads) bytes += h.layout.record_bytes;
  return bytes;
}

int Backend::PageTokens(const planner::LayerPlan& plan, int64_t page_bytes) const {
  const int64_t per_token = std::max<int64_t>(1, PageBytesPerToken(plan));
  int64_t tokens = std::min<int64_t>(page_bytes / per_token, int64_t{1} << 30);
  const int multiple = std::max(1, page_constraints().token_multiple);
  if (tokens >= multiple) tokens -= tokens % multiple;
  return static_cast<int>(tokens);
}

}  // namespace ropekv::kernels
