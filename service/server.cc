#include "service/server.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/backend.h"
#include "service/attend_batcher.h"
#include "service/auth.h"
#include "service/executor.h"
#include "service/limits.h"
#include "service/log.h"
#include "service/metrics.h"
#include "service/page_pool.h"
#include "service/profiles.h"
#include "service/rope_kv_service.h"
#include "service/sessions.h"

namespace ropekv::service {
namespace {

constexpr char kServiceName[] = "ropekv.v1.RopeKv";

bool IsLoopback(const std::string& address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "localhost:") ||
         absl::StartsWith(address, "[::1]:") || absl::StartsWith(address, "unix:");
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& o) {
  std::unique_ptr<Server> server(new Server());
  const bool tls = !o.tls_cert_file.empty() || !o.tls_key_file.empty();
  if (tls && (o.tls_cert_file.empty() || o.tls_key_file.empty())) {
    return absl::InvalidArgumentError("tls_cert/tls_key: expected both or neither");
  }
  if (!o.cluster_members.empty() &&
      std::find(o.cluster_members.begin(), o.cluster_members.end(), o.cluster_self) ==
          o.cluster_members.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_self: expected one of cluster_members (", absl::StrJoin(o.cluster_members, ","),
        "), got '", o.cluster_self, "'"));
  }
  if (o.cluster_members.empty() != o.cluster_self.empty()) {
    return absl::InvalidArgumentError("cluster_members/cluster_self: expected both or neither");
  }
  if (!tls && !o.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_client_ca: mutual TLS needs TLS: expected tls_cert and tls_key as well");
  }
  if (!tls && !IsLoopback(o.address) && !o.allow_insecure_remote) {
    return absl::InvalidArgumentError(absl::StrCat(
        "address ", o.address, " is not loopback: serve it with TLS (--tls_cert, --tls_key) "
        "or pass --allow_insecure_remote"));
  }
  if (o.max_message_bytes < (1 << 20) || o.max_message_bytes > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes: expected [1 MiB, 2 GiB), got ", o.max_message_bytes));
  }
  if (o.attend_batch_window < absl::ZeroDuration() || o.attend_batch_window > absl::Milliseconds(100)) {
    return absl::InvalidArgumentError(absl::StrCat("attend_batch_window: expected [0, 100ms], got ",
                                                   absl::FormatDuration(o.attend_batch_window)));
  }
  if (o.attend_batch_max_items < 1 || o.attend_batch_max_items > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("attend_batch_max_items: expected [1, 4096], got ", o.attend_batch_max_items));
  }
  if (absl::Status s = o.limits.Validate(); !s.ok()) return s;
  if (o.planner_threads < 1 || o.planner_threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("planner_threads: expected [1, 256], got ", o.planner_threads));
  }
  absl::StatusOr<kernels::CreatedBackend> created = kernels::CreateBackend(
      {.kind = o.backend, .cpu_threads = o.cpu_threads, .cuda_device = 0, .cuda_streams = o.cuda_streams});
  if (!created.ok()) return created.status();
  server->backend_ = std::move(created->backend);
  const std::string device = created->device;

  absl::StatusOr<std::unique_ptr<PagePool>> pool =
      PagePool::Create(o.memory_bytes, o.page_bytes, server->backend_.get());
  if (!pool.ok()) return pool.status();
  server->pool_ = *std::move(pool);
  server->pool_->set_tenant_quota(o.tenant_page_quota);

  server->auth_ = std::make_unique<Authenticator>();
  if (!o.token_file.empty()) {
    absl::StatusOr<Authenticator> auth = Authenticator::LoadTokenFile(o.token_file);
    if (!auth.ok()) return auth.status();
    *server->auth_ = *std::move(auth);
  }

  server->profile_memory_ = std::make_unique<ProfileMemory>(o.limits.tenant_profile_bytes);
  server->profiles_ =
      std::make_unique<ProfileRegistry>(o.data_dir, server->profile_memory_.get(), server->backend_.get());
  const auto [loaded, failed] = server->profiles_->LoadAll();
  if (failed > 0) {
    Log(LogLevel::kWarning, "profiles_unavailable",
        {{"count", std::to_string(failed)}, {"data_dir", o.data_dir}});
  }
  server->sessions_ = std::make_unique<SessionStore>(server->pool_.get());

  if (o.metrics_address.empty()) {
    server->metrics_ = std::make_unique<Metrics>();
  } else {
    absl::StatusOr<std::unique_ptr<Metrics>> m = Metrics::Serve(o.metrics_address);
    if (!m.ok()) return m.status();
    server->metrics_ = *std::move(m);
  }

  ServiceDeps deps;
  deps.profiles = server->profiles_.get();
  deps.sessions = server->sessions_.get();
  deps.pool = server->pool_.get();
  deps.backend = server->backend_.get();
  deps.auth = server->auth_.get();
  deps.metrics = server->metrics_.get();
  deps.max_message_bytes = o.max_message_bytes;
  deps.device = device;
  deps.enable_echo = o.enable_echo;
  deps.cluster_members = o.cluster_members;
  deps.cluster_self = o.cluster_self;
  deps.limits = o.limits;
  deps.profile_memory = server->profile_memory_.get();
  server->planner_ = std::make_unique<Executor>(o.planner_threads);
  deps.planner = server->planner_.get();
  server->batcher_ = std::make_unique<AttendBatcher>(server->backend_.get(), o.attend_batch_window,
                                                     o.attend_batch_max_items);
  deps.batcher = server->batcher_.get();
  server->service_ = std::make_unique<RopeKvService>(deps);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (tls) {
    absl::StatusOr<std::string> cert = ReadFile(o.tls_cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(o.tls_key_file);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!o.tls_client_ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadFile(o.tls_client_ca_file);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(o.address, creds, &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.address));
  }
  // Health by the empty name (the server) and by the service's own name,
  // which Kubernetes probes and grpc-health-probe -service ask for.
  server->server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  server->RefreshGauges();
  server->janitor_ = std::thread([s = server.get()] {
    while (!s->stop_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
      const int expired = s->sessions_->ExpireIdle(absl::Now());
      if (expired > 0) {
        s->metrics_->AddExpired(expired);
        Log(LogLevel::kInfo, "sessions_expired", {{"count", std::to_string(expired)}});
      }
      s->RefreshGauges();
      if (!s->backend_->healthy() && !s->unhealthy_reported_) {
        s->unhealthy_reported_ = true;
        s->server_->GetHealthCheckService()->SetServingStatus(false);
        Log(LogLevel::kError, "backend_unhealthy", {{"backend", s->backend_->name()}});
      }
    }
  });
  Log(LogLevel::kInfo, "server_started",
      {{"address", o.address}, {"port", std::to_string(server->port_)},
       {"backend", server->backend_->name()}, {"device", device},
       {"tls", tls ? (o.tls_client_ca_file.empty() ? "on" : "mutual") : "off"}, {"auth", server->auth_->enabled() ? "tokens" : "off"},
       {"memory_bytes", std::to_string(server->pool_->total_pages() * o.page_bytes)},
       {"page_bytes", std::to_string(o.page_bytes)},
       {"metrics", o.metrics_address.empty() ? "off" : o.metrics_address},
       {"profiles_loaded", std::to_string(loaded)},
       {"profiles_unavailable", std::to_string(failed)},
       {"cluster_self", o.cluster_self.empty() ? "none" : o.cluster_self},
       {"cluster_members", std::to_string(o.cluster_members.size())}});
  return server;
}

const char* Server::backend_name() const { return backend_->name(); }

void Server::RefreshGauges() {
  const SessionStore::Totals t = sessions_->Total();
  metrics_->SetStore(t.sessions, t.bytes_resident, t.bytes_fp16, pool_->free_pages(),
                     pool_->total_pages());
}

void Server::Shutdown(absl::Duration grace) {
  if (stop_.HasBeenNotified()) return;
  stop_.Notify();
  if (server_ == nullptr) return;  // Start failed before serving
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(grace));
  if (janitor_.joinable()) janitor_.join();
  Log(LogLevel::kInfo, "server_stopped", {{"port", std::to_string(port_)}});
}

void Server::Wait() {
  if (server_ != nullptr) server_->Wait();
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  Wait();
}

}  // namespace ropekv::service
