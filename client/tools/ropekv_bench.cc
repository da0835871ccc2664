// ropekv-bench: RPC throughput and latency of a ropekv server, and the RPC
// layer's own ceiling measured the same way (client/bench/load.h).
//
//   ropekv-bench --server=127.0.0.1:50051 --scenario=append --chunk_tokens=256,4096
//   ropekv-bench --scenario=attend --context=4096,32768 --batch=1,8 --concurrency=1,8
//   ropekv-bench --scenario=decode --concurrency=64 --context=1024
//   ropekv-bench --scenario=echo --echo_of=append --chunk_tokens=4096   # server: --enable_echo
//
// Scenarios:
//   append  each worker streams appends of chunk_tokens tokens (all layers)
//           into its own session; throughput counts fp16 K+V input bytes.
//   attend  Attend calls with `batch` items over a session of `context`
//           tokens, q_heads x q_len queries per item.
//   decode  each worker is a decoder with its own session (prefix of
//           `context` tokens): per step and layer, append one token, then
//           attend; one counted operation = one step of all layers.
//   echo    Echo / EchoStream with the payload sizes of `--echo_of` calls.
// Every combination of the list-valued flags is one row of the report.
// Closed loop by default; --rate gives an open loop (latency from the time a
// call was due).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/bench/load.h"
#include "client/bench/report.h"
#include "client/client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address");
ABSL_FLAG(std::string, token, "", "Bearer token (or $ROPEKV_TOKEN)");
ABSL_FLAG(std::string, scenario, "attend", "append, attend, decode or echo");
ABSL_FLAG(std::string, echo_of, "attend", "echo: payload sizes of append or attend calls");
ABSL_FLAG(std::string, concurrency, "1", "Workers (decoders for decode); comma list");
ABSL_FLAG(double, rate, 0, "Open loop: calls per second over all workers (0 = closed loop)");
ABSL_FLAG(bool, poisson, false, "Open loop: exponential gaps between calls");
ABSL_FLAG(double, warmup_s, 1, "Seconds run but not counted");
ABSL_FLAG(double, duration_s, 5, "Seconds measured per row");
ABSL_FLAG(int, layers, 1, "Model layers");
ABSL_FLAG(int, q_heads, 16, "Query heads");
ABSL_FLAG(int, kv_heads, 2, "KV heads");
ABSL_FLAG(int, head_dim, 128, "Head dimension");
ABSL_FLAG(double, key_bits, 3, "Key bits per dimension");
ABSL_FLAG(int, value_bits, 3, "Value bits per dimension");
ABSL_FLAG(std::string, chunk_tokens, "1024", "append/echo: tokens per append call; comma list");
ABSL_FLAG(int64_t, session_tokens, 131072, "append: tokens after which a worker starts a new session");
ABSL_FLAG(std::string, context, "4096", "attend/decode: tokens in the cache; comma list");
ABSL_FLAG(std::string, batch, "1", "attend: items per call; comma list");
ABSL_FLAG(int, q_len, 1, "attend: query positions per item");
ABSL_FLAG(int, channels, 4, "Client channels the workers share");
ABSL_FLAG(std::string, json, "", "Write the JSON report here");

namespace {

using ropekv::client::Client;
using ropekv::client::LayerKv;
using ropekv::client::LoadOptions;
using ropekv::client::LoadResult;
namespace pb = ropekv::v1;
namespace bench = ropekv::client;

int Fail(const absl::Status& s) {
  std::cerr << "ropekv-bench: " << s << "\n";
  return 1;
}

absl::StatusOr<std::vector<int64_t>> List(const char* flag, const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view p : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(p, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s: expected positive integers, got '%s'", flag, p));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrFormat("--%s: expected at least one value", flag));
  return out;
}

struct Geometry {
  int layers, q_heads, kv_heads, head_dim;
  int64_t FloatsPerToken() const { return int64_t{kv_heads} * head_dim; }
  // fp16 K + V of one token over all layers: what an append moves.
  int64_t InputBytesPerToken() const { return 2 * 2 * FloatsPerToken() * layers; }
};

// The bench's profile: random block scores (no calibration upload).
absl::StatusOr<std::string> CreateProfile(Client& c, const Geometry& g) {
  pb::ProfileSpec spec;
  spec.set_profile_id(absl::StrCat("bench-", getpid(), "-", absl::ToUnixMicros(absl::Now()) % 1000000));
  spec.set_name("ropekv-bench");
  pb::ModelGeometry* mg = spec.mutable_geometry();
  mg->set_num_layers(g.layers);
  mg->set_num_q_heads(g.q_heads);
  mg->set_num_kv_heads(g.kv_heads);
  mg->set_head_dim(g.head_dim);
  mg->set_rope_layout(pb::ROPE_LAYOUT_SPLIT_HALF);
  mg->set_rotary_dim(g.head_dim);
  mg->set_rope_theta(10000);
  spec.mutable_budget()->set_key_avg_bits(absl::GetFlag(FLAGS_key_bits));
  spec.mutable_budget()->set_value_bits(absl::GetFlag(FLAGS_value_bits));
  std::mt19937 gen(1);
  std::lognormal_distribution<double> score(0, 2);
  for (int l = 0; l < g.layers; ++l) {
    for (int h = 0; h < g.kv_heads; ++h) {
      pb::HeadScores* hs = spec.mutable_scores()->add_heads();
      hs->set_layer(l);
      hs->set_kv_head(h);
      for (int b = 0; b < g.head_dim / 2; ++b) hs->add_scores(score(gen));
    }
  }
  absl::StatusOr<pb::ProfileInfo> info = c.CreateProfile(spec);
  if (!info.ok()) return info.status();
  return spec.profile_id();
}

absl::StatusOr<std::string> NewSession(Client& c, const std::string& profile) {
  pb::CreateSessionRequest req;
  req.set_profile_id(profile);
  absl::StatusOr<pb::SessionInfo> s = c.CreateSession(req);
  if (!s.ok()) return s.status();
  return s->session_id();
}

// Random K/V for `tokens` tokens, shared by every append of the run.
struct KvData {
  std::vector<float> k, v;
  KvData(const Geometry& g, int64_t tokens) : k(g.FloatsPerToken() * tokens), v(k.size()) {
    std::mt19937 gen(2);
    std::normal_distribution<float> n(0, 1);
    for (float& x : k) x = n(gen);
    for (float& x : v) x = n(gen);
  }
};

absl::Status AppendTokens(Client& c, const Geometry& g, const std::string& session, const KvData& kv,
                          int64_t start, int64_t tokens) {
  std::vector<LayerKv> layers;
  for (int l = 0; l < g.layers; ++l) {
    LayerKv lk;
    lk.layer = l;
    lk.token_start = start;
    lk.num_kv_heads = g.kv_heads;
    lk.tokens = tokens;
    lk.head_dim = g.head_dim;
    // [kv_heads, tokens, head_dim] from the first `tokens` of the data.
    lk.keys = absl::MakeConstSpan(kv.k.data(), g.FloatsPerToken() * tokens);
    lk.values = absl::MakeConstSpan(kv.v.data(), g.FloatsPerToken() * tokens);
    layers.push_back(lk);
  }
  return c.Append(session, layers).status();
}

// Fills a session to `tokens` in appends of at most 8192 tokens.
absl::Status Fill(Client& c, const Geometry& g, const std::string& session, const KvData& kv, int64_t tokens) {
  const int64_t step = std::min<int64_t>(8192, static_cast<int64_t>(kv.k.size()) / g.FloatsPerToken());
  for (int64_t t = 0; t < tokens; t += step) {
    if (absl::Status s = AppendTokens(c, g, session, kv, t, std::min(step, tokens - t)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

pb::AttendItem Item(const Geometry& g, const std::string& session, int layer, int q_len,
                    std::optional<int64_t> causal_offset) {
  static const std::vector<float> q = [] {
    std::mt19937 gen(3);
    std::normal_distribution<float> n(0, 1);
    std::vector<float> x(1 << 20);
    for (float& v : x) v = n(gen);
    return x;
  }();
  pb::AttendItem item;
  item.set_session_id(session);
  item.set_layer(layer);
  const int64_t n = int64_t{g.q_heads} * q_len * g.head_dim;
  *item.mutable_queries() = ropekv::client::MakeTensor(absl::MakeConstSpan(q.data(), n),
                                                       {g.q_heads, q_len, g.head_dim}, pb::DTYPE_FP32);
  if (causal_offset.has_value()) item.set_causal_offset(*causal_offset);
  return item;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Measures a ropekv server's append, attend and decode throughput and latency.\n"
                               "  ropekv-bench --server=HOST:PORT --scenario=append|attend|decode|echo");
  absl::ParseCommandLine(argc, argv);
  const std::string scenario = absl::GetFlag(FLAGS_scenario);
  if (scenario != "append" && scenario != "attend" && scenario != "decode" && scenario != "echo") {
    return Fail(absl::InvalidArgumentError("--scenario: expected append, attend, decode or echo"));
  }
  const std::string echo_of = absl::GetFlag(FLAGS_echo_of);
  if (scenario == "echo" && echo_of != "append" && echo_of != "attend") {
    return Fail(absl::InvalidArgumentError("--echo_of: expected append or attend"));
  }
  absl::StatusOr<std::vector<int64_t>> conc = List("concurrency", absl::GetFlag(FLAGS_concurrency));
  absl::StatusOr<std::vector<int64_t>> chunks = List("chunk_tokens", absl::GetFlag(FLAGS_chunk_tokens));
  absl::StatusOr<std::vector<int64_t>> contexts = List("context", absl::GetFlag(FLAGS_context));
  absl::StatusOr<std::vector<int64_t>> batches = List("batch", absl::GetFlag(FLAGS_batch));
  for (const auto* l : {&conc, &chunks, &contexts, &batches}) {
    if (!l->ok()) return Fail(l->status());
  }
  const Geometry g{absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_q_heads), absl::GetFlag(FLAGS_kv_heads),
                   absl::GetFlag(FLAGS_head_dim)};
  if (g.layers < 1 || g.kv_heads < 1 || g.q_heads % g.kv_heads != 0 || g.head_dim < 2 || g.head_dim % 2 != 0) {
    return Fail(absl::InvalidArgumentError("--layers/--q_heads/--kv_heads/--head_dim: expected a valid geometry"));
  }
  const int q_len = absl::GetFlag(FLAGS_q_len);

  ropekv::client::ClientOptions co;
  co.target = absl::GetFlag(FLAGS_server);
  co.token = absl::GetFlag(FLAGS_token);
  if (co.token.empty() && std::getenv("ROPEKV_TOKEN") != nullptr) co.token = std::getenv("ROPEKV_TOKEN");
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(co);
    if (!c.ok()) return Fail(c.status());
    if (absl::Status s = (*c)->WaitForReady(absl::Seconds(10)); !s.ok()) return Fail(s);
    clients.push_back(*std::move(c));
  }
  Client& main_client = *clients[0];
  auto client_of = [&](int worker) -> Client& { return *clients[worker % clients.size()]; };

  bench::BenchReport report;
  report.scenario = scenario;
  report.config = {{"server", co.target},
                   {"scenario", scenario},
                   {"rate", absl::StrCat(absl::GetFlag(FLAGS_rate))},
                   {"poisson", absl::GetFlag(FLAGS_poisson) ? "true" : "false"},
                   {"warmup_s", absl::StrCat(absl::GetFlag(FLAGS_warmup_s))},
                   {"duration_s", absl::StrCat(absl::GetFlag(FLAGS_duration_s))},
                   {"geometry", absl::StrFormat("layers %d, q/kv heads %d/%d, head_dim %d", g.layers, g.q_heads,
                                                g.kv_heads, g.head_dim)},
                   {"budget", absl::StrFormat("K%g V%d", absl::GetFlag(FLAGS_key_bits),
                                              absl::GetFlag(FLAGS_value_bits))},
                   {"channels", absl::StrCat(clients.size())}};
  if (scenario == "echo") report.config.push_back({"echo_of", echo_of});
  absl::StatusOr<pb::ServerInfo> info = main_client.GetServerInfo();
  if (!info.ok()) return Fail(info.status());
  report.environment = bench::CollectEnvironment(*info);

  std::string profile;
  if (scenario != "echo") {
    absl::StatusOr<std::string> p = CreateProfile(main_client, g);
    if (!p.ok()) return Fail(p.status());
    profile = *p;
  }
  const int64_t max_chunk = *std::max_element(chunks->begin(), chunks->end());
  const KvData kv(g, std::max<int64_t>(8192, scenario == "append" || scenario == "echo" ? max_chunk : 1));
  std::vector<std::string> to_drop;

  LoadOptions lo;
  lo.rate = absl::GetFlag(FLAGS_rate);
  lo.poisson = absl::GetFlag(FLAGS_poisson);
  lo.warmup = absl::Seconds(absl::GetFlag(FLAGS_warmup_s));
  lo.duration = absl::Seconds(absl::GetFlag(FLAGS_duration_s));

  auto run_row = [&](bench::BenchRow row, int workers, const bench::LoadOpFactory& make) -> absl::Status {
    lo.concurrency = workers;
    absl::StatusOr<ropekv::client::LoadOp> op = make(workers);
    if (!op.ok()) return op.status();
    row.concurrency = workers;
    row.rate = lo.rate;
    row.result = bench::RunLoad(lo, *op);
    std::printf("%s\n", bench::FormatRow(row).c_str());
    std::fflush(stdout);
    report.rows.push_back(std::move(row));
    return absl::OkStatus();
  };

  std::printf("%s\n", bench::TableHeader().c_str());
  absl::Status status;
  if (scenario == "append" || (scenario == "echo" && echo_of == "append")) {
    for (int64_t chunk : *chunks) {
      for (int64_t workers : *conc) {
        bench::BenchRow row;
        row.params = {{"chunk_tokens", chunk}};
        const int64_t bytes = chunk * g.InputBytesPerToken();
        status = run_row(row, static_cast<int>(workers), [&](int n) -> absl::StatusOr<ropekv::client::LoadOp> {
          if (scenario == "echo") {
            // Append splits a call into messages of about chunk_bytes.
            const int messages = static_cast<int>(std::max<int64_t>(1, (bytes + co.chunk_bytes - 1) / co.chunk_bytes));
            return ropekv::client::LoadOp([&, messages, bytes](int w, int64_t* moved) {
              absl::Status s = client_of(w).EchoStream(bytes / messages, messages);
              *moved = bytes;
              return s;
            });
          }
          auto sessions = std::make_shared<std::vector<std::string>>(n);
          auto filled = std::make_shared<std::vector<int64_t>>(n, 0);
          for (int w = 0; w < n; ++w) {
            absl::StatusOr<std::string> s = NewSession(client_of(w), profile);
            if (!s.ok()) return s.status();
            (*sessions)[w] = *s;
          }
          const int64_t limit = absl::GetFlag(FLAGS_session_tokens);
          return ropekv::client::LoadOp([&, sessions, filled, chunk, bytes, limit](int w, int64_t* moved) {
            Client& c = client_of(w);
            if ((*filled)[w] + chunk > limit) {  // a fresh session (counted in this call)
              c.DropSession((*sessions)[w]).IgnoreError();
              absl::StatusOr<std::string> s = NewSession(c, profile);
              if (!s.ok()) return s.status();
              (*sessions)[w] = *s;
              (*filled)[w] = 0;
            }
            absl::Status s = AppendTokens(c, g, (*sessions)[w], kv, (*filled)[w], chunk);
            if (s.ok()) {
              (*filled)[w] += chunk;
              *moved = bytes;
            }
            return s;
          });
        });
        if (!status.ok()) break;
        for (const auto& c : clients) {
          if (absl::StatusOr<std::vector<pb::SessionInfo>> l = c->ListSessions(); l.ok()) {
            for (const pb::SessionInfo& s : *l) {
              if (s.profile_id() == profile) c->DropSession(s.session_id()).IgnoreError();
            }
          }
        }
      }
    }
  } else if (scenario == "attend" || scenario == "echo") {
    for (int64_t context : *contexts) {
      std::string session;
      if (scenario == "attend") {
        absl::StatusOr<std::string> s = NewSession(main_client, profile);
        if (!s.ok()) return Fail(s.status());
        session = *s;
        to_drop.push_back(session);
        const absl::Time t0 = absl::Now();
        if (absl::Status f = Fill(main_client, g, session, kv, context); !f.ok()) return Fail(f);
        std::fprintf(stderr, "filled %lld tokens in %.1f s\n", static_cast<long long>(context),
                     absl::ToDoubleSeconds(absl::Now() - t0));
      }
      for (int64_t batch : *batches) {
        pb::AttendRequest req;
        for (int64_t i = 0; i < batch; ++i) *req.add_items() = Item(g, session, static_cast<int>(i % g.layers), q_len, {});
        // Bytes of one call each way: fp32 queries up; fp32 outputs and lse down.
        const int64_t up = static_cast<int64_t>(req.ByteSizeLong());
        const int64_t down = batch * int64_t{g.q_heads} * q_len * (g.head_dim + 1) * 4;
        for (int64_t workers : *conc) {
          bench::BenchRow row;
          row.params = {{"context", context}, {"batch", batch}, {"q_len", q_len}};
          status = run_row(row, static_cast<int>(workers), [&](int) -> absl::StatusOr<ropekv::client::LoadOp> {
            if (scenario == "echo") {
              return ropekv::client::LoadOp([&, up, down](int w, int64_t* moved) {
                *moved = up + down;
                return client_of(w).Echo(up, down);
              });
            }
            return ropekv::client::LoadOp([&, req, up, down](int w, int64_t* moved) {
              absl::StatusOr<pb::AttendResponse> r = client_of(w).Attend(req);
              *moved = up + down;
              return r.status();
            });
          });
          if (!status.ok()) break;
        }
      }
    }
  } else {  // decode
    for (int64_t context : *contexts) {
      for (int64_t workers : *conc) {
        bench::BenchRow row;
        row.params = {{"context", context}, {"layers", g.layers}};
        row.calls_per_op = 2 * g.layers;
        status = run_row(row, static_cast<int>(workers), [&](int n) -> absl::StatusOr<ropekv::client::LoadOp> {
          auto sessions = std::make_shared<std::vector<std::string>>(n);
          auto length = std::make_shared<std::vector<int64_t>>(n, context);
          const absl::Time t0 = absl::Now();
          for (int w = 0; w < n; ++w) {
            absl::StatusOr<std::string> s = NewSession(client_of(w), profile);
            if (!s.ok()) return s.status();
            (*sessions)[w] = *s;
            to_drop.push_back(*s);
            if (absl::Status f = Fill(client_of(w), g, *s, kv, context); !f.ok()) return f;
          }
          std::fprintf(stderr, "filled %d sessions of %lld tokens in %.1f s\n", n, static_cast<long long>(context),
                       absl::ToDoubleSeconds(absl::Now() - t0));
          return ropekv::client::LoadOp([&, sessions, length](int w, int64_t* moved) {
            Client& c = client_of(w);
            for (int l = 0; l < g.layers; ++l) {
              LayerKv lk{l, (*length)[w], g.kv_heads, 1, g.head_dim,
                         absl::MakeConstSpan(kv.k.data(), g.FloatsPerToken()),
                         absl::MakeConstSpan(kv.v.data(), g.FloatsPerToken())};
              if (absl::Status s = c.Append((*sessions)[w], {lk}).status(); !s.ok()) return s;
              pb::AttendRequest req;
              *req.add_items() = Item(g, (*sessions)[w], l, 1, (*length)[w]);
              if (absl::Status s = c.Attend(req).status(); !s.ok()) return s;
            }
            ++(*length)[w];
            *moved = g.InputBytesPerToken();
            return absl::OkStatus();
          });
        });
        if (!status.ok()) break;
      }
    }
  }
  for (const std::string& s : to_drop) main_client.DropSession(s).IgnoreError();
  if (!profile.empty()) main_client.DeleteProfile(profile).IgnoreError();
  if (!status.ok()) return Fail(status);
  const std::string json = absl::GetFlag(FLAGS_json);
  if (!json.empty()) {
    std::ofstream out(json);
    out << bench::ReportJson(report) << "\n";
    if (!out) return Fail(absl::UnavailableError("--json: cannot write " + json));
  }
  return 0;
}
