#include "proto/tensor_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "planner/half.h"

namespace ropekv::proto {

namespace pb = ::ropekv::v1;

int DTypeBytes(pb::DType dtype) {
  switch (dtype) {
    case pb::DTYPE_FP16:
    case pb::DTYPE_BF16:
      return 2;
    case pb::DTYPE_FP32:
      return 4;
    default:
      return 0;
  }
}

absl::StatusOr<std::vector<float>> TensorToFloats(
    const pb::Tensor& t, absl::Span<const int64_t> expected,
    const std::string& field, bool require_finite) {
  const int elem = DTypeBytes(t.dtype());
  if (elem == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".dtype: expected FP16, BF16 or FP32"));
  }
  auto shape_str = [](auto&& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); };
  auto expected_str = [&] {
    std::vector<std::string> parts;
    for (int64_t e : expected) parts.push_back(e < 0 ? "*" : std::to_string(e));
    return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
  };
  bool match = t.shape_size() == static_cast<int>(expected.size());
  for (int i = 0; match && i < t.shape_size(); ++i) {
    match = t.shape(i) >= 0 && (expected[i] < 0 || expected[i] == t.shape(i));
  }
  if (!match) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".shape: expected ", expected_str(), ", got ", shape_str(t.shape())));
  }
  // Element count without overflow: a product that would exceed what the
  // payload can hold stops at -1 (so n * elem below never overflows); a
  // zero dimension makes the tensor empty whatever the others are.
  const int64_t max_elems = static_cast<int64_t>(t.data().size()) / elem;
  int64_t n = std::find(t.shape().begin(), t.shape().end(), int64_t{0}) != t.shape().end() ? 0 : 1;
  for (int64_t d : t.shape()) {
    if (n == 0) break;
    if (n > max_elems / d) {
      n = -1;
      break;
    }
    n *= d;
  }
  if (n < 0 || n * elem != static_cast<int64_t>(t.data().size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data: shape ", shape_str(t.shape()), " needs ",
        n < 0 ? std::string("more") : std::to_string(n * elem), " bytes, got ",
        t.data().size()));
  }
  std::vector<float> out(n);
  const char* src = t.data().data();
  if (t.dtype() == pb::DTYPE_FP32) {
    if (n > 0) std::memcpy(out.data(), src, n * 4);
  } else if (t.dtype() == pb::DTYPE_FP16) {
    planner::HalvesToFloats(src, out.data(), n);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = planner::BitsToFloat(static_cast<uint32_t>(h) << 16);
    }
  }
  if (require_finite) {
    if (const int64_t i = planner::FirstNonFinite(out.data(), n); i >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".data: expected finite values, got ", out[i], " at element ", i));
    }
  }
  return out;
}

void FloatsToTensor(absl::Span<const float> data, absl::Span<const int64_t> shape,
                    pb::DType dtype, pb::Tensor* out) {
  out->Clear();
  out->set_dtype(dtype);
  for (int64_t d : shape) out->add_shape(d);
  std::string* bytes = out->mutable_data();
  if (dtype == pb::DTYPE_FP32) {
    bytes->assign(reinterpret_cast<const char*>(data.data()), data.size() * 4);
    return;
  }
  bytes->resize(data.size() * 2);
  if (dtype == pb::DTYPE_FP16) {
    planner::FloatsToHalves(data.data(), bytes->data(), static_cast<int64_t>(data.size()));
    return;
  }
  for (size_t i = 0; i < data.size(); ++i) {
    const uint16_t h = dtype == pb::DTYPE_FP16
                           ? planner::FloatToHalf(data[i])
                           : static_cast<uint16_t>(
                                 (planner::FloatBits(data[i]) + 0x7FFF +
                                  ((planner::FloatBits(data[i]) >> 16) & 1)) >> 16);
    std::memcpy(bytes->data() + 2 * i, &h, 2);
  }
}

}  // namespace ropekv::proto
