// ropekv-server: the KV-cache service.
//
//   ropekv-server --address=127.0.0.1:50051 --data_dir=/var/lib/ropekv
//
// Stops cleanly on SIGINT/SIGTERM: stops accepting calls, lets in-flight
// calls finish within --shutdown_grace, then exits.
#include <csignal>
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "service/log.h"
#include "service/server.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "host:port to listen on");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu or cuda");
ABSL_FLAG(int64_t, memory_bytes, int64_t{1} << 30, "Cache memory reserved at start");
ABSL_FLAG(int64_t, page_bytes, 256 << 10, "Page size of the cache memory");
ABSL_FLAG(int64_t, tenant_page_quota, 0, "Most pages one tenant may hold (0 = no limit)");
ABSL_FLAG(std::string, data_dir, "", "Folder where profiles persist (empty: memory only)");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest request/response message");
ABSL_FLAG(std::string, token_file, "", "Bearer tokens -> tenants ('<token> <tenant>' lines)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain (with --tls_key: TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates of clients: mutual TLS, clients must present a certificate they signed");
ABSL_FLAG(bool, allow_insecure_remote, false, "Allow plaintext on a non-loopback address");
ABSL_FLAG(int, cpu_threads, 0, "CPU backend threads (0 = all cores)");
ABSL_FLAG(int, cuda_streams, 8, "CUDA backend: calls in flight at once, each on its own stream (1..64)");
ABSL_FLAG(int, metrics_port, 0, "Prometheus /metrics port on the --address host (0 = off)");
ABSL_FLAG(absl::Duration, attend_batch_window, absl::ZeroDuration(),
          "Attend calls arriving within this window are computed together (0 = off), e.g. 100us");
ABSL_FLAG(int, attend_batch_max_items, 64, "Most items one merged attention batch carries");
ABSL_FLAG(bool, enable_echo, false, "Serve the Echo diagnostics (ropekv-bench's RPC ceiling)");
ABSL_FLAG(std::vector<std::string>, cluster_members, {},
          "Names (host:port, as clients address them) of every server of the cluster, comma-separated; "
          "sessions are created only on the member their id hashes to (empty: on its own)");
ABSL_FLAG(std::string, cluster_self, "", "This server's name among --cluster_members");
// Bounds on what a request may name (service/limits.h; README "Limits").
ABSL_FLAG(int64_t, max_layers, 1024, "Most layers a profile's geometry may have");
ABSL_FLAG(int64_t, max_heads, 1024, "Most query (and KV) heads a profile's geometry may have");
ABSL_FLAG(int64_t, max_head_dim, 512, "Largest head_dim (and rotary_dim) of a profile (at most 512)");
ABSL_FLAG(int64_t, max_profile_bytes, int64_t{1} << 30, "Most host memory one profile's plan may take");
ABSL_FLAG(int64_t, tenant_profile_bytes, int64_t{4} << 30,
          "Most host memory one tenant's profiles (stored and being built) may take");
ABSL_FLAG(int64_t, max_calibration_tokens, int64_t{1} << 20, "Most calibration tokens per layer of one profile");
ABSL_FLAG(int64_t, max_chunk_tokens, 65536, "Most tokens in one Append message");
ABSL_FLAG(int64_t, max_sequence_tokens, int64_t{1} << 24, "Most tokens one layer of a session may hold");
ABSL_FLAG(int64_t, max_attend_items, 1024, "Most items in one Attend request");
ABSL_FLAG(int64_t, max_q_len, 65536, "Most query positions in one Attend item");
ABSL_FLAG(int, planner_threads, 2, "Threads that build profile plans (CreateProfile)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10), "Time in-flight calls get at shutdown");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ropekv-server: packed KV-cache service.\n  ropekv-server [--flags]");
  absl::ParseCommandLine(argc, argv);
  using namespace ropekv::service;
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "ropekv-server: --log_level: expected debug, info, warning or error\n";
    return 2;
  }
  SetLogLevel(level);

  // Signals are taken synchronously by sigwait below, in this thread only.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ServerOptions o;
  o.address = absl::GetFlag(FLAGS_address);
  o.backend = absl::GetFlag(FLAGS_backend);
  o.memory_bytes = absl::GetFlag(FLAGS_memory_bytes);
  o.page_bytes = absl::GetFlag(FLAGS_page_bytes);
  o.tenant_page_quota = absl::GetFlag(FLAGS_tenant_page_quota);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.token_file = absl::GetFlag(FLAGS_token_file);
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.cluster_members = absl::GetFlag(FLAGS_cluster_members);
  o.cuda_streams = absl::GetFlag(FLAGS_cuda_streams);
  o.cluster_self = absl::GetFlag(FLAGS_cluster_self);
  o.allow_insecure_remote = absl::GetFlag(FLAGS_allow_insecure_remote);
  o.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  o.enable_echo = absl::GetFlag(FLAGS_enable_echo);
  o.attend_batch_window = absl::GetFlag(FLAGS_attend_batch_window);
  o.attend_batch_max_items = absl::GetFlag(FLAGS_attend_batch_max_items);
  o.limits.max_layers = absl::GetFlag(FLAGS_max_layers);
  o.limits.max_heads = absl::GetFlag(FLAGS_max_heads);
  o.limits.max_head_dim = absl::GetFlag(FLAGS_max_head_dim);
  o.limits.max_profile_bytes = absl::GetFlag(FLAGS_max_profile_bytes);
  o.limits.tenant_profile_bytes = absl::GetFlag(FLAGS_tenant_profile_bytes);
  o.limits.max_calibration_tokens = absl::GetFlag(FLAGS_max_calibration_tokens);
  o.limits.max_chunk_tokens = absl::GetFlag(FLAGS_max_chunk_tokens);
  o.limits.max_sequence_tokens = absl::GetFlag(FLAGS_max_sequence_tokens);
  o.limits.max_attend_items = absl::GetFlag(FLAGS_max_attend_items);
  o.limits.max_q_len = absl::GetFlag(FLAGS_max_q_len);
  o.planner_threads = absl::GetFlag(FLAGS_planner_threads);
  if (const int port = absl::GetFlag(FLAGS_metrics_port); port > 0) {
    const std::string& a = o.address;
    const size_t colon = a.rfind(':');
    o.metrics_address = (colon == std::string::npos ? a : a.substr(0, colon)) + ":" +
                        std::to_string(port);
  }
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(o);
  if (!server.ok()) {
    Log(LogLevel::kError, "server_start_failed", {{"error", server.status().ToString()}});
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  Log(LogLevel::kInfo, "signal", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
