// Reader of .safetensors files (8-byte little-endian header length, a JSON
// header, raw little-endian tensor data), the format calibration activations
// come in.
//
// Every header field is checked before any data is touched: dtype known,
// shape non-negative, offsets inside the data and matching the shape. A bad
// file gives INVALID_ARGUMENT (or DATA_LOSS when truncated), never a crash.
//
// Thread safety: a SafetensorsFile is immutable after Open; const methods
// may run concurrently.
#ifndef ROPEKV_PLANNER_SAFETENSORS_H_
#define ROPEKV_PLANNER_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ropekv::planner {

enum class TensorDType { kF16, kBF16, kF32, kF64, kI32, kI64 };

struct TensorInfo {
  TensorDType dtype = TensorDType::kF32;
  std::vector<int64_t> shape;
  int64_t begin = 0;  // byte offsets into the data section
  int64_t end = 0;
  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // NOT_FOUND when the file cannot be opened; otherwise as Parse.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // DATA_LOSS when the bytes are shorter than the header says;
  // INVALID_ARGUMENT for a malformed header.
  static absl::StatusOr<SafetensorsFile> Parse(std::string bytes);

  // The header's "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }

  // NOT_FOUND for an unknown name; INVALID_ARGUMENT when the tensor's rank
  // or (where non-negative) dims differ from `expected_shape` (empty = any),
  // or its dtype is not F16/BF16/F32.
  absl::StatusOr<std::vector<float>> ReadFloat(
      const std::string& name, const std::vector<int64_t>& expected_shape = {}) const;
  // Same for I64 tensors.
  absl::StatusOr<std::vector<int64_t>> ReadInt64(
      const std::string& name, const std::vector<int64_t>& expected_shape = {}) const;

 private:
  SafetensorsFile() = default;
  absl::StatusOr<const TensorInfo*> Lookup(
      const std::string& name, const std::vector<int64_t>& expected_shape) const;

  std::string bytes_;
  int64_t data_offset_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_SAFETENSORS_H_
