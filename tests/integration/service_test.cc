// The service end to end: a real ropekv server on a loopback port, the real
// client library, and the CPU backend called directly as the reference.
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "planner/half.h"
#include "planner/profile_io.h"
#include "service/attend_batcher.h"
#include "service/metrics.h"
#include "service/page_pool.h"
#include "service/server.h"
#include "service/sessions.h"
#include "tests/unit/test_util.h"

namespace ropekv {
namespace {

namespace fs = std::filesystem;
namespace pb = ::ropekv::v1;
using client::Client;
using client::ClientOptions;
using client::LayerKv;

constexpr int kLayers = 2, kQHeads = 8, kKvHeads = 2, kHeadDim = 64;

pb::ProfileSpec ScoresSpec(const std::string& id, double key_bits = 3, int value_bits = 3) {
  pb::ProfileSpec spec;
  spec.set_profile_id(id);
  spec.set_name("test-model");
  pb::ModelGeometry* g = spec.mutable_geometry();
  g->set_num_layers(kLayers);
  g->set_num_q_heads(kQHeads);
  g->set_num_kv_heads(kKvHeads);
  g->set_head_dim(kHeadDim);
  g->set_rope_layout(pb::ROPE_LAYOUT_SPLIT_HALF);
  g->set_rotary_dim(kHeadDim);
  g->set_rope_theta(10000);
  spec.mutable_budget()->set_key_avg_bits(key_bits);
  spec.mutable_budget()->set_value_bits(value_bits);
  std::mt19937 gen(11);
  std::lognormal_distribution<double> e(0, 2);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      pb::HeadScores* hs = spec.mutable_scores()->add_heads();
      hs->set_layer(l);
      hs->set_kv_head(h);
      for (int b = 0; b < kHeadDim / 2; ++b) hs->add_scores(e(gen));
    }
  }
  return spec;
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_dir_ = (fs::temp_directory_path() /
                 absl::StrCat("ropekv-it-", ::getpid(), "-", counter_++)).string();
    fs::create_directories(data_dir_);
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    fs::remove_all(data_dir_);
  }

  void StartServer(service::ServerOptions o = {}) {
    o.address = "127.0.0.1:0";
    o.backend = testing::TestBackend();
    if (o.data_dir.empty()) o.data_dir = data_dir_;
    o.cpu_threads = 2;
    absl::StatusOr<std::unique_ptr<service::Server>> s = service::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    client_ = Connect();
  }

  std::unique_ptr<Client> Connect(const std::string& token = "",
                                  pb::DType upload = pb::DTYPE_FP32) {
    ClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->port());
    o.token = token;
    o.upload_dtype = upload;
    o.deadline = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // The profile as the server holds it.
  planner::ModelProfile FetchProfile(Client& c, const std::string& id) {
    absl::StatusOr<pb::ProfileInfo> info = c.GetProfile(id, true);
    EXPECT_TRUE(info.ok()) << info.status();
    absl::StatusOr<planner::ModelProfile> p = planner::ProfileFromProto(info->plan());
    EXPECT_TRUE(p.ok()) << p.status();
    return *std::move(p);
  }

  void MakeSession(Client& c, const std::string& session, const std::string& profile) {
    pb::CreateSessionRequest req;
    req.set_session_id(session);
    req.set_profile_id(profile);
    absl::StatusOr<pb::SessionInfo> info = c.CreateSession(req);
    ASSERT_TRUE(info.ok()) << info.status();
  }

  std::string data_dir_;
  std::unique_ptr<service::Server> server_;
  std::unique_ptr<Client> client_;
  static inline int counter_ = 0;
};

// K/V for `tokens` tokens of every layer: [layer][kv, tokens, d].
struct Kv {
  std::vector<std::vector<float>> keys, values;
};
Kv RandomKv(int64_t tokens, uint32_t seed) {
  Kv kv;
  for (int l = 0; l < kLayers; ++l) {
    kv.keys.push_back(testing::RandomNormal(kKvHeads * tokens * kHeadDim, seed + 2 * l));
    kv.values.push_back(testing::RandomNormal(kKvHeads * tokens * kHeadDim, seed + 2 * l + 1));
  }
  return kv;
}

absl::StatusOr<pb::AppendResponse> AppendAll(Client& c, const std::string& session,
                                             const Kv& kv, int64_t start, int64_t tokens) {
  std::vector<LayerKv> layers;
  for (int l = 0; l < kLayers; ++l) {
    layers.push_back({l, start, kKvHeads, tokens, kHeadDim, kv.keys[l], kv.values[l]});
  }
  return c.Append(session, layers);
}

pb::AttendRequest OneItem(const std::string& session, int layer, const std::vector<float>& q,
                          int q_len, std::optional<int64_t> causal = std::nullopt) {
  pb::AttendRequest req;
  pb::AttendItem* item = req.add_items();
  item->set_session_id(session);
  item->set_layer(layer);
  *item->mutable_queries() = client::MakeTensor(q, {kQHeads, q_len, kHeadDim});
  if (causal) item->set_causal_offset(*causal);
  return req;
}

// The reference: the CPU backend over locally encoded pages.
struct LocalLayer {
  testing::HostPagedLayer pages;
  int64_t tokens = 0;
};

TEST_F(ServiceTest, ProfileLifecycleAndPersistenceAcrossRestart) {
  StartServer();
  absl::StatusOr<pb::ProfileInfo> info = client_->CreateProfile(ScoresSpec("p1"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->profile_id(), "p1");
  EXPECT_TRUE(info->available());
  EXPECT_GT(info->fp16_bytes_per_token(), info->packed_bytes_per_token());
  // The plan equals one built locally from the same scores.
  pb::ProfileSpec spec = ScoresSpec("p1");
  planner::PerHead scores(kLayers, std::vector<std::vector<double>>(kKvHeads));
  for (const pb::HeadScores& h : spec.scores().heads()) {
    scores[h.layer()][h.kv_head()].assign(h.scores().begin(), h.scores().end());
  }
  planner::ModelGeometry g = *planner::GeometryFromProto(spec.geometry());
  planner::Budget b = *planner::BudgetFromProto(spec.budget(), true);
  planner::ModelProfile local = *planner::BuildProfileFromScores(g, b, scores);
  planner::ModelProfile remote = FetchProfile(*client_, "p1");
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      EXPECT_EQ(remote.layers[l].heads[h].block_bits, local.layers[l].heads[h].block_bits);
      EXPECT_EQ(remote.layers[l].heads[h].value_rotation, local.layers[l].heads[h].value_rotation);
    }
  }
  EXPECT_EQ(client_->CreateProfile(ScoresSpec("p1")).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p2", 2.5, 2)).ok());
  absl::StatusOr<std::vector<pb::ProfileInfo>> list = client_->ListProfiles();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].profile_id(), "p1");
  EXPECT_FALSE((*list)[0].has_plan());

  // Restart on the same data dir: both profiles come back, identical.
  server_.reset();
  StartServer();
  planner::ModelProfile reloaded = FetchProfile(*client_, "p1");
  EXPECT_EQ(reloaded.layers[1].heads[1].key_groups[0].rotation,
            remote.layers[1].heads[1].key_groups[0].rotation);
  EXPECT_TRUE(client_->DeleteProfile("p2").ok());
  EXPECT_EQ(client_->GetProfile("p2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteProfile("p2").code(), absl::StatusCode::kNotFound);
  // A profile in use cannot be deleted.
  MakeSession(*client_, "s", "p1");
  EXPECT_EQ(client_->DeleteProfile("p1").code(), absl::StatusCode::kFailedPrecondition);
  server_.reset();
  StartServer();
  EXPECT_EQ(client_->GetProfile("p2").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceTest, ProfileFromCalibrationAndAllocation) {
  StartServer();
  pb::ProfileSpec spec = ScoresSpec("cal");
  spec.mutable_calibration();  // replaces the scores
  const int64_t tokens = 300;
  std::vector<float> q = testing::RandomNormal(kLayers * kQHeads * tokens * kHeadDim, 1);
  std::vector<float> k = testing::RandomNormal(kLayers * kKvHeads * tokens * kHeadDim, 2);
  ClientOptions small;
  small.target = absl::StrCat("127.0.0.1:", server_->port());
  small.chunk_bytes = 16 << 10;  // many chunks
  std::unique_ptr<Client> c = *Client::Connect(small);
  absl::StatusOr<pb::ProfileInfo> info = c->CreateProfileFromSamples(spec, q, k, tokens);
  ASSERT_TRUE(info.ok()) << info.status();
  // Reference: the same samples (fp16 on the wire) accumulated locally.
  planner::ModelGeometry g = *planner::GeometryFromProto(spec.geometry());
  planner::ScoreAccumulator acc = *planner::ScoreAccumulator::Create(g);
  for (float& x : q) x = planner::RoundToHalf(x);
  for (float& x : k) x = planner::RoundToHalf(x);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kQHeads; ++h) ASSERT_TRUE(acc.AddQueries(l, h, q.data() + (l * kQHeads + h) * tokens * kHeadDim, tokens).ok());
    for (int h = 0; h < kKvHeads; ++h) ASSERT_TRUE(acc.AddKeys(l, h, k.data() + (l * kKvHeads + h) * tokens * kHeadDim, tokens).ok());
  }
  planner::ModelProfile local = *planner::BuildProfile(acc, *planner::BudgetFromProto(spec.budget(), true));
  planner::ModelProfile remote = FetchProfile(*client_, "cal");
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      EXPECT_EQ(remote.layers[l].heads[h].block_bits, local.layers[l].heads[h].block_bits);
    }
  }
  // Explicit allocation.
  pb::ProfileSpec alloc = ScoresSpec("alloc");
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      pb::HeadAllocation* a = alloc.mutable_allocation()->add_heads();
      a->set_layer(l);
      a->set_kv_head(h);
      for (int b = 0; b < kHeadDim / 2; ++b) a->add_block_bits(b % 2 ? 2 : 4);
    }
  }
  ASSERT_TRUE(client_->CreateProfile(alloc).ok());
  EXPECT_EQ(FetchProfile(*client_, "alloc").layers[1].heads[0].block_bits[1], 2);
  // A missing head is named.
  alloc.set_profile_id("alloc2");
  alloc.mutable_allocation()->mutable_heads()->RemoveLast();
  absl::Status s = client_->CreateProfile(alloc).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("missing (layer 1, kv_head 1)"), std::string::npos) << s;
}

TEST_F(ServiceTest, AttentionEqualsBackendBitForBitAndDenseFp64) {
  StartServer();
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p")).ok());
  MakeSession(*client_, "s1", "p");
  const planner::ModelProfile profile = FetchProfile(*client_, "p");
  const int64_t tokens = 700;
  const Kv kv = RandomKv(tokens, 5);
  // Two appends (the second a separate stream) like a prefill then decode.
  ASSERT_TRUE(AppendAll(*client_, "s1", RandomKv(0, 0), 0, 0).status().code() ==
              absl::StatusCode::kInvalidArgument);  // empty layers are refused
  Kv first, second;
  for (int l = 0; l < kLayers; ++l) {
    auto split = [&](const std::vector<float>& src, int64_t b, int64_t n) {
      std::vector<float> out;
      for (int h = 0; h < kKvHeads; ++h) {
        auto it = src.begin() + (h * tokens + b) * kHeadDim;
        out.insert(out.end(), it, it + n * kHeadDim);
      }
      return out;
    };
    first.keys.push_back(split(kv.keys[l], 0, 500));
    first.values.push_back(split(kv.values[l], 0, 500));
    second.keys.push_back(split(kv.keys[l], 500, 200));
    second.values.push_back(split(kv.values[l], 500, 200));
  }
  absl::StatusOr<pb::AppendResponse> r1 = AppendAll(*client_, "s1", first, 0, 500);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->tokens_appended(), 1000);
  absl::StatusOr<pb::AppendResponse> r2 = AppendAll(*client_, "s1", second, 500, 200);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->layer_tokens(0), 700);
  EXPECT_EQ(r2->layer_tokens(1), 700);

  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend({.num_threads = 2});
  const int q_len = 3;
  for (int layer = 0; layer < kLayers; ++layer) {
    testing::HostPagedLayer local(profile.layers[layer], 64, tokens);
    ASSERT_TRUE(backend->EncodeLayer(profile.layers[layer], local.view(0), 0,
                                     kv.keys[layer].data(), kv.values[layer].data(), tokens).ok());
    const std::vector<float> q = testing::RandomNormal(kQHeads * q_len * kHeadDim, 40 + layer);
    for (std::optional<int64_t> causal : {std::optional<int64_t>(), std::optional<int64_t>(tokens - q_len)}) {
      absl::StatusOr<pb::AttendResponse> resp = client_->Attend(OneItem("s1", layer, q, q_len, causal));
      ASSERT_TRUE(resp.ok()) << resp.status();
      std::vector<float> out = *client::TensorValues(resp->results(0).output());
      std::vector<float> lse = *client::TensorValues(resp->results(0).lse());
      std::vector<float> want(out.size()), want_lse(lse.size());
      kernels::AttentionParams p;
      p.queries = q.data();
      p.num_q_heads = kQHeads;
      p.q_len = q_len;
      p.causal = causal.has_value();
      p.causal_offset = causal.value_or(0);
      p.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
      p.out = want.data();
      p.lse = want_lse.data();
      ASSERT_TRUE(backend->Attend(profile.layers[layer], local.view(tokens), p).ok());
      if (testing::TestOnCpu()) {
        EXPECT_EQ(out, want);  // bit-identical
        EXPECT_EQ(lse, want_lse);
      } else {
        EXPECT_LT(testing::RelativeError(out, want), 2e-3);
        for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], want_lse[i], 1e-3);
      }
      // Dense fp64 attention over the cache as the server exports it.
      std::vector<float> k_hat, v_hat;
      pb::ReadRequest read;
      read.set_session_id("s1");
      read.add_layers(layer);
      read.set_format(pb::READ_FORMAT_FP32);
      read.set_chunk_tokens(128);
      k_hat.resize(kKvHeads * tokens * kHeadDim);
      v_hat.resize(k_hat.size());
      ASSERT_TRUE(client_->Read(read, [&](const pb::ReadResponse& m) {
        const pb::ReadChunk& c = m.chunk();
        std::vector<float> kc = *client::TensorValues(c.keys());
        std::vector<float> vc = *client::TensorValues(c.values());
        for (int h = 0; h < kKvHeads; ++h) {
          std::copy_n(kc.begin() + h * c.tokens() * kHeadDim, c.tokens() * kHeadDim,
                      k_hat.begin() + (h * tokens + c.token_start()) * kHeadDim);
          std::copy_n(vc.begin() + h * c.tokens() * kHeadDim, c.tokens() * kHeadDim,
                      v_hat.begin() + (h * tokens + c.token_start()) * kHeadDim);
        }
        return true;
      }).ok());
      std::vector<double> ref, ref_lse;
      testing::ReferenceAttention(q, kQHeads, q_len, k_hat, v_hat, kKvHeads, tokens, kHeadDim,
                                  1.0 / std::sqrt(kHeadDim), causal.has_value(),
                                  causal.value_or(0), 0, tokens, &ref, &ref_lse);
      EXPECT_LT(testing::RelativeError(out, ref), testing::AttentionOutputTolerance());
      for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], ref_lse[i], 1e-4);
    }
  }
  // fp16 outputs are the fp32 ones rounded.
  const std::vector<float> q = testing::RandomNormal(kQHeads * kHeadDim, 77);
  pb::AttendRequest req = OneItem("s1", 0, q, 1);
  absl::StatusOr<pb::AttendResponse> f32 = client_->Attend(req);
  req.set_output_dtype(pb::DTYPE_FP16);
  absl::StatusOr<pb::AttendResponse> f16 = client_->Attend(req);
  ASSERT_TRUE(f32.ok() && f16.ok());
  EXPECT_EQ(f16->results(0).output().dtype(), pb::DTYPE_FP16);
  std::vector<float> a = *client::TensorValues(f32->results(0).output());
  std::vector<float> h = *client::TensorValues(f16->results(0).output());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(h[i], planner::RoundToHalf(a[i]));
}

TEST_F(ServiceTest, BatchStreamAndPackedRead) {
  StartServer();
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p")).ok());
  MakeSession(*client_, "a", "p");
  MakeSession(*client_, "b", "p");
  ASSERT_TRUE(AppendAll(*client_, "a", RandomKv(100, 1), 0, 100).ok());
  ASSERT_TRUE(AppendAll(*client_, "b", RandomKv(37, 2), 0, 37).ok());
  const std::vector<float> q = testing::RandomNormal(kQHeads * 2 * kHeadDim, 3);
  pb::AttendRequest batch = OneItem("a", 1, q, 2);
  batch.MergeFrom(OneItem("b", 0, q, 2));
  absl::StatusOr<pb::AttendResponse> both = client_->Attend(batch);
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->results_size(), 2);
  absl::StatusOr<pb::AttendResponse> only_b = client_->Attend(OneItem("b", 0, q, 2));
  EXPECT_EQ(both->results(1).output().data(), only_b->results(0).output().data());
  // The stream answers each request in order, equal to unary calls.
  absl::StatusOr<std::unique_ptr<client::AttendStream>> stream = client_->OpenAttendStream();
  ASSERT_TRUE(stream.ok());
  for (int step = 0; step < 4; ++step) {
    absl::StatusOr<pb::AttendResponse> r = (*stream)->Call(step % 2 ? OneItem("b", 0, q, 2) : batch);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->results(0).output().data(),
              (step % 2 ? only_b : both)->results(0).output().data());
  }
  EXPECT_TRUE((*stream)->Finish().ok());
  // Packed read: the plan, then records equal to a local encoding.
  const planner::ModelProfile profile = FetchProfile(*client_, "p");
  const Kv kv = RandomKv(37, 2);
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend();
  pb::ReadRequest read;
  read.set_session_id("b");
  read.set_format(pb::READ_FORMAT_PACKED);
  int messages = 0;
  ASSERT_TRUE(client_->Read(read, [&](const pb::ReadResponse& m) {
    if (messages++ == 0) {
      EXPECT_TRUE(m.has_plan());
      return true;
    }
    const pb::ReadChunk& c = m.chunk();
    const planner::LayerPlan& plan = profile.layers[c.layer()];
    testing::HostPagedLayer local(plan, 64, 37);
    EXPECT_TRUE(backend->EncodeLayer(plan, local.view(0), 0, kv.keys[c.layer()].data(),
                                     kv.values[c.layer()].data(), 37).ok());
    const planner::PageLayout pl = planner::MakePageLayout(plan, 64);
    size_t pos = 0;
    for (int h = 0; h < kKvHeads; ++h) {
      const int rb = plan.heads[h].layout.record_bytes;
      for (uint32_t t = 0; t < c.tokens(); ++t) {
        const uint8_t* rec = local.storage()[0].data() + pl.head_offsets[h] + (c.token_start() + t) * rb;
        // Codes may differ at near-ties on another backend; the CPU is exact.
        if (testing::TestOnCpu()) {
          EXPECT_EQ(0, std::memcmp(rec, c.packed().data() + pos, rb)) << "head " << h << " token " << t;
        } else {
          int same = 0;
          for (int b = 0; b < rb; ++b) same += rec[b] == static_cast<uint8_t>(c.packed()[pos + b]);
          EXPECT_GE(same, rb - 2) << "head " << h << " token " << t;
        }
        pos += rb;
      }
    }
    EXPECT_EQ(pos, c.packed().size());
    return true;
  }).ok());
  EXPECT_EQ(messages, 1 + kLayers);
}

// With a batching window, concurrent Attend calls are merged into shared
// backend calls and every caller still gets exactly its own results (on
// the CPU bit for bit the same as a call made alone).
TEST_F(ServiceTest, ConcurrentAttendsAreBatchedAndKeepTheirResults) {
  service::ServerOptions o;
  o.attend_batch_window = absl::Milliseconds(5);
  o.attend_batch_max_items = 16;
  StartServer(o);
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p")).ok());
  constexpr int kSessions = 4, kThreads = 8, kCalls = 12;
  for (int s = 0; s < kSessions; ++s) {
    MakeSession(*client_, absl::StrCat("s", s), "p");
    const int64_t tokens = 40 + 25 * s;
    ASSERT_TRUE(AppendAll(*client_, absl::StrCat("s", s), RandomKv(tokens, 300 + s), 0, tokens).ok());
  }
  // Expected results, each from a call made alone.
  std::vector<std::vector<float>> queries, expected;
  for (int t = 0; t < kThreads; ++t) {
    queries.push_back(testing::RandomNormal(kQHeads * kHeadDim, 900 + t));
    absl::StatusOr<pb::AttendResponse> r = client_->Attend(OneItem(absl::StrCat("s", t % kSessions), t % kLayers,
                                                                   queries[t], 1));
    ASSERT_TRUE(r.ok()) << r.status();
    expected.push_back(*client::TensorValues(r->results(0).output()));
  }
  const service::AttendBatcher::Stats before = server_->attend_batcher().stats();
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> c = Connect();
      for (int i = 0; i < kCalls; ++i) {
        absl::StatusOr<pb::AttendResponse> r =
            c->Attend(OneItem(absl::StrCat("s", t % kSessions), t % kLayers, queries[t], 1));
        if (!r.ok()) {
          ++failures;
          continue;
        }
        const std::vector<float> out = *client::TensorValues(r->results(0).output());
        const bool same = testing::TestOnCpu() ? out == expected[t]
                                               : testing::RelativeError(out, std::vector<double>(expected[t].begin(), expected[t].end())) < 1e-4;
        if (!same) ++mismatches;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  const service::AttendBatcher::Stats after = server_->attend_batcher().stats();
  EXPECT_EQ(after.calls - before.calls, kThreads * kCalls);
  EXPECT_EQ(after.items - before.items, kThreads * kCalls);
  EXPECT_LT(after.batches - before.batches, kThreads * kCalls);  // some calls shared a batch
  std::printf("[ figures  ] %lld calls in %lld merged batches\n",
              static_cast<long long>(after.calls - before.calls),
              static_cast<long long>(after.batches - before.batches));
  // A bad item in one call fails that call only.
  absl::StatusOr<pb::AttendResponse> bad = client_->Attend(OneItem("s0", kLayers + 3, queries[0], 1));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(ServiceTest, SixteenClientsConcurrently) {
  StartServer();
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p", 2.5, 2)).ok());
  const planner::ModelProfile profile = FetchProfile(*client_, "p");
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> c = Connect();
      const std::string id = absl::StrCat("s", t);
      pb::CreateSessionRequest req;
      req.set_session_id(id);
      req.set_profile_id("p");
      if (absl::Status s = c->CreateSession(req).status(); !s.ok()) { ADD_FAILURE() << s; ++failures; return; }
      std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend({.num_threads = 1});
      const int64_t tokens = 60 + 10 * t;
      const Kv kv = RandomKv(tokens, 1000 + t);
      for (int64_t start = 0; start < tokens; start += 20) {  // several appends
        const int64_t n = std::min<int64_t>(20, tokens - start);
        Kv part;
        for (int l = 0; l < kLayers; ++l) {
          std::vector<float> k, v;
          for (int h = 0; h < kKvHeads; ++h) {
            auto kb = kv.keys[l].begin() + (h * tokens + start) * kHeadDim;
            auto vb = kv.values[l].begin() + (h * tokens + start) * kHeadDim;
            k.insert(k.end(), kb, kb + n * kHeadDim);
            v.insert(v.end(), vb, vb + n * kHeadDim);
          }
          part.keys.push_back(k);
          part.values.push_back(v);
        }
        if (absl::Status s = AppendAll(*c, id, part, start, n).status(); !s.ok()) { ADD_FAILURE() << id << " append " << s; ++failures; return; }
        const std::vector<float> q = testing::RandomNormal(kQHeads * kHeadDim, 7 * t + start);
        absl::StatusOr<pb::AttendResponse> r = c->Attend(OneItem(id, 1, q, 1));
        if (!r.ok()) { ADD_FAILURE() << id << " attend " << r.status(); ++failures; return; }
        testing::HostPagedLayer local(profile.layers[1], 32, tokens);
        std::vector<float> k, v;  // the first start+n tokens
        for (int h = 0; h < kKvHeads; ++h) {
          auto kb = kv.keys[1].begin() + h * tokens * kHeadDim;
          auto vb = kv.values[1].begin() + h * tokens * kHeadDim;
          k.insert(k.end(), kb, kb + (start + n) * kHeadDim);
          v.insert(v.end(), vb, vb + (start + n) * kHeadDim);
        }
        if (!backend->EncodeLayer(profile.layers[1], local.view(0), 0, k.data(), v.data(), start + n).ok()) ++failures;
        std::vector<float> out(kQHeads * kHeadDim), lse(kQHeads);
        kernels::AttentionParams p;
        p.queries = q.data();
        p.num_q_heads = kQHeads;
        p.scale = 0.125f;
        p.out = out.data();
        p.lse = lse.data();
        if (!backend->Attend(profile.layers[1], local.view(start + n), p).ok()) ++failures;
        const std::vector<float> got = *client::TensorValues(r->results(0).output());
        if (testing::TestOnCpu() ? got != out : testing::RelativeError(got, out) > 2e-3) {
          ADD_FAILURE() << id << " differs at " << start;
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(client_->ListSessions()->size(), 16u);
}

}  // namespace
}  // namespace ropekv

namespace ropekv {
namespace {

// GET http://127.0.0.1:port/metrics with a plain socket.
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, n);
  ::close(fd);
  return out;
}

TEST_F(ServiceTest, MetricsCountCallsAndServeOverHttp) {
  service::ServerOptions o;
  o.metrics_address = "127.0.0.1:0";
  StartServer(o);
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p")).ok());
  MakeSession(*client_, "s", "p");
  ASSERT_TRUE(AppendAll(*client_, "s", RandomKv(50, 1), 0, 50).ok());
  const std::vector<float> q = testing::RandomNormal(kQHeads * kHeadDim, 2);
  ASSERT_TRUE(client_->Attend(OneItem("s", 0, q, 1)).ok());
  EXPECT_FALSE(client_->Attend(OneItem("missing", 0, q, 1)).ok());
  server_->RefreshGauges();
  const std::string text = HttpGet(server_->metrics().port(), "/metrics");
  EXPECT_NE(text.find("200 OK"), std::string::npos) << text.substr(0, 200);
  EXPECT_NE(text.find("ropekv_rpc_total{code=\"OK\",method=\"Attend\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("ropekv_rpc_total{code=\"NOT_FOUND\",method=\"Attend\"} 1"), std::string::npos);
  EXPECT_NE(text.find("ropekv_rpc_total{code=\"OK\",method=\"Append\"} 1"), std::string::npos);
  // 50 tokens x 2 layers x 2 KV heads x 64 dims x 4 bytes (K+V fp16).
  EXPECT_NE(text.find("ropekv_bytes_ingested_total 51200"), std::string::npos);
  EXPECT_NE(text.find("ropekv_tokens_ingested_total 100"), std::string::npos);
  EXPECT_NE(text.find("ropekv_sessions 1"), std::string::npos);
  EXPECT_NE(text.find("ropekv_rpc_duration_seconds_bucket{code=\"OK\",method=\"Attend\""), std::string::npos);
}

}  // namespace
}  // namespace ropekv

namespace ropekv {
namespace {

// Sinks and window in fp16, the middle from the packed cache: equals dense
// fp64 attention over exactly that mix, across appends that wrap the ring,
// and an aborted append changes nothing.
TEST_F(ServiceTest, SinkAndWindowTokensAreAttendedInFp16) {
  StartServer();
  ASSERT_TRUE(client_->CreateProfile(ScoresSpec("p", 2, 2)).ok());
  const int64_t sinks = 4, window = 16;
  pb::CreateSessionRequest req;
  req.set_session_id("w");
  req.set_profile_id("p");
  req.set_sink_tokens(sinks);
  req.set_window_tokens(window);
  ASSERT_TRUE(client_->CreateSession(req).ok());
  MakeSession(*client_, "plain", "p");
  const int64_t total = 93;
  const Kv kv = RandomKv(total, 21);
  auto slice = [&](const std::vector<float>& src, int64_t b, int64_t n) {
    std::vector<float> out;
    for (int h = 0; h < kKvHeads; ++h) {
      auto it = src.begin() + (h * total + b) * kHeadDim;
      out.insert(out.end(), it, it + n * kHeadDim);
    }
    return out;
  };
  int64_t len = 0;
  for (int64_t n : {3, 30, 1, 17, 1, 41}) {  // sink fill, ring wraps, single steps
    Kv part;
    for (int l = 0; l < kLayers; ++l) {
      part.keys.push_back(slice(kv.keys[l], len, n));
      part.values.push_back(slice(kv.values[l], len, n));
    }
    ASSERT_TRUE(AppendAll(*client_, "w", part, len, n).ok());
    ASSERT_TRUE(AppendAll(*client_, "plain", part, len, n).ok());
    len += n;
    for (int layer = 0; layer < kLayers; ++layer) {
      // Reference K/V: decoded packed tokens, with fp16 sinks and window.
      std::vector<float> k_hat(kKvHeads * len * kHeadDim), v_hat(k_hat.size());
      pb::ReadRequest read;
      read.set_session_id("w");
      read.add_layers(layer);
      read.set_format(pb::READ_FORMAT_FP32);
      ASSERT_TRUE(client_->Read(read, [&](const pb::ReadResponse& m) {
        std::vector<float> kc = *client::TensorValues(m.chunk().keys());
        std::vector<float> vc = *client::TensorValues(m.chunk().values());
        const int64_t n = m.chunk().tokens(), b = m.chunk().token_start();
        for (int h = 0; h < kKvHeads; ++h) {
          std::copy_n(kc.begin() + h * n * kHeadDim, n * kHeadDim, k_hat.begin() + (h * len + b) * kHeadDim);
          std::copy_n(vc.begin() + h * n * kHeadDim, n * kHeadDim, v_hat.begin() + (h * len + b) * kHeadDim);
        }
        return true;
      }).ok());
      for (int h = 0; h < kKvHeads; ++h) {
        for (int64_t t = 0; t < len; ++t) {
          if (t >= sinks && t < len - window) continue;
          for (int j = 0; j < kHeadDim; ++j) {
            const int64_t src = (h * total + t) * kHeadDim + j, dst = (h * len + t) * kHeadDim + j;
            k_hat[dst] = planner::RoundToHalf(kv.keys[layer][src]);
            v_hat[dst] = planner::RoundToHalf(kv.values[layer][src]);
          }
        }
      }
      const int q_len = 2;
      const std::vector<float> q = testing::RandomNormal(kQHeads * q_len * kHeadDim, len + layer);
      for (std::optional<int64_t> causal : {std::optional<int64_t>(), std::optional<int64_t>(len - q_len)}) {
        absl::StatusOr<pb::AttendResponse> r = client_->Attend(OneItem("w", layer, q, q_len, causal));
        ASSERT_TRUE(r.ok()) << r.status();
        std::vector<double> ref, ref_lse;
        testing::ReferenceAttention(q, kQHeads, q_len, k_hat, v_hat, kKvHeads, len, kHeadDim,
                                    1.0 / std::sqrt(kHeadDim), causal.has_value(), causal.value_or(0),
                                    0, len, &ref, &ref_lse);
        EXPECT_LT(testing::RelativeError(*client::TensorValues(r->results(0).output()), ref),
                  testing::AttentionOutputTolerance())
            << "len " << len << " layer " << layer;
        std::vector<float> lse = *client::TensorValues(r->results(0).lse());
        for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], ref_lse[i], 1e-4);
        // And it differs from the all-packed session (the fp16 tokens matter).
        absl::StatusOr<pb::AttendResponse> plain = client_->Attend(OneItem("plain", layer, q, q_len, causal));
        EXPECT_NE(plain->results(0).output().data(), r->results(0).output().data());
      }
    }
  }
  // An aborted append leaves the window (and everything else) as it was.
  const std::vector<float> q = testing::RandomNormal(kQHeads * kHeadDim, 5);
  absl::StatusOr<pb::AttendResponse> before = client_->Attend(OneItem("w", 0, q, 1));
  std::vector<float> bad = testing::RandomNormal(kKvHeads * 8 * kHeadDim, 6);
  bad.back() = NAN;
  const std::vector<float> bad_layer_values = testing::RandomNormal(kKvHeads * 8 * kHeadDim, 7);
  std::vector<client::LayerKv> layers = {
      {0, len, kKvHeads, 8, kHeadDim, bad, bad_layer_values}};
  std::vector<float> good = testing::RandomNormal(kKvHeads * 8 * kHeadDim, 8);
  layers.insert(layers.begin(), client::LayerKv{1, len, kKvHeads, 8, kHeadDim, good, good});
  EXPECT_EQ(client_->Append("w", layers).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<pb::AttendResponse> after = client_->Attend(OneItem("w", 0, q, 1));
  EXPECT_EQ(after->results(0).output().data(), before->results(0).output().data());
  absl::StatusOr<pb::SessionInfo> info = client_->GetSession("w");
  EXPECT_EQ(info->layer_tokens(1), static_cast<uint64_t>(len));
  EXPECT_EQ(info->window_tokens(), window);
}

}  // namespace
}  // namespace ropekv
