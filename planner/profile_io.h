// Conversion of a ModelProfile to and from the versioned protobuf message
// ropekv.v1.Profile, and its file form.
//
// Everything read is validated (ValidateProfile) before it is returned, so a
// truncated or tampered file gives an error, never a plan that would decode
// garbage.
//
// Thread safety: pure functions.
#ifndef ROPEKV_PLANNER_PROFILE_IO_H_
#define ROPEKV_PLANNER_PROFILE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "planner/plan.h"
#include "ropekv/v1/profile.pb.h"

namespace ropekv::planner {

// The format_version this build writes and reads.
inline constexpr uint32_t kProfileFormatVersion = 1;

ropekv::v1::Profile ProfileToProto(const ModelProfile& profile);

void GeometryToProto(const ModelGeometry& g, ropekv::v1::ModelGeometry* out);
void BudgetToProto(const Budget& b, ropekv::v1::Budget* out);
// INVALID_ARGUMENT naming the field when out of range.
absl::StatusOr<ModelGeometry> GeometryFromProto(const ropekv::v1::ModelGeometry& g);
// With `apply_defaults`, zero/unspecified min_bits, max_bits and score take
// their defaults (1, 8, LOGIT) and seed 0 the default seed, as for a
// client's request; a stored profile must carry every field.
absl::StatusOr<Budget> BudgetFromProto(const ropekv::v1::Budget& b,
                                       bool apply_defaults);

// INVALID_ARGUMENT for a malformed or inconsistent message;
// FAILED_PRECONDITION for a format_version this build does not know.
absl::StatusOr<ModelProfile> ProfileFromProto(const ropekv::v1::Profile& proto);

// Writes a ropekv.v1.ProfileFile (the profile plus its CRC-32) atomically
// (temporary file, then rename). Errors from the file
// system map to INTERNAL/PERMISSION_DENIED/NOT_FOUND.
absl::Status SaveProfile(const ModelProfile& profile, const std::string& path);

// NOT_FOUND when the file is missing; DATA_LOSS when it is truncated,
// corrupted (checksum mismatch) or not a profile; otherwise as
// ProfileFromProto.
absl::StatusOr<ModelProfile> LoadProfile(const std::string& path);
// The same for a file's bytes; `name` prefixes the messages.
absl::StatusOr<ModelProfile> ProfileFromFileBytes(const std::string& bytes, const std::string& name);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_PROFILE_IO_H_
