// Where a range of tokens' records sit in a layer's pages, as runs of
// consecutive records: the one address computation that copies records in
// and out of pages (ReadRecords, WriteRecords of every backend) share.
//
// Thread safety: a pure function.
#ifndef ROPEKV_KERNELS_RECORD_RUNS_H_
#define ROPEKV_KERNELS_RECORD_RUNS_H_

#include <algorithm>
#include <cstdint>

#include "kernels/backend.h"
#include "planner/plan.h"

namespace ropekv::kernels {

// Calls fn(uint8_t* records, int64_t bytes) for every run of records of
// tokens [first, first + n), KV head by KV head, in the head-major order of
// ReadRecords: head 0's records of all the tokens, then head 1's, and so
// on; a run never crosses a page. REQUIRES: the range fits the pages.
template <typename Fn>
void ForEachRecordRun(const planner::LayerPlan& plan, const PagedLayerView& cache, int64_t first, int64_t n,
                      Fn&& fn) {
  const planner::PageLayout layout = planner::MakePageLayout(plan, cache.page_tokens);
  for (size_t h = 0; h < plan.heads.size(); ++h) {
    const int rb = plan.heads[h].layout.record_bytes;
    for (int64_t t = first; t < first + n;) {
      const int64_t slot = t % cache.page_tokens;
      const int64_t run = std::min<int64_t>(first + n - t, cache.page_tokens - slot);
      fn(cache.pages[t / cache.page_tokens] + layout.head_offsets[h] + slot * rb, run * rb);
      t += run;
    }
  }
}

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_RECORD_RUNS_H_
