// A running ropekv server: the gRPC service, health and reflection on one
// port, over a page pool, a session store and a backend. Used by the
// ropekv-server binary and by the integration tests (port 0 picks a free
// port).
//
// Thread safety: Shutdown and Wait may be called from any thread, once.
#ifndef ROPEKV_SERVICE_SERVER_H_
#define ROPEKV_SERVICE_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/limits.h"

namespace grpc {
class Server;
}

namespace ropekv::kernels {
class Backend;
}

namespace ropekv::service {

class PagePool;
class ProfileRegistry;
class SessionStore;
class Authenticator;
class RopeKvService;
class Metrics;
class AttendBatcher;
class Executor;
class ProfileMemory;

struct ServerOptions {
  // host:port; port 0 picks a free one (see Server::port()).
  std::string address = "127.0.0.1:50051";
  // auto (CUDA when built and a device is visible, else CPU), cpu, cuda.
  std::string backend = "auto";
  // Cache memory reserved at start, cut into pages of page_bytes.
  int64_t memory_bytes = int64_t{1} << 30;
  int64_t page_bytes = 256 << 10;
  // Largest page count one tenant may hold (0 = no limit).
  int64_t tenant_page_quota = 0;
  // Where profiles persist ("" = memory only).
  std::string data_dir;
  // Largest request or response message.
  int64_t max_message_bytes = 64 << 20;
  // Bearer tokens -> tenants ("" = no authentication).
  std::string token_file;
  // PEM files; both set = TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA certificates of clients: set = mutual TLS, every client must
  // present a certificate signed by one of them (requires TLS).
  std::string tls_client_ca_file;
  // Serve plaintext on a non-loopback address (refused by default).
  bool allow_insecure_remote = false;
  // CPU backend worker threads (0 = all cores).
  int cpu_threads = 0;
  // CUDA backend: calls in flight at once, each on its own stream (1..64).
  int cuda_streams = 8;
  // host:port of the Prometheus endpoint ("" = metrics kept but not served).
  std::string metrics_address;
  // Serve the Echo diagnostics used by ropekv-bench as the RPC ceiling.
  bool enable_echo = false;
  // Attend items of calls arriving within this window of each other are
  // computed together (one launch per shape on CUDA); 0 = each call alone.
  absl::Duration attend_batch_window = absl::ZeroDuration();
  int attend_batch_max_items = 64;
  // Several servers addressed as one (proto/routing.h): the names of all
  // members as clients address them, and this server's own name among
  // them. Sessions are created only on the member that owns their id;
  // empty = a server on its own, owning every session.
  std::vector<std::string> cluster_members;
  std::string cluster_self;
  // Bounds on every size a request can name (service/limits.h).
  RequestLimits limits;
  // Threads that build profile plans (CreateProfile), off the callback
  // threads; builds beyond these wait in order.
  int planner_threads = 2;
};

class Server {
 public:
  // Reserves memory, loads profiles and starts serving.
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when the port cannot be
  // bound or the requested backend is missing.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  const char* backend_name() const;
  SessionStore& sessions() { return *sessions_; }
  PagePool& pool() { return *pool_; }
  Metrics& metrics() { return *metrics_; }
  const AttendBatcher& attend_batcher() const { return *batcher_; }

  // Updates the store gauges (also done every second).
  void RefreshGauges();

  // Stops accepting calls, lets in-flight calls finish within `grace`, then
  // cancels the rest.
  void Shutdown(absl::Duration grace);
  void Wait();

 private:
  Server() = default;

  // Declaration order is destruction order reversed: the backend owns the
  // pool's memory, the pool outlives the sessions that hold its pages.
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<ProfileMemory> profile_memory_;  // outlives the profiles it counts
  std::unique_ptr<ProfileRegistry> profiles_;
  std::unique_ptr<SessionStore> sessions_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<AttendBatcher> batcher_;
  std::unique_ptr<RopeKvService> service_;
  // Its work belongs to calls, so it is joined after the server has
  // ended every call and before the service goes.
  std::unique_ptr<Executor> planner_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Notification stop_;
  std::thread janitor_;  // idle-TTL expiry, gauges, backend health
  bool unhealthy_reported_ = false;  // janitor thread only
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_SERVER_H_
