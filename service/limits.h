// Bounds on every size a request can name, checked before anything is
// allocated, and the per-tenant account of profile memory.
//
// A request is a few bytes; what it names (layers, heads, tokens, items)
// decides how much memory and time the server spends on it. Every such
// number is bounded here by a server option with a default sized for real
// models, so that no single call, however formed, can exhaust the server.
// Sizes of the request itself are INVALID_ARGUMENT; what accumulates (a
// sequence's length, a tenant's profile memory) is RESOURCE_EXHAUSTED. The
// message names the field, the value and the limit (with its flag).
//
// Thread safety: RequestLimits is a plain value; ProfileMemory is
// thread-safe.
#ifndef ROPEKV_SERVICE_LIMITS_H_
#define ROPEKV_SERVICE_LIMITS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "planner/geometry.h"
#include "ropekv/v1/profile.pb.h"

namespace ropekv::service {

struct RequestLimits {
  // Profile geometry (the largest published models have about 128 layers,
  // 128 query heads and head_dim 256).
  int64_t max_layers = 1024;      // --max_layers
  int64_t max_heads = 1024;       // --max_heads: query heads (KV heads <= query heads)
  int64_t max_head_dim = planner::kMaxHeadDim;  // --max_head_dim, at most 512
  // Host memory of one profile's plan (ProfileBytesUpperBound), and of all
  // profiles of one tenant, built or being built.
  int64_t max_profile_bytes = int64_t{1} << 30;    // --max_profile_bytes
  int64_t tenant_profile_bytes = int64_t{4} << 30;  // --tenant_profile_bytes
  // Calibration tokens per layer over one CreateProfile call.
  int64_t max_calibration_tokens = int64_t{1} << 20;  // --max_calibration_tokens
  // Tokens in one Append message, and in one layer of a session.
  int64_t max_chunk_tokens = 65536;                  // --max_chunk_tokens
  int64_t max_sequence_tokens = int64_t{1} << 24;    // --max_sequence_tokens
  // Items in one Attend request, and queries per item.
  int64_t max_attend_items = 1024;  // --max_attend_items
  int64_t max_q_len = 65536;        // --max_q_len

  // INVALID_ARGUMENT naming the option when a limit is out of its range.
  absl::Status Validate() const;
};

// The spec's geometry against the limits, on the raw wire values (before
// any conversion clamps them): INVALID_ARGUMENT naming
// spec.geometry.<field>, its value and the limit.
absl::Status CheckGeometryLimits(const ropekv::v1::ModelGeometry& geometry,
                                 const RequestLimits& limits);

// Host memory held for each tenant's profiles: their plans once stored and
// the builds in flight, each counted at planner::ProfileBytesUpperBound
// from the moment a CreateProfile's spec is accepted until the profile is
// deleted (or its build fails).
class ProfileMemory {
 public:
  explicit ProfileMemory(int64_t tenant_limit) : tenant_limit_(tenant_limit) {}

  // Bytes counted for one tenant until the charge is destroyed.
  class Charge {
   public:
    ~Charge();
    Charge(const Charge&) = delete;
    Charge& operator=(const Charge&) = delete;
    int64_t bytes() const { return bytes_; }

   private:
    friend class ProfileMemory;
    Charge(ProfileMemory* owner, std::string tenant, int64_t bytes)
        : owner_(owner), tenant_(std::move(tenant)), bytes_(bytes) {}
    ProfileMemory* owner_;
    const std::string tenant_;
    const int64_t bytes_;
  };

  // RESOURCE_EXHAUSTED (naming `field`, the tenant's use and the limit)
  // when the tenant's bytes would pass the limit.
  absl::StatusOr<std::shared_ptr<const Charge>> Reserve(const std::string& tenant,
                                                        int64_t bytes,
                                                        const std::string& field);
  // Counts without a check: profiles loaded from disk at start, which were
  // admitted when they were created.
  std::shared_ptr<const Charge> ReserveUnchecked(const std::string& tenant, int64_t bytes);

  int64_t used(const std::string& tenant) const;
  int64_t tenant_limit() const { return tenant_limit_; }

  // REQUIRES: every Charge has been destroyed.
  ~ProfileMemory() = default;

 private:
  void Release(const std::string& tenant, int64_t bytes);

  const int64_t tenant_limit_;
  mutable absl::Mutex mu_;
  std::map<std::string, int64_t> used_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_LIMITS_H_
