// Profiles: building them from a client's spec (calibration samples,
// scores or an explicit allocation) and keeping them per tenant, persisted
// under the data directory and reloaded at start.
//
// Files: <data_dir>/profiles/<tenant>/<profile_id>.profile, each a
// ropekv.v1.ProfileFile (CRC-checked). A file that fails to load is kept in
// the registry as unavailable, with the reason, and the others are served.
//
// Thread safety: ProfileRegistry is thread-safe; ProfileBuilder is used by
// one stream at a time.
#ifndef ROPEKV_SERVICE_PROFILES_H_
#define ROPEKV_SERVICE_PROFILES_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "planner/plan.h"
#include "planner/scores.h"
#include "ropekv/v1/service.pb.h"

namespace ropekv::service {

// OK for 1-128 characters of [A-Za-z0-9._-] (not "." or ".."); otherwise
// INVALID_ARGUMENT naming `field`.
absl::Status ValidateId(const std::string& id, const std::string& field);

// Accumulates one CreateProfile stream.
class ProfileBuilder {
 public:
  // Validates the spec (id, geometry, budget, source). INVALID_ARGUMENT
  // naming the field.
  static absl::StatusOr<std::unique_ptr<ProfileBuilder>> Start(
      const ropekv::v1::ProfileSpec& spec);
  // Adds calibration samples. FAILED_PRECONDITION when the source is not
  // calibration; OUT_OF_RANGE for a bad layer; INVALID_ARGUMENT for bad
  // tensors (nothing is added then).
  absl::Status AddCalibration(const ropekv::v1::CalibrationChunk& chunk);
  // Runs the allocation and builds the plans.
  absl::StatusOr<planner::ModelProfile> Finish();

  const std::string& profile_id() const { return spec_.profile_id(); }

 private:
  ProfileBuilder() = default;
  ropekv::v1::ProfileSpec spec_;
  planner::ModelGeometry geometry_;
  planner::Budget budget_;
  std::optional<planner::ScoreAccumulator> scores_;
};

struct ProfileEntry {
  std::string profile_id;
  std::shared_ptr<const planner::ModelProfile> profile;  // null if unavailable
  std::string unavailable_reason;
};

class ProfileRegistry {
 public:
  // `data_dir` empty: profiles live in memory only.
  explicit ProfileRegistry(std::string data_dir);

  // Loads every profile file under the data directory. Files that fail to
  // load become unavailable entries. Returns how many loaded and failed.
  std::pair<int, int> LoadAll();

  // Persists, then registers. ALREADY_EXISTS for a taken id; INTERNAL or
  // PERMISSION_DENIED when the file cannot be written (nothing registered).
  absl::Status Add(const std::string& tenant, const std::string& profile_id,
                   planner::ModelProfile profile);
  // NOT_FOUND for an unknown id (or another tenant's); FAILED_PRECONDITION
  // for an unavailable one.
  absl::StatusOr<std::shared_ptr<const planner::ModelProfile>> Get(
      const std::string& tenant, const std::string& profile_id) const;
  absl::StatusOr<ProfileEntry> Entry(const std::string& tenant,
                                     const std::string& profile_id) const;
  std::vector<ProfileEntry> List(const std::string& tenant) const;
  // Removes the entry and its file. NOT_FOUND for an unknown id.
  absl::Status Delete(const std::string& tenant, const std::string& profile_id);

 private:
  std::string PathFor(const std::string& tenant, const std::string& id) const;

  const std::string data_dir_;
  mutable absl::Mutex mu_;
  // (tenant, id) -> entry
  std::map<std::pair<std::string, std::string>, ProfileEntry> entries_
      ABSL_GUARDED_BY(mu_);
};

// Summary (and optionally the plan) of an entry, as sent to clients.
void EntryToInfo(const ProfileEntry& entry, bool include_plan,
                 ropekv::v1::ProfileInfo* info);

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_PROFILES_H_
