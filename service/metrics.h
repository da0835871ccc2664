// Prometheus metrics (prometheus-cpp), served over HTTP on their own port:
//
//   ropekv_rpc_total{method,code}                counter
//   ropekv_rpc_duration_seconds{method,code}     histogram
//   ropekv_bytes_ingested_total                  fp16-equivalent K/V bytes appended
//   ropekv_tokens_ingested_total                 token-layers appended
//   ropekv_bytes_resident                        bytes of pages held by sessions
//   ropekv_bytes_fp16_equivalent                 what the resident tokens take in fp16
//   ropekv_compression_ratio                     the two above divided
//   ropekv_sessions                              open sessions
//   ropekv_pages_free / ropekv_pages_total       page pool
//   ropekv_sessions_expired_total                dropped by idle TTL
//
// Thread safety: all methods are thread-safe.
#ifndef ROPEKV_SERVICE_METRICS_H_
#define ROPEKV_SERVICE_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Registry;
template <typename T>
class Family;
class Histogram;
}  // namespace prometheus

namespace ropekv::service {

class Metrics {
 public:
  // Metrics kept in memory only (tests; --metrics_port 0).
  Metrics();
  // Also served at http://<bind_address>/metrics. UNAVAILABLE when the
  // port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Metrics>> Serve(const std::string& bind_address);
  ~Metrics();

  void RecordRpc(const std::string& method, int code, absl::Duration elapsed);
  void AddIngested(int64_t token_layers, int64_t fp16_bytes);
  void AddExpired(int64_t sessions);
  void SetStore(int64_t sessions, int64_t bytes_resident, int64_t bytes_fp16,
                int64_t pages_free, int64_t pages_total);

  // Port of the HTTP endpoint (0 when not served).
  int port() const;

  // The text exposition format of every metric (what /metrics returns).
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* rpc_total_;
  prometheus::Family<prometheus::Histogram>* rpc_duration_;
  prometheus::Counter* bytes_ingested_;
  prometheus::Counter* tokens_ingested_;
  prometheus::Counter* expired_;
  prometheus::Gauge* bytes_resident_;
  prometheus::Gauge* bytes_fp16_;
  prometheus::Gauge* ratio_;
  prometheus::Gauge* sessions_;
  prometheus::Gauge* pages_free_;
  prometheus::Gauge* pages_total_;
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_METRICS_H_
