#include "kernels/cpu/codec.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/bit_packing.h"
#include "planner/half.h"

namespace ropekv::kernels {
namespace {

using planner::FloatToHalf;
using planner::HalfToFloat;

// fp16 values are stored little-endian.
void StoreHalf(uint8_t* p, uint16_t h) {
  p[0] = static_cast<uint8_t>(h & 0xFF);
  p[1] = static_cast<uint8_t>(h >> 8);
}

uint16_t LoadHalf(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// Quantizes one group: x (dim values) -> codes, returns the corrected norm.
// Accumulates in double: the CPU backend is the reference.
absl::StatusOr<uint16_t> QuantizeGroup(const float* x, int dim,
                                       const std::vector<float>& rotation,
                                       const planner::Codebook& codebook,
                                       uint8_t* codes) {
  double norm2 = 0;
  for (int j = 0; j < dim; ++j) norm2 += static_cast<double>(x[j]) * x[j];
  const double norm = std::sqrt(norm2);
  const double inv = norm > 0 ? 1.0 / norm : 0.0;  // zero vector stays zero
  double code_norm2 = 0;
  for (int i = 0; i < dim; ++i) {
    const float* row = rotation.data() + static_cast<size_t>(i) * dim;
    double y = 0;
    for (int j = 0; j < dim; ++j) y += static_cast<double>(row[j]) * x[j];
    const int code = NearestCode(codebook, static_cast<float>(y * inv));
    codes[i] = static_cast<uint8_t>(code);
    const double c = codebook.centroids[code];
    code_norm2 += c * c;
  }
  const float corrected = static_cast<float>(norm / std::sqrt(code_norm2));
  if (!(corrected <= 65504.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vector norm ", norm, " is beyond the fp16 range of stored norms (65504)"));
  }
  return FloatToHalf(corrected);
}

absl::Status CheckFinite(const float* v, int n, const char* what) {
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": expected finite values, got ", v[i], " at dim ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int NearestCode(const planner::Codebook& codebook, float y) {
  return static_cast<int>(std::upper_bound(codebook.boundaries.begin(),
                                           codebook.boundaries.end(), y) -
                          codebook.boundaries.begin());
}

absl::Status EncodeKey(const planner::HeadPlan& plan, const float* key,
                       uint8_t* record) {
  const int d = plan.head_dim;
  if (absl::Status s = CheckFinite(key, d, "key"); !s.ok()) return s;
  float x[planner::kMaxHeadDim];
  uint8_t codes[planner::kMaxHeadDim];
  for (int j = 0; j < d; ++j) x[j] = key[plan.permutation[j]];
  // Quantize every group before writing, so an error leaves the record as
  // it was.
  uint16_t norms[planner::kMaxBits];
  for (size_t g = 0; g < plan.key_groups.size(); ++g) {
    const planner::KeyGroupPlan& grp = plan.key_groups[g];
    absl::StatusOr<uint16_t> n = QuantizeGroup(x + grp.offset, grp.dim, grp.rotation,
                                               grp.codebook, codes + grp.offset);
    if (!n.ok()) {
      return absl::Status(n.status().code(), absl::StrCat("key group ", g, ": ", n.status().message()));
    }
    norms[g] = *n;
  }
  uint8_t* stream = record + plan.layout.key_codes_offset;
  for (size_t g = 0; g < plan.key_groups.size(); ++g) {
    const planner::KeyGroupPlan& grp = plan.key_groups[g];
    StoreHalf(record + plan.layout.key_norms_offset + 2 * g, norms[g]);
    PackBits(codes + grp.offset, grp.dim, grp.bits, stream, grp.code_bit_offset);
  }
  return absl::OkStatus();
}

absl::Status EncodeValue(const planner::HeadPlan& plan, const float* value,
                         uint8_t* record) {
  const int d = plan.head_dim;
  if (absl::Status s = CheckFinite(value, d, "value"); !s.ok()) return s;
  uint8_t codes[planner::kMaxHeadDim];
  absl::StatusOr<uint16_t> n = QuantizeGroup(value, d, plan.value_rotation,
                                             plan.value_codebook, codes);
  if (!n.ok()) return absl::Status(n.status().code(), absl::StrCat("value: ", n.status().message()));
  StoreHalf(record + plan.layout.value_norm_offset, *n);
  PackBits(codes, d, plan.value_bits, record + plan.layout.value_codes_offset, 0);
  return absl::OkStatus();
}

void DecodeKey(const planner::HeadPlan& plan, const uint8_t* record, float* key) {
  uint8_t codes[planner::kMaxHeadDim];
  const uint8_t* stream = record + plan.layout.key_codes_offset;
  for (size_t g = 0; g < plan.key_groups.size(); ++g) {
    const planner::KeyGroupPlan& grp = plan.key_groups[g];
    const float norm =
        HalfToFloat(LoadHalf(record + plan.layout.key_norms_offset + 2 * g));
    UnpackBits(stream, grp.code_bit_offset, grp.dim, grp.bits, codes);
    // x_g = n' R^T c: column i of R^T is row i of R.
    for (int j = 0; j < grp.dim; ++j) {
      double s = 0;
      for (int i = 0; i < grp.dim; ++i) {
        s += static_cast<double>(grp.rotation[static_cast<size_t>(i) * grp.dim + j]) *
             grp.codebook.centroids[codes[i]];
      }
      key[plan.permutation[grp.offset + j]] = static_cast<float>(norm * s);
    }
  }
}

void DecodeValue(const planner::HeadPlan& plan, const uint8_t* record,
                 float* value) {
  const int d = plan.head_dim;
  uint8_t codes[planner::kMaxHeadDim];
  UnpackBits(record + plan.layout.value_codes_offset, 0, d, plan.value_bits, codes);
  const float norm = HalfToFloat(LoadHalf(record + plan.layout.value_norm_offset));
  for (int j = 0; j < d; ++j) {
    double s = 0;
    for (int i = 0; i < d; ++i) {
      s += static_cast<double>(plan.value_rotation[static_cast<size_t>(i) * d + j]) *
           plan.value_codebook.centroids[codes[i]];
    }
    value[j] = static_cast<float>(norm * s);
  }
}

void RotateQuery(const planner::HeadPlan& plan, const float* query,
                 float* rotated) {
  float x[planner::kMaxHeadDim];
  for (int j = 0; j < plan.head_dim; ++j) x[j] = query[plan.permutation[j]];
  for (const planner::KeyGroupPlan& grp : plan.key_groups) {
    for (int i = 0; i < grp.dim; ++i) {
      const float* row = grp.rotation.data() + static_cast<size_t>(i) * grp.dim;
      double s = 0;
      for (int j = 0; j < grp.dim; ++j) {
        s += static_cast<double>(row[j]) * x[grp.offset + j];
      }
      rotated[grp.offset + i] = static_cast<float>(s);
    }
  }
}

}  // namespace ropekv::kernels
