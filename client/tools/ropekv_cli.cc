// ropekv-cli: command-line access to a ropekv server.
//
//   ropekv-cli health
//   ropekv-cli profile create --profile=P --calibration=acts.safetensors [--key_bits=3 ...]
//   ropekv-cli profile get|list|delete [--profile=P] [--out=plan.pb]
//   ropekv-cli session create|stats|list|drop [--session=S] [--profile=P] [--ttl=0]
//   ropekv-cli append --session=S --file=kv.safetensors      (tensors k, v)
//   ropekv-cli attend --session=S --layer=L --file=q.safetensors [--position=T]
//   ropekv-cli read --session=S --format=fp16|fp32|packed --out=FILE
//   ropekv-cli demo [--data=moonshine-tiny-qkv.safetensors]
//
// Files use the calibration layout (README "Calibration data"):
// [layer, head, token, head_dim] tensors q, k, v and optional seq_offsets.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "planner/calibration.h"
#include "planner/safetensors.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address");
ABSL_FLAG(std::string, token, "", "Bearer token (or env ROPEKV_TOKEN)");
ABSL_FLAG(bool, tls, false, "Use TLS");
ABSL_FLAG(std::string, tls_ca, "", "PEM root certificates for TLS");
ABSL_FLAG(std::string, profile, "", "Profile id");
ABSL_FLAG(std::string, health_service, "",
          "health: the service to ask about (e.g. ropekv.v1.RopeKv; empty: the whole server)");
ABSL_FLAG(std::string, session, "", "Session id");
ABSL_FLAG(std::string, calibration, "", "Calibration .safetensors (q, k)");
ABSL_FLAG(std::string, sequences, "all", "Calibration sequences: all, even, odd");
ABSL_FLAG(double, key_bits, 3.0, "Average key bits per dimension");
ABSL_FLAG(int, key_bytes, 0,
          "profile create: a key budget in bytes per token per KV head, norms counted, instead of --key_bits "
          "(-1: the bytes of uniform --key_bits)");
ABSL_FLAG(int, value_bits, 3, "Value bits per dimension");
ABSL_FLAG(std::string, score, "logit", "Allocation score: logit or energy");
ABSL_FLAG(bool, uniform, false, "Uniform TQ-MSE instead of Block-GTQ");
ABSL_FLAG(int, ttl, 0, "Session idle TTL in seconds (0 = never)");
ABSL_FLAG(std::string, file, "", "Input .safetensors for append/attend");
ABSL_FLAG(int, layer, 0, "Layer for attend");
ABSL_FLAG(int64_t, position, -1, "Query token position for attend (default: the last)");
ABSL_FLAG(std::string, format, "fp16", "Read format: fp16, fp32 or packed");
ABSL_FLAG(std::string, out, "", "Output file");
ABSL_FLAG(std::string, data, "", "Demo data (default: $ROPEKV_DATA_DIR or ../shared/data)");

namespace {

namespace pb = ::ropekv::v1;
using ropekv::client::Client;
using ropekv::planner::SafetensorsFile;

int Fail(const absl::Status& s) {
  std::cerr << "ropekv-cli: " << s << "\n";
  return 1;
}

absl::StatusOr<std::unique_ptr<Client>> Connect() {
  ropekv::client::ClientOptions o;
  o.target = absl::GetFlag(FLAGS_server);
  o.token = absl::GetFlag(FLAGS_token);
  if (o.token.empty() && std::getenv("ROPEKV_TOKEN") != nullptr) o.token = std::getenv("ROPEKV_TOKEN");
  o.tls = absl::GetFlag(FLAGS_tls);
  if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_tls_ca));
    o.tls_root_certs.assign(std::istreambuf_iterator<char>(in), {});
  }
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  if (!c.ok()) return c.status();
  if (absl::Status s = (*c)->WaitForReady(absl::Seconds(5)); !s.ok()) return s;
  return c;
}

void PrintSession(const pb::SessionInfo& s) {
  uint64_t tokens = 0;
  for (uint64_t t : s.layer_tokens()) tokens = std::max<uint64_t>(tokens, t);
  absl::PrintF("%-24s profile=%s tokens=%d pages=%d resident=%d B fp16=%d B ttl=%ds\n",
               s.session_id(), s.profile_id(), tokens, s.pages(), s.bytes_resident(),
               s.bytes_fp16(), s.idle_ttl_seconds());
}

void PrintProfile(const pb::ProfileInfo& p) {
  if (!p.available()) {
    absl::PrintF("%-24s UNAVAILABLE: %s\n", p.profile_id(), p.unavailable_reason());
    return;
  }
  absl::PrintF("%-24s %s: %d layers, %d/%d heads, d=%d; K %.2f bits, V %d bits; %d B/token packed, %d fp16 (%.2fx)\n",
               p.profile_id(), p.name(), p.geometry().num_layers(), p.geometry().num_q_heads(),
               p.geometry().num_kv_heads(), p.geometry().head_dim(), p.budget().key_avg_bits(),
               p.budget().value_bits(), p.packed_bytes_per_token(), p.fp16_bytes_per_token(),
               static_cast<double>(p.fp16_bytes_per_token()) / p.packed_bytes_per_token());
}

// A profile spec from a file's geometry and the budget flags.
absl::StatusOr<pb::ProfileSpec> SpecFromFile(const SafetensorsFile& f, const std::string& id,
                                             double key_bits, int value_bits, bool uniform,
                                             const std::string& score) {
  absl::StatusOr<ropekv::planner::ModelGeometry> g = ropekv::planner::GeometryFromMetadata(f);
  if (!g.ok()) return g.status();
  pb::ProfileSpec spec;
  spec.set_profile_id(id);
  spec.set_name(f.metadata().count("model") ? f.metadata().at("model") : "");
  pb::ModelGeometry* pg = spec.mutable_geometry();
  pg->set_num_layers(g->num_layers);
  pg->set_num_q_heads(g->num_q_heads);
  pg->set_num_kv_heads(g->num_kv_heads);
  pg->set_head_dim(g->head_dim);
  pg->set_rope_layout(g->rope_layout == ropekv::planner::RopeLayout::kSplitHalf
                          ? pb::ROPE_LAYOUT_SPLIT_HALF
                          : pb::ROPE_LAYOUT_INTERLEAVED);
  pg->set_rotary_dim(g->rotary_dim);
  pg->set_rope_theta(g->rope_theta);
  pb::Budget* b = spec.mutable_budget();
  b->set_key_avg_bits(key_bits);
  b->set_value_bits(value_bits);
  if (uniform) {
    b->set_min_bits(static_cast<uint32_t>(key_bits));
    b->set_max_bits(static_cast<uint32_t>(key_bits));
  }
  b->set_score(score == "energy" ? pb::SCORE_KIND_ENERGY : pb::SCORE_KIND_LOGIT);
  spec.mutable_calibration();
  return spec;
}

// Streams the q/k rows of the chosen sequences as calibration chunks.
absl::StatusOr<pb::ProfileInfo> CreateFromFile(Client& c, const SafetensorsFile& f,
                                               const pb::ProfileSpec& spec,
                                               const std::string& sequences) {
  const pb::ModelGeometry& g = spec.geometry();
  absl::StatusOr<std::vector<float>> q = f.ReadFloat("q");
  if (!q.ok()) return q.status();
  absl::StatusOr<std::vector<float>> k = f.ReadFloat("k");
  if (!k.ok()) return k.status();
  const int64_t tokens = f.tensors().at("q").shape[2];
  absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> ranges =
      ropekv::planner::SequenceRanges(f, tokens);
  if (!ranges.ok()) return ranges.status();
  std::vector<std::pair<int64_t, int64_t>> chosen;
  for (size_t s = 0; s < ranges->size(); ++s) {
    if ((sequences == "even" && s % 2) || (sequences == "odd" && s % 2 == 0)) continue;
    chosen.push_back((*ranges)[s]);
  }
  const int d = g.head_dim();
  size_t next = 0;
  int layer = 0;
  return c.CreateProfile(spec, [&](pb::CalibrationChunk* chunk) {
    if (layer >= static_cast<int>(g.num_layers())) return false;
    const auto [b, e] = chosen[next];
    const int64_t n = e - b;
    std::vector<float> qs, ks;
    for (uint32_t h = 0; h < g.num_q_heads(); ++h) {
      auto it = q->begin() + ((layer * g.num_q_heads() + h) * tokens + b) * d;
      qs.insert(qs.end(), it, it + n * d);
    }
    for (uint32_t h = 0; h < g.num_kv_heads(); ++h) {
      auto it = k->begin() + ((layer * g.num_kv_heads() + h) * tokens + b) * d;
      ks.insert(ks.end(), it, it + n * d);
    }
    chunk->set_layer(layer);
    *chunk->mutable_queries() = ropekv::client::MakeTensor(qs, {g.num_q_heads(), n, d}, pb::DTYPE_FP16);
    *chunk->mutable_keys() = ropekv::client::MakeTensor(ks, {g.num_kv_heads(), n, d}, pb::DTYPE_FP16);
    if (++next == chosen.size()) {
      next = 0;
      ++layer;
    }
    return true;
  });
}

int Demo();

int Run(const std::vector<char*>& args) {
  const std::string cmd = args.size() > 1 ? args[1] : "";
  const std::string sub = args.size() > 2 ? args[2] : "";
  if (cmd == "demo") return Demo();
  absl::StatusOr<std::unique_ptr<Client>> c = Connect();
  if (!c.ok()) return Fail(c.status());
  Client& client = **c;
  if (cmd == "health") {
    absl::StatusOr<bool> ok = client.Healthy(absl::GetFlag(FLAGS_health_service));
    if (!ok.ok()) return Fail(ok.status());
    absl::PrintF("%s\n", *ok ? "SERVING" : "NOT_SERVING");
    return *ok ? 0 : 1;
  }
  if (cmd == "profile" && sub == "create") {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(absl::GetFlag(FLAGS_calibration));
    if (!f.ok()) return Fail(f.status());
    absl::StatusOr<pb::ProfileSpec> spec =
        SpecFromFile(*f, absl::GetFlag(FLAGS_profile), absl::GetFlag(FLAGS_key_bits),
                     absl::GetFlag(FLAGS_value_bits), absl::GetFlag(FLAGS_uniform),
                     absl::GetFlag(FLAGS_score));
    if (!spec.ok()) return Fail(spec.status());
    if (const int kb = absl::GetFlag(FLAGS_key_bytes); kb != 0) {
      const int d = static_cast<int>(spec->geometry().head_dim());
      const int bits = static_cast<int>(absl::GetFlag(FLAGS_key_bits));
      spec->mutable_budget()->set_key_bytes(kb > 0 ? kb : (d * bits + 7) / 8 + 2);
    }
    absl::StatusOr<pb::ProfileInfo> info = CreateFromFile(client, *f, *spec, absl::GetFlag(FLAGS_sequences));
    if (!info.ok()) return Fail(info.status());
    PrintProfile(*info);
    return 0;
  }
  if (cmd == "profile" && sub == "get") {
    const bool plan = !absl::GetFlag(FLAGS_out).empty();
    absl::StatusOr<pb::ProfileInfo> info = client.GetProfile(absl::GetFlag(FLAGS_profile), plan);
    if (!info.ok()) return Fail(info.status());
    PrintProfile(*info);
    if (plan) {
      std::ofstream out(absl::GetFlag(FLAGS_out), std::ios::binary);
      info->plan().SerializeToOstream(&out);
      absl::PrintF("plan written to %s (ropekv.v1.Profile)\n", absl::GetFlag(FLAGS_out));
    }
    return 0;
  }
  if (cmd == "profile" && sub == "list") {
    absl::StatusOr<std::vector<pb::ProfileInfo>> list = client.ListProfiles();
    if (!list.ok()) return Fail(list.status());
    for (const pb::ProfileInfo& p : *list) PrintProfile(p);
    return 0;
  }
  if (cmd == "profile" && sub == "delete") {
    absl::Status s = client.DeleteProfile(absl::GetFlag(FLAGS_profile));
    return s.ok() ? 0 : Fail(s);
  }
  if (cmd == "session" && sub == "create") {
    pb::CreateSessionRequest req;
    req.set_session_id(absl::GetFlag(FLAGS_session));
    req.set_profile_id(absl::GetFlag(FLAGS_profile));
    req.set_idle_ttl_seconds(absl::GetFlag(FLAGS_ttl));
    absl::StatusOr<pb::SessionInfo> s = client.CreateSession(req);
    if (!s.ok()) return Fail(s.status());
    PrintSession(*s);
    return 0;
  }
  if (cmd == "session" && sub == "stats") {
    absl::StatusOr<pb::SessionInfo> s = client.GetSession(absl::GetFlag(FLAGS_session));
    if (!s.ok()) return Fail(s.status());
    PrintSession(*s);
    return 0;
  }
  if (cmd == "session" && sub == "list") {
    absl::StatusOr<std::vector<pb::SessionInfo>> list = client.ListSessions();
    if (!list.ok()) return Fail(list.status());
    for (const pb::SessionInfo& s : *list) PrintSession(s);
    return 0;
  }
  if (cmd == "session" && sub == "drop") {
    absl::Status s = client.DropSession(absl::GetFlag(FLAGS_session));
    return s.ok() ? 0 : Fail(s);
  }
  if (cmd == "append") {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(absl::GetFlag(FLAGS_file));
    if (!f.ok()) return Fail(f.status());
    absl::StatusOr<std::vector<float>> k = f->ReadFloat("k");
    absl::StatusOr<std::vector<float>> v = f->ReadFloat("v");
    if (!k.ok()) return Fail(k.status());
    if (!v.ok()) return Fail(v.status());
    const std::vector<int64_t>& shape = f->tensors().at("k").shape;
    if (shape.size() != 4 || f->tensors().at("v").shape != shape) {
      return Fail(absl::InvalidArgumentError("k, v: expected equal [layer, kv_head, token, head_dim]"));
    }
    absl::StatusOr<pb::SessionInfo> info = client.GetSession(absl::GetFlag(FLAGS_session));
    if (!info.ok()) return Fail(info.status());
    const int64_t layers = shape[0], heads = shape[1], tokens = shape[2], d = shape[3];
    const absl::Time start = absl::Now();
    uint64_t appended = 0;
    for (int64_t l = 0; l < layers; ++l) {  // one atomic stream per layer, with progress
      const size_t n = heads * tokens * d;
      ropekv::client::LayerKv kv{static_cast<int>(l), static_cast<int64_t>(info->layer_tokens(l)),
                                 static_cast<int>(heads), tokens, static_cast<int>(d),
                                 absl::MakeConstSpan(k->data() + l * n, n),
                                 absl::MakeConstSpan(v->data() + l * n, n)};
      absl::StatusOr<pb::AppendResponse> r = client.Append(absl::GetFlag(FLAGS_session), {&kv, 1});
      if (!r.ok()) return Fail(r.status());
      appended += r->tokens_appended();
      const int bar = static_cast<int>(30 * (l + 1) / layers);
      std::fprintf(stderr, "\r[%-30s] layer %lld/%lld", std::string(bar, '#').c_str(),
                   static_cast<long long>(l + 1), static_cast<long long>(layers));
    }
    const double secs = absl::ToDoubleSeconds(absl::Now() - start);
    std::fprintf(stderr, "\n");
    absl::PrintF("appended %d token-layers in %.3f s (%.1f MB/s of fp16 K/V)\n", appended, secs,
                 appended * heads * d * 4 / 1e6 / secs);
    return 0;
  }
  if (cmd == "attend") {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(absl::GetFlag(FLAGS_file));
    if (!f.ok()) return Fail(f.status());
    absl::StatusOr<std::vector<float>> q = f->ReadFloat("q");
    if (!q.ok()) return Fail(q.status());
    const std::vector<int64_t>& shape = f->tensors().at("q").shape;
    const int layer = absl::GetFlag(FLAGS_layer);
    if (shape.size() != 4 || layer < 0 || layer >= shape[0]) {
      return Fail(absl::InvalidArgumentError("q: expected [layer, q_head, token, head_dim] with --layer inside"));
    }
    const int64_t heads = shape[1], tokens = shape[2], d = shape[3];
    const int64_t t = absl::GetFlag(FLAGS_position) < 0 ? tokens - 1 : absl::GetFlag(FLAGS_position);
    std::vector<float> rows;
    for (int64_t h = 0; h < heads; ++h) {
      auto it = q->begin() + ((layer * heads + h) * tokens + t) * d;
      rows.insert(rows.end(), it, it + d);
    }
    pb::AttendRequest req;
    pb::AttendItem* item = req.add_items();
    item->set_session_id(absl::GetFlag(FLAGS_session));
    item->set_layer(layer);
    *item->mutable_queries() = ropekv::client::MakeTensor(rows, {heads, 1, d});
    item->set_causal_offset(t);
    absl::StatusOr<pb::AttendResponse> r = client.Attend(req);
    if (!r.ok()) return Fail(r.status());
    std::vector<float> out = *ropekv::client::TensorValues(r->results(0).output());
    std::vector<float> lse = *ropekv::client::TensorValues(r->results(0).lse());
    for (int64_t h = 0; h < heads; ++h) {
      double norm = 0;
      for (int64_t j = 0; j < d; ++j) norm += out[h * d + j] * out[h * d + j];
      absl::PrintF("q_head %2d: lse %9.4f  |out| %8.4f  out[0:4] %8.4f %8.4f %8.4f %8.4f\n", h,
                   lse[h], std::sqrt(norm), out[h * d], out[h * d + 1], out[h * d + 2], out[h * d + 3]);
    }
    return 0;
  }
  if (cmd == "read") {
    const std::string format = absl::GetFlag(FLAGS_format);
    pb::ReadRequest req;
    req.set_session_id(absl::GetFlag(FLAGS_session));
    req.set_format(format == "fp32" ? pb::READ_FORMAT_FP32
                   : format == "packed" ? pb::READ_FORMAT_PACKED
                                        : pb::READ_FORMAT_FP16);
    std::ofstream out(absl::GetFlag(FLAGS_out), std::ios::binary);
    if (!out) return Fail(absl::InvalidArgumentError("--out: cannot write the file"));
    // Output: the ReadResponse messages, each prefixed with its varint
    // length (protobuf's delimited stream format).
    int64_t bytes = 0, messages = 0;
    absl::Status s = client.Read(req, [&](const pb::ReadResponse& m) {
      const std::string body = m.SerializeAsString();
      uint64_t n = body.size();
      while (n >= 0x80) {
        out.put(static_cast<char>(n | 0x80));
        n >>= 7;
      }
      out.put(static_cast<char>(n));
      out << body;
      bytes += static_cast<int64_t>(body.size());
      ++messages;
      return true;
    });
    if (!s.ok()) return Fail(s);
    absl::PrintF("wrote %d messages, %d bytes (delimited ropekv.v1.ReadResponse) to %s\n",
                 messages, bytes, absl::GetFlag(FLAGS_out));
    return 0;
  }
  std::cerr << absl::ProgramUsageMessage() << "\n";
  return 2;
}

// Attention error of the server's packed cache against exact fp32
// attention, for Block-GTQ and uniform TQ-MSE at the same budget.
int Demo() {
  std::string path = absl::GetFlag(FLAGS_data);
  if (path.empty()) {
    const char* dir = std::getenv("ROPEKV_DATA_DIR");
    path = std::string(dir != nullptr ? dir : "../shared/data") + "/moonshine-tiny-qkv.safetensors";
  }
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  if (!f.ok()) return Fail(f.status());
  absl::StatusOr<std::unique_ptr<Client>> c = Connect();
  if (!c.ok()) return Fail(c.status());
  Client& client = **c;
  const std::vector<float> q = *f->ReadFloat("q"), k = *f->ReadFloat("k"), v = *f->ReadFloat("v");
  const std::vector<int64_t>& shape = f->tensors().at("q").shape;
  const int64_t layers = shape[0], hq = shape[1], tokens = shape[2], d = shape[3];
  const int64_t hk = f->tensors().at("k").shape[1];
  const auto ranges = *ropekv::planner::SequenceRanges(*f, tokens);
  const std::string stamp = absl::StrCat(absl::ToUnixMillis(absl::Now()));
  const double bits = absl::GetFlag(FLAGS_key_bits);
  const int vbits = absl::GetFlag(FLAGS_value_bits);
  struct Method {
    const char* label;
    bool uniform;
  };
  const Method methods[] = {{"uniform TQ-MSE", true}, {"Block-GTQ (logit)", false}};
  std::vector<std::vector<double>> err(2, std::vector<double>(layers, 0.0));
  std::vector<double> ratio(2);
  absl::PrintF("ropekv demo: %s, %d layers, %d/%d heads, d=%d; calibrate on even sequences, "
               "attend on odd ones; K%g V%d\n", path, layers, hq, hk, d, bits, vbits);
  for (int m = 0; m < 2; ++m) {
    const std::string pid = absl::StrCat("demo-", m ? "gtq" : "uniform", "-", stamp);
    absl::StatusOr<pb::ProfileSpec> spec = SpecFromFile(*f, pid, bits, vbits, methods[m].uniform, "logit");
    if (!spec.ok()) return Fail(spec.status());
    absl::StatusOr<pb::ProfileInfo> info = CreateFromFile(client, *f, *spec, "even");
    if (!info.ok()) return Fail(info.status());
    ratio[m] = static_cast<double>(info->fp16_bytes_per_token()) / info->packed_bytes_per_token();
    std::vector<double> num(layers, 0.0), den(layers, 0.0);
    for (size_t s = 1; s < ranges.size(); s += 2) {
      const auto [b, e] = ranges[s];
      const int64_t n = e - b;
      pb::CreateSessionRequest cs;
      cs.set_session_id(absl::StrCat(pid, "-seq", s));
      cs.set_profile_id(pid);
      if (absl::Status st = client.CreateSession(cs).status(); !st.ok()) return Fail(st);
      std::vector<std::vector<float>> ks(layers), vs(layers);
      std::vector<ropekv::client::LayerKv> kv;
      for (int64_t l = 0; l < layers; ++l) {
        for (int64_t h = 0; h < hk; ++h) {
          auto kb = k.begin() + ((l * hk + h) * tokens + b) * d;
          auto vb = v.begin() + ((l * hk + h) * tokens + b) * d;
          ks[l].insert(ks[l].end(), kb, kb + n * d);
          vs[l].insert(vs[l].end(), vb, vb + n * d);
        }
        kv.push_back({static_cast<int>(l), 0, static_cast<int>(hk), n, static_cast<int>(d), ks[l], vs[l]});
      }
      if (absl::Status st = client.Append(cs.session_id(), kv).status(); !st.ok()) return Fail(st);
      pb::AttendRequest req;
      std::vector<std::vector<float>> qs(layers);
      for (int64_t l = 0; l < layers; ++l) {
        for (int64_t h = 0; h < hq; ++h) {
          auto qb = q.begin() + ((l * hq + h) * tokens + b) * d;
          qs[l].insert(qs[l].end(), qb, qb + n * d);
        }
        pb::AttendItem* item = req.add_items();
        item->set_session_id(cs.session_id());
        item->set_layer(l);
        *item->mutable_queries() = ropekv::client::MakeTensor(qs[l], {hq, n, d});
        item->set_causal_offset(0);  // query i is token i: causal prefill
      }
      absl::StatusOr<pb::AttendResponse> r = client.Attend(req);
      if (!r.ok()) return Fail(r.status());
      for (int64_t l = 0; l < layers; ++l) {
        const std::vector<float> out = *ropekv::client::TensorValues(r->results(l).output());
        // Exact causal attention with the true K and V.
        for (int64_t h = 0; h < hq; ++h) {
          const int64_t kvh = h / (hq / hk);
          for (int64_t i = 0; i < n; ++i) {
            std::vector<double> w(i + 1);
            double mx = -1e300, total = 0;
            for (int64_t t = 0; t <= i; ++t) {
              double dot = 0;
              for (int64_t j = 0; j < d; ++j) dot += qs[l][(h * n + i) * d + j] * ks[l][(kvh * n + t) * d + j];
              w[t] = dot / std::sqrt(static_cast<double>(d));
              mx = std::max(mx, w[t]);
            }
            for (double& x : w) total += (x = std::exp(x - mx));
            for (int64_t j = 0; j < d; ++j) {
              double ref = 0;
              for (int64_t t = 0; t <= i; ++t) ref += w[t] / total * vs[l][(kvh * n + t) * d + j];
              const double got = out[(h * n + i) * d + j];
              num[l] += (got - ref) * (got - ref);
              den[l] += ref * ref;
            }
          }
        }
      }
      (void)client.DropSession(cs.session_id());
    }
    for (int64_t l = 0; l < layers; ++l) err[m][l] = std::sqrt(num[l] / den[l]);
    (void)client.DeleteProfile(pid);
  }
  absl::PrintF("\n%-8s %20s %20s\n", "layer", "uniform TQ-MSE", "Block-GTQ (logit)");
  double mean0 = 0, mean1 = 0;
  for (int64_t l = 0; l < layers; ++l) {
    absl::PrintF("%-8d %20.4f %20.4f\n", l, err[0][l], err[1][l]);
    mean0 += err[0][l] / layers;
    mean1 += err[1][l] / layers;
  }
  absl::PrintF("%-8s %20.4f %20.4f\n", "mean", mean0, mean1);
  absl::PrintF("%-8s %19.2fx %19.2fx\n", "ratio", ratio[0], ratio[1]);
  absl::PrintF("(relative L2 error of causal attention outputs against fp32 attention with the "
               "true K and V; ratio = fp16 bytes / packed bytes per token)\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ropekv-cli COMMAND [flags]\n"
      "  health | profile create|get|list|delete | session create|stats|list|drop\n"
      "  append | attend | read | demo\n"
      "  e.g. ropekv-cli demo --server=127.0.0.1:50051");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  return Run(args);
}
