#include "client/bench/report.h"

#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

#ifndef ROPEKV_GIT_COMMIT
#define ROPEKV_GIT_COMMIT "unknown"
#endif

namespace ropekv::client {

std::vector<std::pair<std::string, std::string>> CollectEnvironment(const ropekv::v1::ServerInfo& s) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return {{"server_backend", s.backend()},
          {"server_device", s.device()},
          {"server_host_cpus", absl::StrCat(s.host_cpus())},
          {"server_page_bytes", absl::StrCat(s.page_bytes())},
          {"server_total_pages", absl::StrCat(s.total_pages())},
          {"client_cpus", absl::StrCat(std::thread::hardware_concurrency())},
          {"client_host", host},
          {"commit", ROPEKV_GIT_COMMIT},
          {"date", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone())}};
}

std::string TableHeader() {
  return absl::StrFormat("%-34s %5s %8s %9s %9s %10s %9s %9s %9s %9s  %s", "params", "conc", "rate", "ops",
                         "ops/s", "MB/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "errors");
}

std::string FormatRow(const BenchRow& row) {
  const LoadResult& r = row.result;
  std::vector<std::string> params, errors;
  for (const auto& [k, v] : row.params) params.push_back(absl::StrCat(k, "=", v));
  for (const auto& [k, v] : r.errors) errors.push_back(absl::StrCat(k, ":", v));
  auto us = [&](double q) { return r.latency.Percentile(q) / 1e3; };
  return absl::StrFormat("%-34s %5d %8s %9d %9.1f %10.1f %9.1f %9.1f %9.1f %9.1f  %s", absl::StrJoin(params, " "),
                         row.concurrency, row.rate > 0 ? absl::StrCat(row.rate) : "closed", r.ok,
                         r.ok / r.seconds, r.bytes / r.seconds / 1e6, us(0.5), us(0.9), us(0.99), us(0.999),
                         errors.empty() ? "0" : absl::StrJoin(errors, " "));
}

std::string ReportJson(const BenchReport& report) {
  nlohmann::json j;
  j["tool"] = "ropekv-bench";
  j["schema_version"] = 1;
  j["scenario"] = report.scenario;
  j["config"] = nlohmann::json::object();
  for (const auto& [k, v] : report.config) j["config"][k] = v;
  j["environment"] = nlohmann::json::object();
  for (const auto& [k, v] : report.environment) j["environment"][k] = v;
  j["rows"] = nlohmann::json::array();
  for (const BenchRow& row : report.rows) {
    const LoadResult& r = row.result;
    nlohmann::json x;
    x["params"] = nlohmann::json::object();
    for (const auto& [k, v] : row.params) x["params"][k] = v;
    x["concurrency"] = row.concurrency;
    x["rate"] = row.rate;
    x["ops"] = r.ok;
    x["seconds"] = r.seconds;
    x["ops_per_s"] = r.ok / r.seconds;
    x["calls_per_s"] = r.ok * row.calls_per_op / r.seconds;
    x["bytes_per_s"] = r.bytes / r.seconds;
    x["late_starts"] = r.late_starts;
    x["errors"] = nlohmann::json::object();
    for (const auto& [k, v] : r.errors) x["errors"][k] = v;
    x["latency_us"] = {{"p50", r.latency.Percentile(0.5) / 1e3},   {"p90", r.latency.Percentile(0.9) / 1e3},
                       {"p99", r.latency.Percentile(0.99) / 1e3},  {"p999", r.latency.Percentile(0.999) / 1e3},
                       {"mean", r.latency.mean() / 1e3},           {"max", r.latency.max() / 1e3}};
    j["rows"].push_back(std::move(x));
  }
  return j.dump(2);
}

}  // namespace ropekv::client
