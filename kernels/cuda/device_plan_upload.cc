#include "kernels/cuda/device_plan_upload.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "planner/half.h"

namespace ropekv::kernels::cuda_host {
namespace {


// Shared memory the tensor-core kernel's decode tables take, max over heads.
int MmaTableBytes(const planner::LayerPlan& plan) {
  int bytes = 0;
  for (const planner::HeadPlan& hp : plan.heads) {
    int bits[dev::kMaxGroups] = {};
    const int n = std::min<int>(hp.key_groups.size(), dev::kMaxGroups);
    for (int g = 0; g < n; ++g) bits[g] = hp.key_groups[g].bits;
    bytes = std::max(bytes, dev::AttendMmaTableBytes(bits, n, hp.value_bits));
  }
  return bytes;
}

// Whether every level of the plan's codebooks is an fp16 value, as the
// planner makes them: the tensor-core kernel reads levels as fp16 MMA
// inputs, so any other codebook takes the scalar kernel.
bool HalfExactLevels(const planner::LayerPlan& plan) {
  auto exact = [](const std::vector<float>& levels) {
    return std::all_of(levels.begin(), levels.end(), [](float c) { return planner::RoundToHalf(c) == c; });
  };
  for (const planner::HeadPlan& hp : plan.heads) {
    if (!exact(hp.value_codebook.centroids)) return false;
    for (const planner::KeyGroupPlan& kg : hp.key_groups) {
      if (!exact(kg.codebook.centroids)) return false;
    }
  }
  return true;
}

}  // namespace

void FreeDevicePlan(DevicePlan* plan) {
  if (plan->blob != nullptr) cudaFree(plan->blob);
  if (plan->heads != nullptr) cudaFree(plan->heads);
  plan->blob = nullptr;
  plan->heads = nullptr;
}

absl::Status BuildDevicePlan(const planner::LayerPlan& plan, DevicePlan* out, cudaError_t* cuda_error) {
  DevicePlan dp;
  // On a CUDA error: free what was allocated, report the error.
#define ROPEKV_UPLOAD_CUDA(expr)                              \
  do {                                                        \
    const cudaError_t err_ = (expr);                          \
    if (err_ != cudaSuccess) {                                \
      FreeDevicePlan(&dp);                                    \
      *cuda_error = err_;                                     \
      return absl::UnavailableError("plan upload");           \
    }                                                         \
  } while (0)
  // One blob: per head, permutation (ints), then float arrays.
  std::vector<char> blob;
  auto put = [&](const void* data, size_t bytes) {
    const size_t at = (blob.size() + 15) / 16 * 16;
    blob.resize(at + bytes);
    std::memcpy(blob.data() + at, data, bytes);
    return at;
  };
  struct Offsets {
    size_t perm, rot[dev::kMaxGroups], rot_t[dev::kMaxGroups], rot_frags[dev::kMaxGroups], cent[dev::kMaxGroups],
        bound[dev::kMaxGroups], vrot, vrot_t, vrot_frags, vcent, vbound, tables;
  };
  // The query-rotation kernel computes R x with a thread per output
  // coordinate; reading R's transposed copy, the threads of a warp load
  // consecutive floats.
  auto put_transposed = [&](const std::vector<float>& m, int n) {
    std::vector<float> t(m.size());
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) t[static_cast<size_t>(j) * n + i] = m[static_cast<size_t>(i) * n + j];
    }
    return put(t.data(), t.size() * 4);
  };
  // The encode kernel rotates with fp16 tensor-core MMAs at fp32
  // accuracy: R = hi + lo, both fp16 (R - hi is exact in fp32), laid out
  // as the MMA's B fragments (dev::RotationFragmentIndex), zero-padded.
  auto put_fragments = [&](const std::vector<float>& m, int n) {
    const int n_tiles = (n + 7) / 8, k_steps = (n + 15) / 16;
    std::vector<uint32_t> words(static_cast<size_t>(n_tiles) * k_steps * 32 * 4, 0u);
    auto pair = [&](int row, int k, bool lo) -> uint32_t {
      if (row >= n || k >= n) return 0u;  // n is even: k + 1 < n too
      uint32_t halves[2];
      for (int i = 0; i < 2; ++i) {
        const float x = m[static_cast<size_t>(row) * n + k + i];
        const uint16_t hi = planner::FloatToHalf(x);
        halves[i] = lo ? planner::FloatToHalf(x - planner::HalfToFloat(hi)) : hi;
      }
      return halves[0] | (halves[1] << 16);
    };
    for (int nt = 0; nt < n_tiles; ++nt) {
      for (int s = 0; s < k_steps; ++s) {
        for (int lane = 0; lane < 32; ++lane) {
          const int row = 8 * nt + lane / 4, k0 = 16 * s + 2 * (lane % 4), k1 = k0 + 8;
          uint32_t* w = words.data() + 4 * static_cast<size_t>(dev::RotationFragmentIndex(nt, s, k_steps, lane));
          w[0] = pair(row, k0, false);
          w[1] = pair(row, k1, false);
          w[2] = pair(row, k0, true);
          w[3] = pair(row, k1, true);
        }
      }
    }
    return put(words.data(), words.size() * sizeof(uint32_t));
  };
  std::vector<Offsets> offs(plan.heads.size());
  std::vector<dev::HeadPlanDevice> heads(plan.heads.size());
  dp.num_heads = static_cast<int>(plan.heads.size());
  dp.head_dim = plan.heads[0].head_dim;
  int prefix = 0;
  for (size_t h = 0; h < plan.heads.size(); ++h) {
    const planner::HeadPlan& hp = plan.heads[h];
    // The kernels have instances for widths 1-8 only (dispatch.cuh): a
    // plan outside that never reaches them.
    if (hp.key_groups.size() > dev::kMaxGroups) return absl::InternalError("plan: too many key groups");
    for (const planner::KeyGroupPlan& kg : hp.key_groups) {
      if (kg.bits < 1 || kg.bits > 8) return absl::InternalError(absl::StrCat("plan: key width ", kg.bits));
    }
    if (hp.value_bits < 1 || hp.value_bits > 8) {
      return absl::InternalError(absl::StrCat("plan: value width ", hp.value_bits));
    }
    offs[h].perm = put(hp.permutation.data(), hp.permutation.size() * sizeof(int));
    dev::HeadPlanDevice& d = heads[h];
    d = {};
    d.head_dim = hp.head_dim;
    d.num_groups = static_cast<int>(hp.key_groups.size());
    int levels = 0;
    for (size_t g = 0; g < hp.key_groups.size(); ++g) {
      const planner::KeyGroupPlan& kg = hp.key_groups[g];
      d.group_bits[g] = kg.bits;
      d.group_offset[g] = kg.offset;
      d.group_dim[g] = kg.dim;
      d.group_code_bit_offset[g] = kg.code_bit_offset;
      offs[h].rot[g] = put(kg.rotation.data(), kg.rotation.size() * 4);
      offs[h].rot_t[g] = put_transposed(kg.rotation, kg.dim);
      offs[h].rot_frags[g] = put_fragments(kg.rotation, kg.dim);
      offs[h].cent[g] = put(kg.codebook.centroids.data(), kg.codebook.centroids.size() * 4);
      offs[h].bound[g] = put(kg.codebook.boundaries.data(), kg.codebook.boundaries.size() * 4 + 4);
      levels += 1 << kg.bits;
    }
    d.value_bits = hp.value_bits;
    offs[h].vrot = put(hp.value_rotation.data(), hp.value_rotation.size() * 4);
    offs[h].vrot_t = put_transposed(hp.value_rotation, hp.head_dim);
    offs[h].vrot_frags = put_fragments(hp.value_rotation, hp.head_dim);
    offs[h].vcent = put(hp.value_codebook.centroids.data(), hp.value_codebook.centroids.size() * 4);
    offs[h].vbound = put(hp.value_codebook.boundaries.data(), hp.value_codebook.boundaries.size() * 4 + 4);
    d.key_norms_offset = hp.layout.key_norms_offset;
    d.value_norm_offset = hp.layout.value_norm_offset;
    d.key_codes_offset = hp.layout.key_codes_offset;
    d.key_code_bits = hp.layout.key_code_bits;
    d.value_codes_offset = hp.layout.value_codes_offset;
    d.record_bytes = hp.layout.record_bytes;
    d.record_prefix = prefix;
    {
      int bits[dev::kMaxGroups] = {};
      const float* centroids[dev::kMaxGroups] = {};
      for (size_t g = 0; g < hp.key_groups.size(); ++g) {
        bits[g] = hp.key_groups[g].bits;
        centroids[g] = hp.key_groups[g].codebook.centroids.data();
      }
      const int n = static_cast<int>(hp.key_groups.size());
      std::vector<unsigned char> image(dev::AttendMmaTableBytes(bits, n, hp.value_bits));
      dev::AttendMmaTableImage(bits, centroids, n, hp.value_bits, hp.value_codebook.centroids.data(), image.data(),
                               d.table_offset);
      d.table_image_bytes = static_cast<int>(image.size());
      offs[h].tables = put(image.data(), image.size());
    }
    prefix += hp.layout.record_bytes;
    dp.max_record_bytes = std::max(dp.max_record_bytes, hp.layout.record_bytes);
    dp.max_levels = std::max(dp.max_levels, levels + (1 << hp.value_bits));
  }
  dp.table_bytes = MmaTableBytes(plan);
  dp.half_levels = HalfExactLevels(plan);
  ROPEKV_UPLOAD_CUDA(cudaMalloc(&dp.blob, blob.size()));
  ROPEKV_UPLOAD_CUDA(cudaMemcpy(dp.blob, blob.data(), blob.size(), cudaMemcpyHostToDevice));
  char* base = static_cast<char*>(dp.blob);
  for (size_t h = 0; h < heads.size(); ++h) {
    dev::HeadPlanDevice& d = heads[h];
    d.permutation = reinterpret_cast<const int*>(base + offs[h].perm);
    for (int g = 0; g < d.num_groups; ++g) {
      d.rotation[g] = reinterpret_cast<const float*>(base + offs[h].rot[g]);
      d.rotation_t[g] = reinterpret_cast<const float*>(base + offs[h].rot_t[g]);
      d.rotation_frags[g] = reinterpret_cast<const uint32_t*>(base + offs[h].rot_frags[g]);
      d.centroids[g] = reinterpret_cast<const float*>(base + offs[h].cent[g]);
      d.boundaries[g] = reinterpret_cast<const float*>(base + offs[h].bound[g]);
    }
    d.value_rotation = reinterpret_cast<const float*>(base + offs[h].vrot);
    d.value_rotation_t = reinterpret_cast<const float*>(base + offs[h].vrot_t);
    d.value_rotation_frags = reinterpret_cast<const uint32_t*>(base + offs[h].vrot_frags);
    d.table_image = reinterpret_cast<const unsigned char*>(base + offs[h].tables);
    d.value_centroids = reinterpret_cast<const float*>(base + offs[h].vcent);
    d.value_boundaries = reinterpret_cast<const float*>(base + offs[h].vbound);
  }
  ROPEKV_UPLOAD_CUDA(cudaMalloc(reinterpret_cast<void**>(&dp.heads), heads.size() * sizeof(dev::HeadPlanDevice)));
  ROPEKV_UPLOAD_CUDA(cudaMemcpy(dp.heads, heads.data(), heads.size() * sizeof(dev::HeadPlanDevice),
                                cudaMemcpyHostToDevice));
#undef ROPEKV_UPLOAD_CUDA
  *out = dp;
  return absl::OkStatus();
}

}  // namespace ropekv::kernels::cuda_host
