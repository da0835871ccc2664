#include "service/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace ropekv::service {

namespace {
const char* CodeName(int code) {
  static const char* kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}
}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  rpc_total_ = &BuildCounter().Name("ropekv_rpc_total").Help("RPCs by method and status code")
                    .Register(*registry_);
  rpc_duration_ = &BuildHistogram().Name("ropekv_rpc_duration_seconds")
                       .Help("RPC latency by method and status code").Register(*registry_);
  bytes_ingested_ = &BuildCounter().Name("ropekv_bytes_ingested_total")
                         .Help("fp16-equivalent K/V bytes appended").Register(*registry_).Add({});
  tokens_ingested_ = &BuildCounter().Name("ropekv_tokens_ingested_total")
                          .Help("Token-layers appended").Register(*registry_).Add({});
  expired_ = &BuildCounter().Name("ropekv_sessions_expired_total")
                  .Help("Sessions dropped after their idle TTL").Register(*registry_).Add({});
  bytes_resident_ = &BuildGauge().Name("ropekv_bytes_resident")
                         .Help("Bytes of cache pages held by sessions").Register(*registry_).Add({});
  bytes_fp16_ = &BuildGauge().Name("ropekv_bytes_fp16_equivalent")
                     .Help("Bytes the resident tokens would take as fp16 K/V")
                     .Register(*registry_).Add({});
  ratio_ = &BuildGauge().Name("ropekv_compression_ratio")
                .Help("bytes_fp16_equivalent / bytes_resident").Register(*registry_).Add({});
  sessions_ = &BuildGauge().Name("ropekv_sessions").Help("Open sessions").Register(*registry_).Add({});
  pages_free_ = &BuildGauge().Name("ropekv_pages_free").Help("Free cache pages")
                     .Register(*registry_).Add({});
  pages_total_ = &BuildGauge().Name("ropekv_pages_total").Help("Cache pages reserved")
                      .Register(*registry_).Add({});
}

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Serve(const std::string& bind_address) {
  auto m = std::make_unique<Metrics>();
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(bind_address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", bind_address, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

Metrics::~Metrics() = default;

void Metrics::RecordRpc(const std::string& method, int code, absl::Duration elapsed) {
  const std::map<std::string, std::string> labels = {{"method", method}, {"code", CodeName(code)}};
  rpc_total_->Add(labels).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1, 2.5, 10};
  rpc_duration_->Add(labels, kBuckets).Observe(absl::ToDoubleSeconds(elapsed));
}

void Metrics::AddIngested(int64_t token_layers, int64_t fp16_bytes) {
  tokens_ingested_->Increment(static_cast<double>(token_layers));
  bytes_ingested_->Increment(static_cast<double>(fp16_bytes));
}

void Metrics::AddExpired(int64_t sessions) { expired_->Increment(static_cast<double>(sessions)); }

void Metrics::SetStore(int64_t sessions, int64_t bytes_resident, int64_t bytes_fp16,
                       int64_t pages_free, int64_t pages_total) {
  sessions_->Set(static_cast<double>(sessions));
  bytes_resident_->Set(static_cast<double>(bytes_resident));
  bytes_fp16_->Set(static_cast<double>(bytes_fp16));
  ratio_->Set(bytes_resident > 0 ? static_cast<double>(bytes_fp16) / bytes_resident : 0.0);
  pages_free_->Set(static_cast<double>(pages_free));
  pages_total_->Set(static_cast<double>(pages_total));
}

int Metrics::port() const {
  if (exposer_ == nullptr) return 0;
  const std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

std::string Metrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace ropekv::service
