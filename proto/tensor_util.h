// Shared by the service and the client library (both speak the proto).
// Conversion between wire tensors (ropekv.v1.Tensor: raw little-endian
// bytes, dtype, shape) and fp32 host buffers, with the validation every
// request tensor gets before any state changes.
//
// Thread safety: pure functions.
#ifndef ROPEKV_PROTO_TENSOR_UTIL_H_
#define ROPEKV_PROTO_TENSOR_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ropekv/v1/service.pb.h"

namespace ropekv::proto {

// The tensor as fp32. `expected_shape` entries < 0 match any size.
// INVALID_ARGUMENT, naming `field`, for an unspecified dtype, a rank or
// shape other than expected, a byte count that does not match the shape,
// or (when `require_finite`) any NaN/Inf.
absl::StatusOr<std::vector<float>> TensorToFloats(
    const ropekv::v1::Tensor& tensor, absl::Span<const int64_t> expected_shape,
    const std::string& field, bool require_finite = true);

// Fills `out` with fp32 data converted to `dtype` (FP16, BF16 or FP32).
void FloatsToTensor(absl::Span<const float> data,
                    absl::Span<const int64_t> shape, ropekv::v1::DType dtype,
                    ropekv::v1::Tensor* out);

int DTypeBytes(ropekv::v1::DType dtype);

}  // namespace ropekv::proto

#endif  // ROPEKV_PROTO_TENSOR_UTIL_H_
