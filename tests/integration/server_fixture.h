// A real server on loopback with clients and raw-message helpers, shared by
// the error, fault and security tests.
#ifndef ROPEKV_TESTS_INTEGRATION_SERVER_FIXTURE_H_
#define ROPEKV_TESTS_INTEGRATION_SERVER_FIXTURE_H_

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "service/page_pool.h"
#include "service/server.h"
#include "tests/unit/test_util.h"

namespace ropekv::testing {

namespace fs = std::filesystem;
namespace pb = ::ropekv::v1;
using absl::StatusCode;
using client::Client;

// The geometry every fixture profile has.
inline constexpr int kLayers = 2, kQHeads = 4, kKvHeads = 2, kHeadDim = 32;

// A scores-only profile spec (no calibration data), K3V3.
inline pb::ProfileSpec Spec(const std::string& id) {
  pb::ProfileSpec spec;
  spec.set_profile_id(id);
  pb::ModelGeometry* g = spec.mutable_geometry();
  g->set_num_layers(kLayers);
  g->set_num_q_heads(kQHeads);
  g->set_num_kv_heads(kKvHeads);
  g->set_head_dim(kHeadDim);
  g->set_rope_layout(pb::ROPE_LAYOUT_INTERLEAVED);
  g->set_rotary_dim(kHeadDim);
  g->set_rope_theta(10000);
  spec.mutable_budget()->set_key_avg_bits(3);
  spec.mutable_budget()->set_value_bits(3);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      pb::HeadScores* s = spec.mutable_scores()->add_heads();
      s->set_layer(l);
      s->set_kv_head(h);
      for (int b = 0; b < kHeadDim / 2; ++b) s->add_scores(1.0 + b % 5);
    }
  }
  return spec;
}

// Random normal values as an [a, b, c] wire tensor.
inline pb::Tensor Floats(int64_t a, int64_t b, int64_t c, uint32_t seed,
                  pb::DType dtype = pb::DTYPE_FP32) {
  return client::MakeTensor(testing::RandomNormal(a * b * c, seed), {a, b, c}, dtype);
}

class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / absl::StrCat("ropekv-err-", ::getpid(), "-", n_++)).string();
    fs::create_directories(dir_);
  }
  void TearDown() override {
    clients_.clear();
    server_.reset();
    fs::remove_all(dir_);
  }
  void Start(service::ServerOptions o = {}) {
    o.address = "127.0.0.1:0";
    o.backend = testing::TestBackend();
    o.data_dir = dir_;
    absl::StatusOr<std::unique_ptr<service::Server>> s = service::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  Client& C(const std::string& token = "") {
    client::ClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->port());
    o.token = token;
    o.upload_dtype = pb::DTYPE_FP32;
    o.max_message_bytes = 32 << 20;
    clients_.push_back(*Client::Connect(o));
    return *clients_.back();
  }
  // A session "s" with `tokens` tokens in every layer.
  void Prepare(Client& c, int64_t tokens = 40) {
    ASSERT_TRUE(c.CreateProfile(Spec("p")).ok());
    pb::CreateSessionRequest req;
    req.set_session_id("s");
    req.set_profile_id("p");
    ASSERT_TRUE(c.CreateSession(req).ok());
    Append(c, "s", tokens, 0);
  }
  void Append(Client& c, const std::string& id, int64_t tokens, int64_t start) {
    std::vector<float> k = testing::RandomNormal(kKvHeads * tokens * kHeadDim, 1);
    std::vector<float> v = testing::RandomNormal(kKvHeads * tokens * kHeadDim, 2);
    std::vector<client::LayerKv> layers;
    for (int l = 0; l < kLayers; ++l) layers.push_back({l, start, kKvHeads, tokens, kHeadDim, k, v});
    absl::StatusOr<pb::AppendResponse> r = c.Append(id, layers);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // Sends raw append messages; returns the call's status.
  absl::Status RawAppend(Client& c, const std::vector<pb::AppendRequest>& msgs,
                         bool cancel_after = false) {
    std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
    pb::AppendResponse resp;
    auto writer = c.stub().Append(ctx.get(), &resp);
    for (const pb::AppendRequest& m : msgs) {
      if (!writer->Write(m)) break;
    }
    if (cancel_after) {
      ctx->TryCancel();
    } else {
      writer->WritesDone();
    }
    grpc::Status s = writer->Finish();
    return absl::Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  pb::AppendRequest Chunk(const std::string& id, int layer, int64_t start, int64_t tokens,
                          uint32_t seed = 3) {
    pb::AppendRequest m;
    m.set_session_id(id);
    m.set_layer(layer);
    m.set_token_start(start);
    *m.mutable_keys() = Floats(kKvHeads, tokens, kHeadDim, seed);
    *m.mutable_values() = Floats(kKvHeads, tokens, kHeadDim, seed + 1);
    return m;
  }
  pb::AttendRequest Query(const std::string& id, int layer = 0) {
    pb::AttendRequest req;
    pb::AttendItem* item = req.add_items();
    item->set_session_id(id);
    item->set_layer(layer);
    *item->mutable_queries() = Floats(kQHeads, 1, kHeadDim, 9);
    return req;
  }
  // Waits until the pool's free pages reach `want` (a reactor finishes
  // after the client has its status).
  void ExpectFreePages(int64_t want) {
    for (int i = 0; i < 200 && server_->pool().free_pages() != want; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_EQ(server_->pool().free_pages(), want);
  }

  std::string dir_;
  std::unique_ptr<service::Server> server_;
  std::vector<std::unique_ptr<Client>> clients_;
  static inline int n_ = 0;  // distinct data directories per test
};

}  // namespace ropekv::testing

#endif  // ROPEKV_TESTS_INTEGRATION_SERVER_FIXTURE_H_
