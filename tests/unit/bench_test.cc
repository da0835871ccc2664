// ropekv-bench's load generator and report (client/bench): histogram
// accuracy against exact percentiles, open- versus closed-loop latency,
// error counting, and the JSON document's schema.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <thread>

#include "client/bench/load.h"
#include "client/bench/report.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ropekv::client {
namespace {

TEST(LatencyHistogramTest, PercentilesWithinOnePercentOfExact) {
  std::mt19937 gen(11);
  std::lognormal_distribution<double> d(11.0, 1.5);  // ~60 us median, long tail
  std::vector<int64_t> values;
  LatencyHistogram a, b;
  for (int i = 0; i < 200000; ++i) {
    const int64_t v = static_cast<int64_t>(d(gen));
    values.push_back(v);
    (i % 2 ? a : b).Record(v);
  }
  a.Merge(b);
  std::sort(values.begin(), values.end());
  EXPECT_EQ(a.count(), 200000);
  EXPECT_EQ(a.min(), values.front());
  EXPECT_EQ(a.max(), values.back());
  for (double q : {0.0, 0.5, 0.9, 0.99, 0.999, 1.0}) {
    const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * values.size())));
    const double exact = static_cast<double>(values[rank - 1]);
    EXPECT_NEAR(a.Percentile(q), exact, exact / 128 + 1) << "q " << q;
  }
  double sum = 0;
  for (int64_t v : values) sum += v;
  EXPECT_NEAR(a.mean(), sum / values.size(), 1e-6 * sum / values.size());
}

TEST(LatencyHistogramTest, SmallValuesAreExactAndEmptyIsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.Percentile(0.5), 0);
  for (int v : {3, 1, 2, 100, 127}) h.Record(v);
  EXPECT_EQ(h.Percentile(0.2), 1);
  EXPECT_EQ(h.Percentile(0.6), 3);
  EXPECT_EQ(h.Percentile(1.0), 127);
}

// A server that takes 20 ms per call and serves one call at a time.
absl::Status SlowCall(int, int64_t* bytes) {
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  *bytes = 10;
  return absl::OkStatus();
}

TEST(RunLoadTest, ClosedLoopMeasuresServiceTime) {
  LoadOptions o;
  o.concurrency = 1;
  o.warmup = absl::Milliseconds(100);
  o.duration = absl::Milliseconds(600);
  const LoadResult r = RunLoad(o, SlowCall);
  EXPECT_GE(r.ok, 15);
  EXPECT_LE(r.ok, 31);
  EXPECT_GE(r.latency.Percentile(0.5), 19'000'000);
  EXPECT_LT(r.latency.Percentile(0.5), 40'000'000);
  EXPECT_EQ(r.bytes, 10 * r.ok);
}

TEST(RunLoadTest, OpenLoopCountsQueueingFromTheDueTime) {
  // 100 calls/s offered to a 50 calls/s server: each call is due 10 ms
  // after the previous one but waits behind it, so latency grows.
  LoadOptions o;
  o.concurrency = 1;
  o.rate = 100;
  o.warmup = absl::ZeroDuration();
  o.duration = absl::Milliseconds(800);
  const LoadResult r = RunLoad(o, SlowCall);
  EXPECT_GE(r.ok, 30);
  EXPECT_LE(r.ok, 81);
  EXPECT_GT(r.latency.Percentile(0.99), 200'000'000);  // closed loop would say ~20 ms
  EXPECT_GT(r.late_starts, r.ok / 2);
}

TEST(RunLoadTest, OpenLoopKeepsTheRateWhenTheServerKeepsUp) {
  LoadOptions o;
  o.concurrency = 2;
  o.rate = 200;
  o.warmup = absl::Milliseconds(100);
  o.duration = absl::Milliseconds(1000);
  std::atomic<int> calls{0};
  const LoadResult r = RunLoad(o, [&](int, int64_t*) {
    ++calls;
    return absl::OkStatus();
  });
  EXPECT_GE(r.ok, 170);
  EXPECT_LE(r.ok, 210);
  EXPECT_LT(r.latency.Percentile(0.5), 5'000'000);
}

TEST(RunLoadTest, ErrorsAreCountedByCodeAndNotAsLatency) {
  LoadOptions o;
  o.concurrency = 1;
  o.warmup = absl::ZeroDuration();
  o.duration = absl::Milliseconds(200);
  std::atomic<int> n{0};
  const LoadResult r = RunLoad(o, [&](int, int64_t*) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return ++n % 3 == 0 ? absl::UnavailableError("down") : absl::OkStatus();
  });
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors.at("UNAVAILABLE") + r.ok, n.load());
  EXPECT_EQ(r.latency.count(), r.ok);
  EXPECT_NEAR(static_cast<double>(r.errors.at("UNAVAILABLE")), n.load() / 3.0, 1.0);
}

TEST(ReportTest, JsonFollowsTheSchema) {
  BenchReport report;
  report.scenario = "attend";
  report.config = {{"server", "127.0.0.1:1"}};
  ropekv::v1::ServerInfo info;
  info.set_backend("cpu");
  info.set_device("host CPU");
  info.set_host_cpus(2);
  report.environment = CollectEnvironment(info);
  BenchRow row;
  row.params = {{"context", 4096}, {"batch", 1}};
  row.concurrency = 4;
  row.calls_per_op = 2;
  row.result.ok = 10;
  row.result.seconds = 2;
  row.result.bytes = 1000;
  row.result.errors["DEADLINE_EXCEEDED"] = 1;
  for (int i = 1; i <= 10; ++i) row.result.latency.Record(i * 1000);
  report.rows.push_back(row);
  const nlohmann::json j = nlohmann::json::parse(ReportJson(report));
  EXPECT_EQ(j["tool"], "ropekv-bench");
  EXPECT_EQ(j["schema_version"], 1);
  for (const char* k : {"server_backend", "server_device", "server_host_cpus", "client_cpus", "commit", "date"}) {
    EXPECT_TRUE(j["environment"].contains(k)) << k;
  }
  EXPECT_EQ(j["environment"]["server_backend"], "cpu");
  const nlohmann::json& r = j["rows"][0];
  EXPECT_EQ(r["params"]["context"], 4096);
  EXPECT_EQ(r["concurrency"], 4);
  EXPECT_DOUBLE_EQ(r["ops_per_s"].get<double>(), 5.0);
  EXPECT_DOUBLE_EQ(r["calls_per_s"].get<double>(), 10.0);
  EXPECT_DOUBLE_EQ(r["bytes_per_s"].get<double>(), 500.0);
  EXPECT_EQ(r["errors"]["DEADLINE_EXCEEDED"], 1);
  for (const char* k : {"p50", "p90", "p99", "p999", "mean", "max"}) EXPECT_TRUE(r["latency_us"].contains(k)) << k;
  EXPECT_NEAR(r["latency_us"]["p50"].get<double>(), 5.0, 0.05);
  EXPECT_NEAR(r["latency_us"]["max"].get<double>(), 10.0, 1e-9);
  EXPECT_NE(FormatRow(row).find("DEADLINE_EXCEEDED:1"), std::string::npos);
}

}  // namespace
}  // namespace ropekv::client
