// Rows, environment and output formats of ropekv-bench (a human table and
// a JSON document, so that runs can be compared).
//
// JSON schema (version 1):
//   {"tool": "ropekv-bench", "schema_version": 1, "scenario": str,
//    "config": {str: str}, "environment": {str: str},
//    "rows": [{"params": {str: int}, "concurrency": int, "rate": num,
//              "ops": int, "ops_per_s": num, "calls_per_s": num,
//              "bytes_per_s": num, "seconds": num, "late_starts": int,
//              "errors": {code: int},
//              "latency_us": {"p50", "p90", "p99", "p999", "mean", "max": num}}]}
// environment holds the server's backend, device and CPUs, the client's
// CPUs and host, the build's commit and the date.
#ifndef ROPEKV_CLIENT_BENCH_REPORT_H_
#define ROPEKV_CLIENT_BENCH_REPORT_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "client/bench/load.h"
#include "ropekv/v1/service.pb.h"

namespace ropekv::client {

struct BenchRow {
  std::vector<std::pair<std::string, int64_t>> params;  // scenario parameters
  int concurrency = 1;
  double rate = 0;
  int calls_per_op = 1;  // RPCs per counted operation (decode: 2 per layer)
  LoadResult result;
};

struct BenchReport {
  std::string scenario;
  std::vector<std::pair<std::string, std::string>> config;
  std::vector<std::pair<std::string, std::string>> environment;
  std::vector<BenchRow> rows;
};

// Builds the op of one row for a number of workers (set-up happens here).
using LoadOpFactory = std::function<absl::StatusOr<LoadOp>(int workers)>;

std::vector<std::pair<std::string, std::string>> CollectEnvironment(const ropekv::v1::ServerInfo& server);
std::string TableHeader();
std::string FormatRow(const BenchRow& row);
std::string ReportJson(const BenchReport& report);

}  // namespace ropekv::client

#endif  // ROPEKV_CLIENT_BENCH_REPORT_H_
