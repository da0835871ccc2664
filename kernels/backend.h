// The kernels' host-facing interface: encode, decode and attend over the
// paged packed cache of one (session, layer), and merge partial attention.
//
// One interface, two implementations: kernels/cpu (always built; the
// readable reference) and kernels/cuda (built when CUDA is found). Both
// execute the same planner::LayerPlan on the same byte layout
// (planner/packed_layout.md), so a cache written by one can be read by the
// other once its pages are copied.
//
// Storage model: a (session, layer) owns a list of pages of `page_tokens`
// tokens each; token t lives in page t / page_tokens, slot t % page_tokens;
// inside a page, KV head h's records are contiguous at
// planner::MakePageLayout(plan, page_tokens).head_offsets[h]. Page memory
// belongs to the caller (host memory for the CPU backend, device memory for
// CUDA); the backend only reads and writes it, and says how pages must be
// cut (page_constraints, PageTokens), so the caller never computes an
// address inside a page. The canonical records of planner/packed_layout.md
// go in and out through WriteRecords and ReadRecords.
//
// Thread safety: a Backend may be called from several threads at once as
// long as no two calls write the same tokens.
#ifndef ROPEKV_KERNELS_BACKEND_H_
#define ROPEKV_KERNELS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "planner/plan.h"

namespace ropekv::kernels {

// The pages of one (session, layer).
struct PagedLayerView {
  uint8_t* const* pages = nullptr;  // [num_pages] page base pointers
  int64_t num_pages = 0;
  int page_tokens = 0;              // tokens per page (>= 1)
  int64_t num_tokens = 0;           // tokens currently valid
};

// Decode attention of q_len query positions of every query head of the
// layer over tokens [token_begin, token_end) of the packed cache.
struct AttentionParams {
  // [num_q_heads, q_len, head_dim] fp32, post-RoPE, original dim order.
  // Query head h*group + g reads KV head h (HF GQA convention).
  const float* queries = nullptr;
  // Query heads of the layer: a positive multiple of the plan's KV heads.
  int num_q_heads = 0;
  int q_len = 1;
  // When causal, query position i sees tokens t <= causal_offset + i (for a
  // decoder whose last q_len cached tokens are the queries' own:
  // causal_offset = num_tokens - q_len).
  bool causal = false;
  int64_t causal_offset = 0;
  // Multiplies q.k before the softmax (usually 1/sqrt(head_dim)).
  float scale = 1.0f;
  // Token range; token_end < 0 means num_tokens. Ranges let a caller split
  // the work and merge the partial results with MergeStates.
  int64_t token_begin = 0;
  int64_t token_end = -1;
  // [num_q_heads, q_len, head_dim] fp32: softmax-weighted values.
  float* out = nullptr;
  // [num_q_heads, q_len] fp32: log-sum-exp of the scaled logits (natural
  // log); -inf with out = 0 where a query sees no token.
  float* lse = nullptr;
};

// fp16 tokens kept outside the packed cache (attention sinks, the recent
// window): a contiguous run of slots of [num_kv_heads, capacity, head_dim]
// buffers. Token j of the view sits in slot first_slot + j and has sequence
// position first_position + j (for the causal mask).
struct DenseKvView {
  const uint16_t* keys = nullptr;    // fp16, [num_kv_heads, capacity, head_dim]
  const uint16_t* values = nullptr;  // fp16, same layout
  int64_t capacity = 0;
  int64_t first_slot = 0;
  int64_t num_tokens = 0;
  int64_t first_position = 0;
};

// Combines partial attention states over disjoint token ranges:
//   M = max_c lse_c; w_c = exp(lse_c - M);
//   out = sum_c w_c out_c / sum_c w_c; lse = M + log(sum_c w_c).
struct MergeParams {
  absl::Span<const float* const> partial_out;  // each [rows, head_dim]
  absl::Span<const float* const> partial_lse;  // each [rows]
  int64_t rows = 0;
  int head_dim = 0;
  float* out = nullptr;  // [rows, head_dim]; may alias no input
  float* lse = nullptr;  // [rows]
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual const char* name() const = 0;

  // Encodes tokens [first_token, first_token + num_tokens) of one layer:
  // keys with the per-block widths of the plan, values at the plan's
  // uniform width. keys/values: [num_kv_heads, num_tokens, head_dim] fp32.
  // REQUIRES: the pages cover first_token + num_tokens tokens.
  // INVALID_ARGUMENT for NaN/Inf input or a norm beyond fp16 range, or a
  // bad range; then no record is left half-written that a reader could see
  // (num_tokens is the caller's to advance).
  virtual absl::Status EncodeLayer(const planner::LayerPlan& plan,
                                   const PagedLayerView& cache,
                                   int64_t first_token, const float* keys,
                                   const float* values, int64_t num_tokens) = 0;

  // Dequantizes tokens [first_token, first_token + num_tokens) into
  // keys/values [num_kv_heads, num_tokens, head_dim] fp32 (either may be
  // null to skip it). OUT_OF_RANGE when the range exceeds num_tokens.
  virtual absl::Status DecodeLayer(const planner::LayerPlan& plan,
                                   const PagedLayerView& cache,
                                   int64_t first_token, int64_t num_tokens,
                                   float* keys, float* values) = 0;

  // Attention over the packed cache, reading only codes and norms.
  // INVALID_ARGUMENT for q_len < 1, num_q_heads not a multiple of the KV
  // heads, or null buffers; OUT_OF_RANGE for a
  // token range outside [0, num_tokens].
  virtual absl::Status Attend(const planner::LayerPlan& plan,
                              const PagedLayerView& cache,
                              const AttentionParams& params) = 0;

  // Attention of several (layer, cache) items, each as one Attend call:
  // their plans, caches, lengths and parameters may differ. A backend that
  // can serve items together (CUDA: one launch per group of items of the
  // same shape) does; the default calls Attend on each. Returns the first
  // failing item's status, prefixed with its index.
  struct AttendItem {
    const planner::LayerPlan* plan = nullptr;
    PagedLayerView cache;
    AttentionParams params;
  };
  virtual absl::Status AttendBatch(absl::Span<const AttendItem> items) {
    for (size_t i = 0; i < items.size(); ++i) {
      absl::Status s = Attend(*items[i].plan, items[i].cache, items[i].params);
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("item ", i, ": ", s.message()));
    }
    return absl::OkStatus();
  }

  // Attention over fp16 tokens (same GQA, causal and output conventions as
  // Attend; params.token_begin/token_end are ignored: the view is the
  // range). INVALID_ARGUMENT for bad shapes or a view outside its buffers.
  virtual absl::Status AttendDense(int num_kv_heads, int head_dim,
                                   const DenseKvView& kv,
                                   const AttentionParams& params) = 0;

  virtual absl::Status MergeStates(const MergeParams& params) = 0;

  // The memory pages are cut from: host memory (CPU backend) or device
  // memory (CUDA). Reserved once at start. RESOURCE_EXHAUSTED when it
  // cannot be had.
  virtual absl::StatusOr<uint8_t*> AllocateArena(int64_t bytes) = 0;
  virtual void FreeArena(uint8_t* arena) = 0;

  // Copies the packed records of tokens [first_token, first_token +
  // num_tokens) into host memory, KV head by KV head: for each head in
  // order, num_tokens records of its record_bytes. OUT_OF_RANGE when the
  // range exceeds num_tokens.
  virtual absl::Status ReadRecords(const planner::LayerPlan& plan,
                                   const PagedLayerView& cache,
                                   int64_t first_token, int64_t num_tokens,
                                   uint8_t* out) = 0;

  // Stores records that arrive already packed (the canonical records of
  // planner/packed_layout.md, in ReadRecords' head-major order) as tokens
  // [first_token, first_token + num_tokens). The inverse of ReadRecords:
  // the round trip is bit-exact. REQUIRES: the pages cover the range.
  // OUT_OF_RANGE for a range past the pages; INVALID_ARGUMENT when a
  // stored norm is not a finite fp16 value >= 0 (nothing is written then).
  virtual absl::Status WriteRecords(const planner::LayerPlan& plan,
                                    const PagedLayerView& cache,
                                    int64_t first_token, int64_t num_tokens,
                                    const uint8_t* records) = 0;

  // Drops what the backend derived from the plan with this id (a CUDA
  // device copy). Called when the last holder of a plan lets it go; a
  // later call with a plan of that id derives it again. Thread-safe.
  virtual void ForgetPlan(uint64_t plan_id) {}

  // How this backend wants pages cut, so that callers never assume it.
  struct PageConstraints {
    // Tokens per page: a multiple of this when a page holds at least as
    // many tokens (CUDA: the attention kernel's tiles never straddle a
    // page).
    int token_multiple = 1;
    // Alignment of every page's first byte.
    int alignment = 1;
  };
  virtual PageConstraints page_constraints() const { return {}; }
  // Bytes one token of a (session, layer) takes in this backend's pages:
  // the records of all KV heads.
  virtual int64_t PageBytesPerToken(const planner::LayerPlan& plan) const;
  // Tokens per page of `page_bytes` for `plan` under the constraints (>= 1;
  // 0 when not even one token fits).
  int PageTokens(const planner::LayerPlan& plan, int64_t page_bytes) const;

  // False after an unrecoverable (sticky) device error: every call then
  // fails with UNAVAILABLE and the server reports NOT_SERVING.
  virtual bool healthy() const { return true; }
};

struct CpuBackendOptions {
  // Worker threads for attention and encode (0 = hardware concurrency).
  int num_threads = 0;
};

// The CPU reference backend (kernels/cpu).
std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options = {});

struct BackendOptions {
  // "auto" (CUDA when this build has it and a device is visible, else
  // CPU), "cpu" or "cuda".
  std::string kind = "auto";
  int cpu_threads = 0;      // CPU backend workers (0 = all cores)
  int cuda_device = 0;      // CUDA backend: device index
  int cuda_streams = 8;     // CUDA backend: calls in flight at once (1..64)
};

// A backend and what it runs on.
struct CreatedBackend {
  std::unique_ptr<Backend> backend;
  // "host CPU" or "CUDA device 0 (NVIDIA H200, compute 9.0, 139 GiB)".
  std::string device;
};

// The one place that picks a backend. INVALID_ARGUMENT for an unknown kind
// or bad options; UNAVAILABLE when CUDA is asked for and this build or
// machine has none.
absl::StatusOr<CreatedBackend> CreateBackend(const BackendOptions& options);

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_BACKEND_H_
