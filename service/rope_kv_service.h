// The gRPC surface of ropekv (service ropekv.v1.RopeKv, callback API):
// request validation, proto <-> domain conversion and status mapping over
// the profile registry, the session store and a kernels backend.
//
// Every call first authenticates (tenant from the bearer token), then
// validates every field before any state changes; errors carry the most
// specific code and a message naming the field and what was expected.
// Reactor callbacks never block on I/O; the next read or write starts only
// in the previous one's On*Done.
//
// Thread safety: all methods may be called concurrently by gRPC.
#ifndef ROPEKV_SERVICE_ROPE_KV_SERVICE_H_
#define ROPEKV_SERVICE_ROPE_KV_SERVICE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "kernels/backend.h"
#include "ropekv/v1/service.grpc.pb.h"
#include "service/attend_batcher.h"
#include "service/auth.h"
#include "service/executor.h"
#include "service/limits.h"
#include "service/metrics.h"
#include "service/page_pool.h"
#include "service/profiles.h"
#include "service/sessions.h"

namespace ropekv::service {

// absl and gRPC share status code numbers.
grpc::Status ToGrpcStatus(const absl::Status& status);

struct ServiceDeps {
  ProfileRegistry* profiles = nullptr;
  SessionStore* sessions = nullptr;
  PagePool* pool = nullptr;
  kernels::Backend* backend = nullptr;
  const Authenticator* auth = nullptr;
  // RPC counts and latencies, ingest counters (null: not recorded).
  Metrics* metrics = nullptr;
  // Largest response message; larger ones fail with RESOURCE_EXHAUSTED.
  int64_t max_message_bytes = 64 << 20;
  // Reported by GetServerInfo.
  std::string device;
  // Serve the Echo diagnostics (off: UNIMPLEMENTED).
  bool enable_echo = false;
  // Merges concurrent calls' attention items (null: each call on its own).
  AttendBatcher* batcher = nullptr;
  // Bounds on what a request may name, and the tenants' profile memory
  // (null: not counted).
  RequestLimits limits;
  ProfileMemory* profile_memory = nullptr;
  // Where profile plans are built, off the callback threads (null: on the
  // callback thread that ends the stream).
  Executor* planner = nullptr;
  // Cluster membership (ServerOptions): empty = owns every session.
  std::vector<std::string> cluster_members;
  std::string cluster_self;
};

class RopeKvService final : public ropekv::v1::RopeKv::CallbackService {
 public:
  explicit RopeKvService(const ServiceDeps& deps) : deps_(deps) {}

  grpc::ServerReadReactor<ropekv::v1::CreateProfileRequest>* CreateProfile(
      grpc::CallbackServerContext* ctx, ropekv::v1::ProfileInfo* response) override;
  grpc::ServerUnaryReactor* GetProfile(grpc::CallbackServerContext* ctx,
                                       const ropekv::v1::GetProfileRequest* request,
                                       ropekv::v1::ProfileInfo* response) override;
  grpc::ServerUnaryReactor* ListProfiles(grpc::CallbackServerContext* ctx,
                                         const ropekv::v1::ListProfilesRequest* request,
                                         ropekv::v1::ListProfilesResponse* response) override;
  grpc::ServerUnaryReactor* DeleteProfile(grpc::CallbackServerContext* ctx,
                                          const ropekv::v1::DeleteProfileRequest* request,
                                          ropekv::v1::DeleteProfileResponse* response) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const ropekv::v1::CreateSessionRequest* request,
                                          ropekv::v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const ropekv::v1::GetSessionRequest* request,
                                       ropekv::v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx,
                                         const ropekv::v1::ListSessionsRequest* request,
                                         ropekv::v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DropSession(grpc::CallbackServerContext* ctx,
                                        const ropekv::v1::DropSessionRequest* request,
                                        ropekv::v1::DropSessionResponse* response) override;
  grpc::ServerReadReactor<ropekv::v1::AppendRequest>* Append(
      grpc::CallbackServerContext* ctx, ropekv::v1::AppendResponse* response) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* ctx,
                                   const ropekv::v1::AttendRequest* request,
                                   ropekv::v1::AttendResponse* response) override;
  grpc::ServerBidiReactor<ropekv::v1::AttendRequest, ropekv::v1::AttendResponse>*
  AttendStream(grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<ropekv::v1::ReadResponse>* Read(
      grpc::CallbackServerContext* ctx, const ropekv::v1::ReadRequest* request) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const ropekv::v1::GetServerInfoRequest* request,
                                          ropekv::v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* ctx,
                                 const ropekv::v1::EchoRequest* request,
                                 ropekv::v1::EchoResponse* response) override;
  grpc::ServerReadReactor<ropekv::v1::EchoRequest>* EchoStream(
      grpc::CallbackServerContext* ctx, ropekv::v1::EchoResponse* response) override;

  // Shared by the RPCs and their reactors.
  absl::StatusOr<std::string> TenantOf(grpc::CallbackServerContext* ctx) const;
  absl::Status DoAttend(const std::string& tenant, const ropekv::v1::AttendRequest& request,
                        ropekv::v1::AttendResponse* response) const;
  const ServiceDeps& deps() const { return deps_; }
  // Counts a finished call and its latency.
  void Record(const char* method, absl::Time start, const grpc::Status& status) const;

 private:
  ServiceDeps deps_;
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_ROPE_KV_SERVICE_H_
