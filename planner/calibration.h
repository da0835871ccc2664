// Calibration input from activation files: which tensors, which sequences,
// and the model geometry the file's metadata declares.
//
// File layout (planner/README or the project README, "Calibration data"):
// `q`, `k` (and `v`) as [layer, head, token, head_dim] F16/BF16/F32,
// optional `seq_offsets` I64 [num_sequences + 1]; `__metadata__` may carry
// layers, q_heads, kv_heads, head_dim, rope_layout, rotary_dim, rope_theta.
//
// Thread safety: pure functions.
#ifndef ROPEKV_PLANNER_CALIBRATION_H_
#define ROPEKV_PLANNER_CALIBRATION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "planner/geometry.h"
#include "planner/safetensors.h"
#include "planner/scores.h"

namespace ropekv::planner {

// The geometry in the file's metadata, checked against the q/k shapes.
// INVALID_ARGUMENT naming the missing or inconsistent key.
absl::StatusOr<ModelGeometry> GeometryFromMetadata(const SafetensorsFile& file);

// Token ranges [begin, end) of the file's sequences (one range over all
// tokens when there is no seq_offsets). INVALID_ARGUMENT when the offsets
// are not ascending from 0 to the token count.
absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> SequenceRanges(
    const SafetensorsFile& file, int64_t num_tokens);

enum class SequenceSplit { kAll, kEven, kOdd };

// Adds the q and k rows of the selected sequences of every layer and head.
absl::Status AccumulateCalibration(const SafetensorsFile& file,
                                   SequenceSplit split,
                                   ScoreAccumulator* scores);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_CALIBRATION_H_
