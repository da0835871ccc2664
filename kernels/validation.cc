#include "kernels/validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ropekv::kernels {

absl::Status CheckView(const planner::LayerPlan& plan, const PagedLayerView& c) {
  if (plan.heads.empty()) {
    return absl::InvalidArgumentError("plan: expected at least one KV head");
  }
  if (c.page_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache.page_tokens: expected >= 1, got ", c.page_tokens));
  }
  if (c.num_pages < 0 || (c.num_pages > 0 && c.pages == nullptr)) {
    return absl::InvalidArgumentError("cache.pages: expected num_pages pointers");
  }
  if (c.num_tokens < 0 || c.num_tokens > c.num_pages * c.page_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache.num_tokens: expected [0, ", c.num_pages * c.page_tokens, "], got ", c.num_tokens));
  }
  return absl::OkStatus();
}

absl::Status CheckWriteRange(const PagedLayerView& c, int64_t first, int64_t n) {
  if (first < 0 || n < 0 || first + n > c.num_pages * c.page_tokens) {
    return absl::OutOfRangeError(absl::StrCat("tokens [", first, ", ", first + n,
                                              ") do not fit the cache's ",
                                              c.num_pages * c.page_tokens, " page slots"));
  }
  return absl::OkStatus();
}

absl::Status CheckRecords(const planner::LayerPlan& plan, const uint8_t* records, int64_t n) {
  if (n > 0 && records == nullptr) return absl::InvalidArgumentError("records: expected data, got null");
  const uint8_t* r = records;
  for (size_t h = 0; h < plan.heads.size(); ++h) {
    const planner::TokenLayout& l = plan.heads[h].layout;
    const int norms = static_cast<int>(plan.heads[h].key_groups.size()) + 1;
    for (int64_t t = 0; t < n; ++t, r += l.record_bytes) {
      for (int i = 0; i < norms; ++i) {
        const int at = i + 1 < norms ? l.key_norms_offset + 2 * i : l.value_norm_offset;
        const uint16_t bits = static_cast<uint16_t>(r[at] | (r[at + 1] << 8));
        // fp16: sign bit 15, exponent bits 10-14 (all ones: Inf or NaN).
        if ((bits & 0x8000) != 0 || (bits & 0x7C00) == 0x7C00) {
          return absl::InvalidArgumentError(absl::StrCat(
              "records: kv_head ", h, " token ", t, ": ", i + 1 < norms ? "key group norm " : "value norm ",
              "0x", absl::Hex(bits), " is not a finite fp16 value >= 0"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckReadRange(const PagedLayerView& c, int64_t first, int64_t n) {
  if (first < 0 || n < 0 || first + n > c.num_tokens) {
    return absl::OutOfRangeError(absl::StrCat("tokens [", first, ", ", first + n,
                                              "): expected within [0, ", c.num_tokens, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CheckAttention(const planner::LayerPlan& plan,
                                       const PagedLayerView& cache,
                                       const AttentionParams& p) {
  if (absl::Status s = CheckView(plan, cache); !s.ok()) return s;
  if (p.q_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("q_len: expected >= 1, got ", p.q_len));
  }
  const int num_kv = static_cast<int>(plan.heads.size());
  if (p.num_q_heads < 1 || p.num_q_heads % num_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_q_heads: expected a positive multiple of ",
                                                   num_kv, " KV heads, got ", p.num_q_heads));
  }
  if (p.queries == nullptr || p.out == nullptr || p.lse == nullptr) {
    return absl::InvalidArgumentError("queries/out/lse: expected buffers");
  }
  const int64_t end = p.token_end < 0 ? cache.num_tokens : p.token_end;
  if (p.token_begin < 0 || p.token_begin > end || end > cache.num_tokens) {
    return absl::OutOfRangeError(absl::StrCat("token range [", p.token_begin, ", ", end,
                                              "): expected within [0, ", cache.num_tokens, "]"));
  }
  if (!std::isfinite(p.scale)) return absl::InvalidArgumentError("scale: expected a finite value");
  return end;
}

}  // namespace ropekv::kernels
