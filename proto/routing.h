// Shared by the service and the client library: which cluster member owns
// a session. Rendezvous (highest-random-weight) hashing: every member gets
// a score for the session id and the highest score owns it, so adding or
// removing a member moves only the sessions that member gains or had, and
// the answer does not depend on the order the members are listed in.
//
// The score is fixed by this contract (servers and clients of different
// builds must agree): FNV-1a 64 over the member name, one zero byte and the
// session id, then the splitmix64 finalizer. Ties (practically never) go
// to the smaller member name.
//
// Thread safety: pure functions.
#ifndef ROPEKV_PROTO_ROUTING_H_
#define ROPEKV_PROTO_ROUTING_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ropekv::routing {

// Trailing metadata key with which a server that refuses a session names
// the member that owns it.
inline constexpr char kOwnerMetadataKey[] = "ropekv-session-owner";

uint64_t Score(absl::string_view member, absl::string_view session_id);

// Index into `members` of the owner of `session_id`. REQUIRES: members is
// not empty.
size_t Owner(absl::Span<const std::string> members, absl::string_view session_id);

// Indices of `members` from the owner down (the order a session would
// fall back through if members were removed).
std::vector<size_t> Ranking(absl::Span<const std::string> members, absl::string_view session_id);

}  // namespace ropekv::routing

#endif  // ROPEKV_PROTO_ROUTING_H_
