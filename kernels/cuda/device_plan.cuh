// POD parameter structs of the CUDA kernels (framework-free, C++17).
//
// A HeadPlanDevice mirrors planner::HeadPlan with device pointers; the host
// adapter (cuda_backend.cc) uploads each layer's plans once and reuses them.
// Shapes are in the comments; every pointer is device memory.
#ifndef ROPEKV_KERNELS_CUDA_DEVICE_PLAN_CUH_
#define ROPEKV_KERNELS_CUDA_DEVICE_PLAN_CUH_

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ropekv::kernels::cuda {

constexpr int kMaxGroups = 8;
constexpr int kMaxHeadDim = 512;
constexpr int kMaxSplits = 1024;  // splits of one attention call (merge weights in shared memory)
// Tokens of the tensor-core attention's m-tile: pages hold a multiple of
// this many tokens (Backend::page_constraints) so a tile never straddles
// a page, and page bases are 16-byte aligned for its 16-byte copies.
constexpr int kPageTokenMultiple = 16;
constexpr int kPageAlignment = 16;

struct HeadPlanDevice {
  int head_dim;
  int num_groups;
  int group_bits[kMaxGroups];
  int group_offset[kMaxGroups];           // first slot of the permuted key
  int group_dim[kMaxGroups];
  int group_code_bit_offset[kMaxGroups];  // first bit in the key code stream
  const int* permutation;                 // [head_dim]: slot j <- dim permutation[j]
  const float* rotation[kMaxGroups];      // [dim, dim] row-major
  const float* rotation_t[kMaxGroups];    // the same, transposed (column j of R is row j)
  // R split into fp16 parts hi = fp16(R), lo = fp16(R - hi), as the B
  // fragments of the encode's tensor-core rotation (RotationFragmentIndex).
  const uint32_t* rotation_frags[kMaxGroups];
  const float* centroids[kMaxGroups];     // [2^bits]
  const float* boundaries[kMaxGroups];    // [2^bits - 1]
  int value_bits;
  const float* value_rotation;            // [head_dim, head_dim]
  const float* value_rotation_t;          // the same, transposed
  const uint32_t* value_rotation_frags;   // the same for the value rotation
  const float* value_centroids;           // [2^value_bits]
  const float* value_boundaries;          // [2^value_bits - 1]
  int key_norms_offset;                   // record layout (planner::TokenLayout)
  int value_norm_offset;
  int key_codes_offset;
  int key_code_bits;
  int value_codes_offset;
  int record_bytes;
  int record_prefix;  // sum of record_bytes of the earlier heads of the layer
  // The tensor-core attention kernel's decode tables, built once at upload
  // (AttendMmaTableImage) and copied to shared memory by each block;
  // table_offset[g] is key group g's table, [kMaxGroups] the values'.
  const unsigned char* table_image;
  int table_image_bytes;
  int table_offset[kMaxGroups + 1];
};

// Token t of KV head h lives at
//   pages[t / page_tokens] + page_tokens * heads[h].record_prefix
//                          + (t % page_tokens) * heads[h].record_bytes.
struct PagedLayerDevice {
  uint8_t* const* pages;  // [num_pages] device pointers (array in device memory)
  int page_tokens;
};

// The encode computes Y = U R^T with mma.sync m16n8k16, B[k][n] = R[n][k].
// B fragments of a dim x dim rotation, zero-padded to n-tiles of 8 rows
// and k-steps of 16: the 4 words of lane l (r = l / 4, c = l % 4) for
// n-tile nt and k-step s are {hi, hi, lo, lo} pairs of R[8 nt + r][k..k+1]
// at k = 16 s + 2c, 16 s + 2c + 8, and sit at uint4 index
// RotationFragmentIndex(nt, s, k_steps, l).
__host__ __device__ inline int RotationFragmentIndex(int nt, int s, int k_steps, int lane) {
  return (nt * k_steps + s) * 32 + lane;
}

// Bits of EncodeParams::overflow: which of the inputs had a vector whose
// corrected norm is beyond fp16.
inline constexpr int kOverflowKeys = 1;
inline constexpr int kOverflowValues = 2;

struct EncodeParams {
  const HeadPlanDevice* heads;  // [num_heads]
  int num_heads;
  int head_dim;
  const float* keys;    // [num_heads, num_tokens, head_dim]
  const float* values;  // [num_heads, num_tokens, head_dim]
  long long num_tokens;
  long long first_token;  // cache position of token 0
  PagedLayerDevice cache;
  int* overflow;  // ORed with kOverflowKeys / kOverflowValues when a corrected norm exceeds the fp16 range
  int max_levels;  // key levels of all groups plus value levels, max over heads
};

struct DecodeParams {
  const HeadPlanDevice* heads;
  int num_heads;
  int head_dim;
  long long first_token;
  long long num_tokens;
  PagedLayerDevice cache;
  float* keys;    // [num_heads, num_tokens, head_dim] or null
  float* values;  // same, or null
};

struct RotateQueryParams {
  const HeadPlanDevice* heads;
  int num_kv_heads;
  int head_dim;
  int group;  // query heads per KV head
  int q_len;
  const float* queries;  // [num_kv_heads * group, q_len, head_dim]
  float* rotated;        // [num_kv_heads, group * q_len, head_dim]
};

struct AttendParams {
  const HeadPlanDevice* heads;
  int num_kv_heads;
  int head_dim;
  int rows;              // group * q_len; row r = g * q_len + i
  int q_len;
  const float* rotated;  // [num_kv_heads, rows, head_dim]
  int causal;
  long long causal_offset;
  float scale;
  long long token_begin;
  long long token_end;
  PagedLayerDevice cache;
  int num_splits;
  long long tokens_per_split;
  int max_record_bytes;  // over the layer's heads (sizes shared memory)
  int max_levels;        // key levels of all groups plus value levels, max over heads
  int table_bytes;       // tensor-core path: decode tables in shared memory, max over heads
  float* partial_out;  // [num_kv_heads, num_splits, rows, head_dim], rotated space
  float* partial_lse;  // [num_kv_heads, num_splits, rows]
};

struct MergeParams {
  const HeadPlanDevice* heads;
  int num_kv_heads;
  int head_dim;
  int group;
  int q_len;
  int num_splits;
  const float* partial_out;
  const float* partial_lse;
  float* out;  // [num_kv_heads * group, q_len, head_dim]
  float* lse;  // [num_kv_heads * group, q_len]
};

cudaError_t LaunchEncode(const EncodeParams& p, cudaStream_t stream);
cudaError_t LaunchDecode(const DecodeParams& p, cudaStream_t stream);
cudaError_t LaunchRotateQueries(const RotateQueryParams& p, cudaStream_t stream);
cudaError_t LaunchAttend(const AttendParams& p, cudaStream_t stream);
// One launch for a batch of items of the same shape (head_dim, KV heads,
// rows = group x q_len): each item is its own (session, layer) with its own
// plan, pages, range and buffers; the parameter arrays live in device
// memory; grids get a z dimension of num_items.
struct AttendBatchShape {
  int num_items;
  int num_kv_heads;
  int head_dim;
  int rows;
  int max_splits;        // over the items
  int max_record_bytes;  // over the items' plans
  int table_bytes;       // over the items' plans
};
cudaError_t LaunchRotateQueriesBatch(const RotateQueryParams* device_items, const AttendBatchShape& shape,
                                    cudaStream_t stream);
cudaError_t LaunchAttendMmaBatch(const AttendParams* device_items, const AttendBatchShape& shape,
                                 cudaStream_t stream);
cudaError_t LaunchMergeBatch(const MergeParams* device_items, const AttendBatchShape& shape, cudaStream_t stream);

// Tensor-core attention (attention_mma.cu): the same outputs as
// LaunchAttend for head_dim 64, 128 or 256 when every page is 16-byte
// aligned and page_tokens is a multiple of 16 (tiles of 16 tokens are
// copied with 16-byte cp.async and never straddle a page), and the tiles of
// the widest record fit in shared memory (AttendMmaSupports).
cudaError_t LaunchAttendMma(const AttendParams& p, cudaStream_t stream);
bool AttendMmaSupports(int head_dim, int rows, int max_record_bytes, int table_bytes);
// Shared-memory bytes of one head's decode tables (key group widths, value width).
int AttendMmaTableBytes(const int* key_bits, int num_groups, int value_bits);
// Builds those tables on the host: image[AttendMmaTableBytes(..)] and the
// byte offsets of each key group's table and (offsets[kMaxGroups]) the
// value table's. Codebook levels must be fp16 values.
void AttendMmaTableImage(const int* key_bits, const float* const* key_centroids, int num_groups, int value_bits,
                         const float* value_centroids, unsigned char* image, int* offsets);

// Tensor-core attention over pages in the fragment layout
// (fragment_layout.cuh, attention_fragment.cu): the same outputs as
// LaunchAttendMma for plans that FragmentLayoutSupports, whose pages were
// written in that layout.
bool FragmentLayoutSupports(int head_dim, const int* group_bits, const int* group_dim, int num_groups,
                            int value_bits, int page_tokens);
bool AttendFragmentSupports(int head_dim, int rows, int max_record_bytes);
cudaError_t LaunchAttendFragment(const AttendParams& p, cudaStream_t stream);
cudaError_t LaunchAttendFragmentBatch(const AttendParams* device_items, const AttendBatchShape& shape,
                                      cudaStream_t stream);

cudaError_t LaunchMerge(const MergeParams& p, cudaStream_t stream);

}  // namespace ropekv::kernels::cuda

#endif  // ROPEKV_KERNELS_CUDA_DEVICE_PLAN_CUH_
