#include "service/limits.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace ropekv::service {

namespace pb = ::ropekv::v1;

absl::Status RequestLimits::Validate() const {
  struct Range {
    const char* flag;
    int64_t value, lo, hi;
  };
  const Range ranges[] = {
      {"max_layers", max_layers, 1, 1 << 20},
      {"max_heads", max_heads, 1, 1 << 20},
      {"max_head_dim", max_head_dim, 2, planner::kMaxHeadDim},
      {"max_profile_bytes", max_profile_bytes, 1 << 20, int64_t{1} << 50},
      {"tenant_profile_bytes", tenant_profile_bytes, 1 << 20, int64_t{1} << 50},
      {"max_calibration_tokens", max_calibration_tokens, 1, int64_t{1} << 40},
      {"max_chunk_tokens", max_chunk_tokens, 1, int64_t{1} << 30},
      {"max_sequence_tokens", max_sequence_tokens, 1, int64_t{1} << 40},
      {"max_attend_items", max_attend_items, 1, 1 << 20},
      {"max_q_len", max_q_len, 1, 1 << 24},
  };
  for (const Range& r : ranges) {
    if (r.value < r.lo || r.value > r.hi) {
      return absl::InvalidArgumentError(absl::StrCat(r.flag, ": expected [", r.lo, ", ", r.hi,
                                                     "], got ", r.value));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckGeometryLimits(const pb::ModelGeometry& g, const RequestLimits& limits) {
  struct Bound {
    const char* field;
    uint64_t value;
    int64_t limit;
    const char* flag;
  };
  const Bound bounds[] = {
      {"num_layers", g.num_layers(), limits.max_layers, "--max_layers"},
      {"num_q_heads", g.num_q_heads(), limits.max_heads, "--max_heads"},
      {"num_kv_heads", g.num_kv_heads(), limits.max_heads, "--max_heads"},
      {"head_dim", g.head_dim(), limits.max_head_dim, "--max_head_dim"},
      {"rotary_dim", g.rotary_dim(), limits.max_head_dim, "--max_head_dim"},
  };
  for (const Bound& b : bounds) {
    if (b.value > static_cast<uint64_t>(b.limit)) {
      return absl::InvalidArgumentError(absl::StrCat("spec.geometry.", b.field, ": expected at most ",
                                                     b.limit, " (", b.flag, "), got ", b.value));
    }
  }
  return absl::OkStatus();
}

ProfileMemory::Charge::~Charge() { owner_->Release(tenant_, bytes_); }

absl::StatusOr<std::shared_ptr<const ProfileMemory::Charge>> ProfileMemory::Reserve(
    const std::string& tenant, int64_t bytes, const std::string& field) {
  absl::MutexLock lock(&mu_);
  int64_t& used = used_[tenant];
  if (bytes > tenant_limit_ - used) {
    const int64_t have = used;
    if (used == 0) used_.erase(tenant);
    return absl::ResourceExhaustedError(absl::StrCat(
        field, ": the profile needs up to ", bytes, " bytes of server memory; this tenant's profiles hold ",
        have, " of its ", tenant_limit_, " (--tenant_profile_bytes); delete profiles or ask for a smaller one"));
  }
  used += bytes;
  return std::shared_ptr<const Charge>(new Charge(this, tenant, bytes));
}

std::shared_ptr<const ProfileMemory::Charge> ProfileMemory::ReserveUnchecked(const std::string& tenant,
                                                                              int64_t bytes) {
  absl::MutexLock lock(&mu_);
  used_[tenant] += bytes;
  return std::shared_ptr<const Charge>(new Charge(this, tenant, bytes));
}

int64_t ProfileMemory::used(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = used_.find(tenant);
  return it == used_.end() ? 0 : it->second;
}

void ProfileMemory::Release(const std::string& tenant, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = used_.find(tenant);
  if (it == used_.end()) return;
  it->second -= bytes;
  if (it->second <= 0) used_.erase(it);
}

}  // namespace ropekv::service
