// ropekv-soak: a bounded soak test. Starts a real server on loopback (CPU
// or CUDA backend) and runs workers that each, over and over, create a
// session, append to it in several streams, attend (unary and streamed),
// read it back, send a request that must be refused, and drop it, for
// --duration or --max_requests. A sample of the attention results is
// checked against the CPU backend: over the server's own packed records
// (read back), and those records against the same tokens encoded locally.
// At the end every page must be back in the pool and resident memory must
// not have grown beyond a bound. Exit status 0 only when nothing
// unexpected happened; the figures go to stdout and, with --json, a file.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "kernels/backend.h"
#include "planner/profile_io.h"
#include "service/log.h"
#include "service/page_pool.h"
#include "service/server.h"
#include "tests/unit/test_util.h"

ABSL_FLAG(absl::Duration, duration, absl::Seconds(60), "How long the workers run");
ABSL_FLAG(int64_t, max_requests, 10'000'000, "Stop after this many RPCs in all");
ABSL_FLAG(int, workers, 8, "Concurrent workers (one session at a time each)");
ABSL_FLAG(std::string, backend, "auto", "Server backend: auto, cpu, cuda");
ABSL_FLAG(int, check_every, 3, "Check 1 in N attention results against the CPU reference");
ABSL_FLAG(int64_t, memory_mb, 256, "Server cache memory");
ABSL_FLAG(int64_t, max_rss_growth_mb, 64, "Largest resident-memory growth accepted after warm-up");
ABSL_FLAG(std::string, json, "", "Write the figures as JSON to this file");
ABSL_FLAG(uint32_t, seed, 1, "Random seed");

namespace ropekv {
namespace {

namespace pb = ::ropekv::v1;
using absl::StatusCode;

constexpr int kLayers = 2, kQHeads = 8, kKvHeads = 2, kHeadDim = 64;

// Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
// default) before reuse, so resident memory grows without a leak; there
// the bound is not applied and LeakSanitizer checks for leaks at exit.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssIsMeaningful = false;
#else
constexpr bool kRssIsMeaningful = true;
#endif

pb::ProfileSpec SoakSpec() {
  pb::ProfileSpec spec;
  spec.set_profile_id("soak");
  pb::ModelGeometry* g = spec.mutable_geometry();
  g->set_num_layers(kLayers);
  g->set_num_q_heads(kQHeads);
  g->set_num_kv_heads(kKvHeads);
  g->set_head_dim(kHeadDim);
  g->set_rope_layout(pb::ROPE_LAYOUT_SPLIT_HALF);
  g->set_rotary_dim(kHeadDim);
  g->set_rope_theta(10000);
  spec.mutable_budget()->set_key_avg_bits(3);
  spec.mutable_budget()->set_value_bits(3);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      pb::HeadScores* s = spec.mutable_scores()->add_heads();
      s->set_layer(l);
      s->set_kv_head(h);
      for (int b = 0; b < kHeadDim / 2; ++b) s->add_scores(1.0 + (b * 7 + l + h) % 11);
    }
  }
  return spec;
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// What one worker saw; summed at the end.
struct Tally {
  std::map<std::string, int64_t> calls;                 // by RPC
  std::map<std::string, int64_t> unexpected;            // "RPC CODE" -> count
  int64_t refused_as_expected = 0;
  int64_t checked = 0;
  int64_t wrong = 0;
  int64_t records_compared = 0;
  int64_t records_identical = 0;
  int64_t sessions = 0;
  int64_t tokens_appended = 0;
  double worst_relative_error = 0;
  void Add(const Tally& o) {
    for (const auto& [k, v] : o.calls) calls[k] += v;
    for (const auto& [k, v] : o.unexpected) unexpected[k] += v;
    refused_as_expected += o.refused_as_expected;
    checked += o.checked;
    wrong += o.wrong;
    records_compared += o.records_compared;
    records_identical += o.records_identical;
    sessions += o.sessions;
    tokens_appended += o.tokens_appended;
    worst_relative_error = std::max(worst_relative_error, o.worst_relative_error);
  }
  int64_t total_calls() const {
    int64_t n = 0;
    for (const auto& [k, v] : calls) n += v;
    return n;
  }
};

class Worker {
 public:
  Worker(int index, client::Client* client, const planner::ModelProfile* profile,
         double tolerance, std::atomic<int64_t>* budget, absl::Time end)
      : index_(index), client_(client), profile_(profile), tolerance_(tolerance),
        budget_(budget), end_(end), rng_(absl::GetFlag(FLAGS_seed) * 7919 + index),
        reference_(kernels::CreateCpuBackend({.num_threads = 1})) {}

  void Run() {
    for (int64_t n = 0; More(); ++n) OneSession(absl::StrCat("w", index_, "-", n));
  }
  const Tally& tally() const { return tally_; }

 private:
  bool More() { return absl::Now() < end_ && budget_->load() > 0; }
  // Counts a call and whether its status was the expected one.
  bool Record(const std::string& rpc, const absl::Status& s, StatusCode expected = StatusCode::kOk) {
    budget_->fetch_sub(1);
    ++tally_.calls[rpc];
    if (s.code() == expected) {
      if (expected != StatusCode::kOk) ++tally_.refused_as_expected;
      return true;
    }
    ++tally_.unexpected[absl::StrCat(rpc, " ", absl::StatusCodeToString(s.code()))];
    if (tally_.unexpected.size() < 5) std::fprintf(stderr, "%s: %s\n", rpc.c_str(), s.ToString().c_str());
    return false;
  }
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  void OneSession(const std::string& id) {
    pb::CreateSessionRequest create;
    create.set_session_id(id);
    create.set_profile_id("soak");
    const bool windowed = Uniform(0, 3) == 0;  // fp16 sinks + window merged in
    if (windowed) {
      create.set_sink_tokens(4);
      create.set_window_tokens(32);
    }
    if (!Record("CreateSession", client_->CreateSession(create).status())) return;
    ++tally_.sessions;
    keys_.assign(kLayers, std::vector<float>());
    values_.assign(kLayers, std::vector<float>());
    int64_t tokens = 0;
    const int appends = Uniform(1, 3);
    for (int a = 0; a < appends && More(); ++a) {
      const int64_t n = Uniform(1, 400);
      std::vector<std::vector<float>> k(kLayers), v(kLayers);
      std::vector<client::LayerKv> layers;
      for (int l = 0; l < kLayers; ++l) {
        k[l] = testing::RandomNormal(kKvHeads * n * kHeadDim, rng_(), 1.5f);
        v[l] = testing::RandomNormal(kKvHeads * n * kHeadDim, rng_());
        layers.push_back({l, tokens, kKvHeads, n, kHeadDim, k[l], v[l]});
      }
      if (!Record("Append", client_->Append(id, layers).status())) break;
      for (int l = 0; l < kLayers; ++l) {
        keys_[l] = Concat(keys_[l], tokens, k[l], n);
        values_[l] = Concat(values_[l], tokens, v[l], n);
      }
      tokens += n;
      tally_.tokens_appended += n * kLayers;
    }
    std::unique_ptr<client::AttendStream> stream;
    if (absl::StatusOr<std::unique_ptr<client::AttendStream>> s = client_->OpenAttendStream(); s.ok()) {
      stream = *std::move(s);
    }
    const int attends = Uniform(2, 6);
    for (int i = 0; i < attends && tokens > 0 && More(); ++i) Attend(id, tokens, !windowed, stream.get());
    if (stream != nullptr) Record("AttendStream", stream->Finish());
    if (Uniform(0, 2) == 0 && More()) ReadBack(id, tokens);
    // A request that must be refused and change nothing: a layer past the
    // model's.
    pb::AttendRequest bad;
    pb::AttendItem* item = bad.add_items();
    item->set_session_id(id);
    item->set_layer(kLayers);
    *item->mutable_queries() = client::MakeTensor(testing::RandomNormal(kQHeads * kHeadDim, 1),
                                                  {kQHeads, 1, kHeadDim});
    Record("Attend(bad layer)", client_->Attend(bad).status(), StatusCode::kOutOfRange);
    Record("DropSession", client_->DropSession(id));
  }

  // [kv, old, d] + [kv, n, d] -> [kv, old + n, d].
  static std::vector<float> Concat(const std::vector<float>& old, int64_t old_tokens,
                                   const std::vector<float>& add, int64_t n) {
    std::vector<float> out;
    out.reserve(old.size() + add.size());
    for (int h = 0; h < kKvHeads; ++h) {
      out.insert(out.end(), old.begin() + h * old_tokens * kHeadDim,
                 old.begin() + (h + 1) * old_tokens * kHeadDim);
      out.insert(out.end(), add.begin() + h * n * kHeadDim, add.begin() + (h + 1) * n * kHeadDim);
    }
    return out;
  }

  void Attend(const std::string& id, int64_t tokens, bool checkable, client::AttendStream* stream) {
    const int layer = Uniform(0, kLayers - 1);
    const int q_len = static_cast<int>(std::min<int64_t>(Uniform(1, 3), tokens));
    const bool causal = Uniform(0, 1) == 1;
    const std::vector<float> q = testing::RandomNormal(kQHeads * q_len * kHeadDim, rng_());
    pb::AttendRequest req;
    pb::AttendItem* item = req.add_items();
    item->set_session_id(id);
    item->set_layer(layer);
    *item->mutable_queries() = client::MakeTensor(q, {kQHeads, q_len, kHeadDim});
    if (causal) item->set_causal_offset(tokens - q_len);
    const bool streamed = stream != nullptr && Uniform(0, 1) == 1;
    absl::StatusOr<pb::AttendResponse> resp = streamed ? stream->Call(req) : client_->Attend(req);
    if (!Record(streamed ? "AttendStream call" : "Attend", resp.status())) return;
    if (!checkable || Uniform(1, absl::GetFlag(FLAGS_check_every)) != 1) return;
    ++tally_.checked;
    // The reference is the CPU backend's attention over the server's own
    // records, so it isolates the attention path. Those records are also
    // compared with the same tokens encoded here: the data must be this
    // session's. (A GPU encode may round a near-tie to the neighbouring
    // level, about 1 coordinate in 10^4, so records are compared by share.)
    const planner::LayerPlan& plan = profile_->layers[layer];
    testing::HostPagedLayer local(plan, 64, tokens);
    testing::HostPagedLayer served(plan, 64, tokens);
    absl::Status s = reference_->EncodeLayer(plan, local.view(0), 0, keys_[layer].data(),
                                             values_[layer].data(), tokens);
    if (s.ok()) s = ReadRecords(id, layer, plan, tokens, &served);
    if (!s.ok()) {
      std::fprintf(stderr, "reference for %s: %s\n", id.c_str(), s.ToString().c_str());
      ++tally_.wrong;
      return;
    }
    const planner::PageLayout layout = planner::MakePageLayout(plan, 64);
    int64_t identical = 0;
    for (size_t h = 0; h < plan.heads.size(); ++h) {
      const int rb = plan.heads[h].layout.record_bytes;
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t at = layout.head_offsets[h] + (t % 64) * rb;
        identical += std::equal(local.storage()[t / 64].begin() + at, local.storage()[t / 64].begin() + at + rb,
                                served.storage()[t / 64].begin() + at);
      }
    }
    const int64_t records = static_cast<int64_t>(plan.heads.size()) * tokens;
    tally_.records_compared += records;
    tally_.records_identical += identical;
    std::vector<float> want(q.size()), want_lse(kQHeads * q_len);
    kernels::AttentionParams p;
    p.queries = q.data();
    p.num_q_heads = kQHeads;
    p.q_len = q_len;
    p.causal = causal;
    p.causal_offset = tokens - q_len;
    p.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    p.out = want.data();
    p.lse = want_lse.data();
    s = reference_->Attend(plan, served.view(tokens), p);
    absl::StatusOr<std::vector<float>> got = client::TensorValues(resp->results(0).output());
    absl::StatusOr<std::vector<float>> got_lse = client::TensorValues(resp->results(0).lse());
    // Not this session's data: most records would differ.
    bool right = s.ok() && got.ok() && got_lse.ok() && got->size() == want.size() &&
                 got_lse->size() == want_lse.size() && identical * 10 >= records * 9;
    if (right) {
      const double rel = testing::RelativeError(*got, want);
      tally_.worst_relative_error = std::max(tally_.worst_relative_error, rel);
      right = rel <= tolerance_;
      for (size_t i = 0; i < want_lse.size(); ++i) right = right && std::abs((*got_lse)[i] - want_lse[i]) <= 1e-3;
    }
    if (!right) ++tally_.wrong;
  }

  // The session's packed records of `layer`, read back, into `out`'s pages.
  absl::Status ReadRecords(const std::string& id, int layer, const planner::LayerPlan& plan,
                           int64_t tokens, testing::HostPagedLayer* out) {
    pb::ReadRequest req;
    req.set_session_id(id);
    req.add_layers(static_cast<uint32_t>(layer));
    req.set_format(pb::READ_FORMAT_PACKED);
    const planner::PageLayout layout = planner::MakePageLayout(plan, 64);
    int64_t got = 0;
    bool malformed = false;
    const absl::Status s = client_->Read(req, [&](const pb::ReadResponse& m) {
      if (!m.has_chunk()) return true;  // the plan
      const pb::ReadChunk& c = m.chunk();
      const uint8_t* src = reinterpret_cast<const uint8_t*>(c.packed().data());
      int64_t need = 0;
      for (const planner::HeadPlan& h : plan.heads) need += h.layout.record_bytes * int64_t{c.tokens()};
      if (static_cast<int64_t>(c.packed().size()) != need ||
          static_cast<int64_t>(c.token_start() + c.tokens()) > tokens) {
        malformed = true;
        return false;
      }
      for (size_t h = 0; h < plan.heads.size(); ++h) {
        const int rb = plan.heads[h].layout.record_bytes;
        for (uint32_t j = 0; j < c.tokens(); ++j, src += rb) {
          const int64_t t = static_cast<int64_t>(c.token_start()) + j;
          std::copy(src, src + rb, out->storage()[t / 64].begin() + layout.head_offsets[h] + (t % 64) * rb);
        }
      }
      got += c.tokens();
      return true;
    });
    Record("Read(packed)", s);
    if (!s.ok()) return s;
    if (malformed || got != tokens) return absl::DataLossError("packed read: records missing or malformed");
    return absl::OkStatus();
  }

  void ReadBack(const std::string& id, int64_t tokens) {
    pb::ReadRequest req;
    req.set_session_id(id);
    req.set_format(pb::READ_FORMAT_FP16);
    req.set_chunk_tokens(static_cast<uint32_t>(Uniform(16, 256)));
    int64_t got = 0;
    const absl::Status s = client_->Read(req, [&](const pb::ReadResponse& m) {
      got += m.chunk().tokens();
      return true;
    });
    if (Record("Read", s) && got != tokens * kLayers) ++tally_.wrong;
  }

  const int index_;
  client::Client* const client_;
  const planner::ModelProfile* const profile_;
  const double tolerance_;
  std::atomic<int64_t>* const budget_;
  const absl::Time end_;
  std::mt19937 rng_;
  std::unique_ptr<kernels::Backend> reference_;
  std::vector<std::vector<float>> keys_, values_;  // per layer [kv, tokens, d]
  Tally tally_;
};

int Main() {
  service::SetLogLevel(service::LogLevel::kWarning);  // not a line per session
  service::ServerOptions o;
  o.address = "127.0.0.1:0";
  o.backend = absl::GetFlag(FLAGS_backend);
  o.memory_bytes = absl::GetFlag(FLAGS_memory_mb) << 20;
  o.page_bytes = 64 << 10;
  o.attend_batch_window = absl::Microseconds(100);
  absl::StatusOr<std::unique_ptr<service::Server>> server = service::Server::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 2;
  }
  client::ClientOptions co;
  co.target = absl::StrCat("127.0.0.1:", (*server)->port());
  co.upload_dtype = pb::DTYPE_FP32;
  co.deadline = absl::Seconds(30);
  std::unique_ptr<client::Client> client = *client::Client::Connect(co);
  absl::StatusOr<pb::ProfileInfo> created = client->CreateProfile(SoakSpec());
  absl::StatusOr<pb::ProfileInfo> fetched = client->GetProfile("soak", /*include_plan=*/true);
  absl::StatusOr<planner::ModelProfile> profile =
      fetched.ok() ? planner::ProfileFromProto(fetched->plan()) : fetched.status();
  if (!created.ok() || !profile.ok()) {
    std::fprintf(stderr, "profile: %s\n", (created.ok() ? profile.status() : created.status()).ToString().c_str());
    return 2;
  }
  const std::string backend = (*server)->backend_name();
  // fp32 on the CPU; the GPU multiplies fp16 probabilities by fp16 levels.
  const double tolerance = backend == "cpu" ? 1e-5 : 2e-3;
  const int64_t total_pages = (*server)->pool().total_pages();

  const int workers = absl::GetFlag(FLAGS_workers);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  std::atomic<int64_t> budget(absl::GetFlag(FLAGS_max_requests));
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  std::vector<std::unique_ptr<Worker>> pool;
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) {
    pool.push_back(std::make_unique<Worker>(i, client.get(), &*profile, tolerance, &budget, end));
    threads.emplace_back([w = pool.back().get()] { w->Run(); });
  }
  // Resident memory once warm (a tenth of the run), and at the end.
  absl::SleepFor(std::min(duration / 10, absl::Seconds(30)));
  const int64_t rss_warm = ResidentBytes();
  for (std::thread& t : threads) t.join();
  const absl::Duration elapsed = absl::Now() - start;
  Tally all;
  for (const auto& w : pool) all.Add(w->tally());
  // Pages come back once the last call on a dropped session has finished.
  for (int i = 0; i < 100 && (*server)->pool().free_pages() != total_pages; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const int64_t free_pages = (*server)->pool().free_pages();
  const int64_t rss_end = ResidentBytes();
  int64_t unexpected = 0;
  for (const auto& [k, v] : all.unexpected) unexpected += v;
  const int64_t growth_mb = (rss_end - rss_warm) >> 20;
  const bool rss_ok = !kRssIsMeaningful || growth_mb <= absl::GetFlag(FLAGS_max_rss_growth_mb);
  const bool pass = unexpected == 0 && all.wrong == 0 && free_pages == total_pages && rss_ok &&
                    all.checked > 0;

  std::printf("ropekv-soak: backend %s, %d workers, %.1f s\n", backend.c_str(), workers,
              absl::ToDoubleSeconds(elapsed));
  std::printf("  requests %lld (%.0f/s), sessions %lld, tokens appended %lld\n",
              static_cast<long long>(all.total_calls()),
              all.total_calls() / absl::ToDoubleSeconds(elapsed), static_cast<long long>(all.sessions),
              static_cast<long long>(all.tokens_appended));
  for (const auto& [k, v] : all.calls) std::printf("    %-22s %lld\n", k.c_str(), static_cast<long long>(v));
  std::printf("  refused as expected %lld, unexpected errors %lld\n",
              static_cast<long long>(all.refused_as_expected), static_cast<long long>(unexpected));
  for (const auto& [k, v] : all.unexpected) std::printf("    %-30s %lld\n", k.c_str(), static_cast<long long>(v));
  std::printf("  results checked against the CPU reference %lld, wrong %lld (worst relative error %.2e)\n",
              static_cast<long long>(all.checked), static_cast<long long>(all.wrong),
              all.worst_relative_error);
  std::printf("  records identical to a local CPU encode %.4f%% of %lld\n",
              all.records_compared > 0 ? 100.0 * all.records_identical / all.records_compared : 0.0,
              static_cast<long long>(all.records_compared));
  std::printf("  pages free at the end %lld of %lld\n", static_cast<long long>(free_pages),
              static_cast<long long>(total_pages));
  std::printf("  resident memory warm %.1f MiB, end %.1f MiB%s\n", rss_warm / 1048576.0,
              rss_end / 1048576.0,
              kRssIsMeaningful ? "" : " (not bounded under AddressSanitizer: its quarantine)");
  std::printf("%s\n", pass ? "PASS" : "FAIL");

  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    std::ofstream f(path);
    f << "{\n  \"backend\": \"" << backend << "\",\n  \"workers\": " << workers
      << ",\n  \"seconds\": " << absl::ToDoubleSeconds(elapsed)
      << ",\n  \"requests\": " << all.total_calls() << ",\n  \"calls\": {";
    const char* sep = "";
    for (const auto& [k, v] : all.calls) {
      f << sep << "\"" << k << "\": " << v;
      sep = ", ";
    }
    f << "},\n  \"sessions\": " << all.sessions << ",\n  \"tokens_appended\": " << all.tokens_appended
      << ",\n  \"refused_as_expected\": " << all.refused_as_expected
      << ",\n  \"unexpected_errors\": " << unexpected << ",\n  \"checked\": " << all.checked
      << ",\n  \"wrong\": " << all.wrong << ",\n  \"records_compared\": " << all.records_compared
      << ",\n  \"records_identical\": " << all.records_identical << ",\n  \"worst_relative_error\": " << all.worst_relative_error
      << ",\n  \"pages_total\": " << total_pages << ",\n  \"pages_free_end\": " << free_pages
      << ",\n  \"rss_warm_bytes\": " << rss_warm << ",\n  \"rss_end_bytes\": " << rss_end
      << ",\n  \"pass\": " << (pass ? "true" : "false") << "\n}\n";
  }
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace ropekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return ropekv::Main();
}
