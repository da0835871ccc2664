// ropekv::client::ClusterClient: several ropekv servers addressed as one.
//
// Every session lives on one member, the owner of its id by rendezvous
// hashing (proto/routing.h); the servers, started with the same
// --cluster_members, refuse to create a session they do not own, naming
// the owner. So adding a member moves only the sessions it now owns, and a
// member that is down fails only its own sessions' calls (UNAVAILABLE).
//
// Profiles are created on and deleted from every member. Attend requests
// whose items live on several members are split, sent concurrently and
// reassembled in item order.
//
// Long contexts: a ShardedSession spreads one sequence over sessions on
// different members, shard i holding tokens [i * shard_tokens,
// (i + 1) * shard_tokens); attention runs on every shard and the partial
// results are merged here by their log-sum-exp, which is exact (the same
// softmax over the union of the tokens, up to float rounding).
//
// Thread safety: as Client (many threads may share one ClusterClient).
#ifndef ROPEKV_CLIENT_CLUSTER_H_
#define ROPEKV_CLIENT_CLUSTER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/client.h"

namespace ropekv::client {

struct ClusterOptions {
  // Members as gRPC targets "host:port", spelled exactly as the servers'
  // --cluster_members (the names are what the hashing sees).
  std::vector<std::string> members;
  // Used when `members` is empty: "host:port" whose host resolves to
  // several addresses; each becomes a member "address:port" (sorted). The
  // servers must then be started with those same names.
  std::string dns_name;
  // Token, TLS, deadline, sizes... for every member (target is ignored).
  ClientOptions client;
};

// One sequence over several sessions (see the file comment).
struct ShardedSession {
  std::string id;
  int64_t shard_tokens = 0;
  std::vector<std::string> shard_session_ids;  // in token order
};

class ClusterClient {
 public:
  // INVALID_ARGUMENT for no members, a duplicated member or bad options;
  // UNAVAILABLE when dns_name does not resolve.
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Connect(const ClusterOptions& options);

  const std::vector<std::string>& members() const { return members_; }
  // The member that owns `session_id`, and a client for it.
  size_t OwnerOf(absl::string_view session_id) const;
  Client& ForSession(absl::string_view session_id) { return *clients_[OwnerOf(session_id)]; }
  Client& member(size_t i) { return *clients_[i]; }

  // On every member. CreateProfile returns the first member's info, or the
  // first failure (members that succeeded keep the profile: it is
  // idempotent to create again after DeleteProfile).
  absl::StatusOr<ropekv::v1::ProfileInfo> CreateProfile(const ropekv::v1::ProfileSpec& spec);
  absl::Status DeleteProfile(const std::string& profile_id);

  // Routed to the owner. CreateSession needs a session_id (the owner of an
  // id-less session is not known in advance).
  absl::StatusOr<ropekv::v1::SessionInfo> CreateSession(const ropekv::v1::CreateSessionRequest& request);
  absl::StatusOr<ropekv::v1::SessionInfo> GetSession(const std::string& session_id);
  absl::Status DropSession(const std::string& session_id);
  absl::StatusOr<ropekv::v1::AppendResponse> Append(const std::string& session_id,
                                                    absl::Span<const LayerKv> layers);
  absl::Status Read(const ropekv::v1::ReadRequest& request,
                    const std::function<bool(const ropekv::v1::ReadResponse&)>& on_message);
  // Items grouped per owner, one concurrent call each; fails with the
  // first member's error when any fails.
  absl::StatusOr<ropekv::v1::AttendResponse> Attend(const ropekv::v1::AttendRequest& request);
  // Every member's sessions; fails when any member fails.
  absl::StatusOr<std::vector<ropekv::v1::SessionInfo>> ListSessions();

  // Creates `shards` sessions "<id>.shard<i>-<k>", shard i on the i-th member
  // of the id's rendezvous ranking (wrapping around), so consecutive
  // shards sit on different members when there are enough. Every client
  // with the same members derives the same shard ids.
  absl::StatusOr<ShardedSession> CreateShardedSession(const std::string& id,
                                                      const std::string& profile_id, int shards,
                                                      int64_t shard_tokens);
  // Appends tokens at global positions, split at shard boundaries, one
  // stream per shard touched, in token order. Each shard's part is atomic;
  // when a later shard fails, the earlier parts stay committed (the
  // sequence is then their prefix) and the status names the shard.
  absl::Status AppendSharded(const ShardedSession& session, absl::Span<const LayerKv> layers);
  // Attention of one item over all shards (item.session_id is ignored;
  // causal_offset is a global position), merged by log-sum-exp. Shards
  // that no query can see are not called.
  absl::StatusOr<ropekv::v1::AttendResult> AttendSharded(const ShardedSession& session,
                                                         const ropekv::v1::AttendItem& item);
  absl::Status DropShardedSession(const ShardedSession& session);

 private:
  ClusterClient() = default;
  std::vector<std::string> members_;
  std::vector<std::unique_ptr<Client>> clients_;
};

}  // namespace ropekv::client

#endif  // ROPEKV_CLIENT_CLUSTER_H_
