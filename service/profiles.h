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
#include "kernels/backend.h"
#include "planner/plan.h"
#include "planner/scores.h"
#include "ropekv/v1/service.pb.h"
#include "service/limits.h"

namespace ropekv::service {

// OK for 1-128 characters of [A-Za-z0-9._-] (not "." or ".."); otherwise
// INVALID_ARGUMENT naming `field`.
absl::Status ValidateId(const std::string& id, const std::string& field);

// Accumulates one CreateProfile stream.
class ProfileBuilder {
 public:
  // Validates the spec (id, geometry and its limits, budget, source; a
  // scores or allocation source entry by entry, with paths from the
  // message root such as spec.scores.heads[3].scores[5]) and charges the
  // profile's memory bound to `tenant` before anything is allocated.
  // INVALID_ARGUMENT or OUT_OF_RANGE naming the field; RESOURCE_EXHAUSTED
  // when the profile is larger than limits.max_profile_bytes or the
  // tenant's profile memory would pass its limit.
  static absl::StatusOr<std::unique_ptr<ProfileBuilder>> Start(
      const ropekv::v1::ProfileSpec& spec, const std::string& tenant,
      const RequestLimits& limits, ProfileMemory* memory);
  // Adds calibration samples. FAILED_PRECONDITION when the source is not
  // calibration; OUT_OF_RANGE for a bad layer; INVALID_ARGUMENT for bad
  // tensors; RESOURCE_EXHAUSTED past limits.max_calibration_tokens (nothing
  // is added then).
  absl::Status AddCalibration(const ropekv::v1::CalibrationChunk& chunk);
  // Runs the allocation and builds the plans; CANCELLED as soon as
  // `cancelled` returns true (it is asked between heads).
  absl::StatusOr<planner::ModelProfile> Finish(const planner::CancelCheck& cancelled = {});

  const std::string& profile_id() const { return spec_.profile_id(); }
  // The memory charged for the profile: the registry keeps it with the
  // stored profile, so it stays counted until the profile is deleted.
  std::shared_ptr<const ProfileMemory::Charge> charge() const { return charge_; }

 private:
  ProfileBuilder() = default;
  absl::Status CollectSource();

  ropekv::v1::ProfileSpec spec_;
  RequestLimits limits_;
  planner::ModelGeometry geometry_;
  planner::Budget budget_;
  std::optional<planner::ScoreAccumulator> scores_;
  planner::PerHead given_scores_;     // a scores source, checked
  planner::PerHeadBits given_bits_;   // an allocation source, checked
  std::vector<int64_t> query_tokens_, key_tokens_;  // calibration tokens per layer
  std::shared_ptr<const ProfileMemory::Charge> charge_;
};

struct ProfileEntry {
  std::string profile_id;
  std::shared_ptr<const planner::ModelProfile> profile;  // null if unavailable
  std::string unavailable_reason;
  // The profile's share of its tenant's profile memory (null when the
  // registry counts none).
  std::shared_ptr<const ProfileMemory::Charge> memory;
};

class ProfileRegistry {
 public:
  // `data_dir` empty: profiles live in memory only. `memory` (may be null)
  // is charged for profiles loaded from disk. `backend` (may be null) is
  // told to forget a profile's plans once nothing holds the profile (its
  // entry deleted, its last session gone). REQUIRES: both outlive every
  // profile the registry hands out.
  explicit ProfileRegistry(std::string data_dir, ProfileMemory* memory = nullptr,
                           kernels::Backend* backend = nullptr);

  // Loads every profile file under the data directory. Files that fail to
  // load become unavailable entries. Returns how many loaded and failed.
  std::pair<int, int> LoadAll();

  // Persists, then registers. ALREADY_EXISTS for a taken id; INTERNAL or
  // PERMISSION_DENIED when the file cannot be written (nothing registered).
  // `charge` (may be null) stays with the entry until it is deleted.
  absl::Status Add(const std::string& tenant, const std::string& profile_id,
                   planner::ModelProfile profile,
                   std::shared_ptr<const ProfileMemory::Charge> charge = nullptr);
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
  // Shares a profile whose last holder tells the backend to forget its
  // plans.
  std::shared_ptr<const planner::ModelProfile> Share(planner::ModelProfile profile) const;

  ProfileMemory* const memory_;
  kernels::Backend* const backend_;
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
