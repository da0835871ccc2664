// Every request bounded: sizes a request names are refused before anything
// is allocated, work is accounted to its tenant, causal offsets cannot
// wrap or point past the cache, and no call keeps the server from shutting
// down. A real server on loopback with the real client and raw messages.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "service/page_pool.h"
#include "service/server.h"
#include "service/sessions.h"
#include "tests/integration/server_fixture.h"
#include "tests/unit/test_util.h"

namespace ropekv {
namespace {

namespace pb = ::ropekv::v1;
using absl::StatusCode;
using client::Client;
using testing::Floats;
using testing::kHeadDim;
using testing::kKvHeads;
using testing::kLayers;
using testing::kQHeads;
using testing::Spec;

class LimitsTest : public testing::ServerFixture {
 protected:
  // A client whose calls give up after `deadline` (a hang fails the test
  // with DEADLINE_EXCEEDED instead of stalling it).
  Client& Quick(absl::Duration deadline = absl::Seconds(20), const std::string& token = "") {
    client::ClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->port());
    o.token = token;
    o.deadline = deadline;
    o.upload_dtype = pb::DTYPE_FP32;
    clients_.push_back(*Client::Connect(o));
    return *clients_.back();
  }
};

// A calibration spec of any geometry (no samples needed to be refused).
pb::ProfileSpec CalibrationSpec(const std::string& id, uint32_t layers, uint32_t q_heads,
                                uint32_t kv_heads, uint32_t head_dim) {
  pb::ProfileSpec spec = Spec(id);
  spec.clear_scores();
  spec.mutable_calibration();
  pb::ModelGeometry* g = spec.mutable_geometry();
  g->set_num_layers(layers);
  g->set_num_q_heads(q_heads);
  g->set_num_kv_heads(kv_heads);
  g->set_head_dim(head_dim);
  g->set_rotary_dim(head_dim);
  return spec;
}

// A scores spec with `layers` x `kv_heads` heads of width head_dim.
pb::ProfileSpec ScoresSpec(const std::string& id, int layers, int kv_heads, int head_dim) {
  pb::ProfileSpec spec = CalibrationSpec(id, layers, kv_heads, kv_heads, head_dim);
  spec.clear_calibration();
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < kv_heads; ++h) {
      pb::HeadScores* s = spec.mutable_scores()->add_heads();
      s->set_layer(l);
      s->set_kv_head(h);
      for (int b = 0; b < head_dim / 2; ++b) s->add_scores(1.0 + b % 7);
    }
  }
  return spec;
}

void ExpectStatus(const absl::Status& s, StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), needle)) << "'" << needle << "' not in: " << s.message();
}

TEST_F(LimitsTest, HugeGeometriesAreRefusedAtOnce) {
  Start();
  Client& c = Quick(absl::Seconds(10));
  const absl::Time start = absl::Now();
  struct Case {
    pb::ProfileSpec spec;
    StatusCode code;
    const char* needle;
  };
  const Case cases[] = {
      // The outside client's three messages: no reply, or gigabytes.
      {CalibrationSpec("a", 1u << 30, 8, 8, 36), StatusCode::kInvalidArgument, "spec.geometry.num_layers"},
      {CalibrationSpec("b", 1u << 22, 8, 8, 36), StatusCode::kInvalidArgument, "--max_layers"},
      {CalibrationSpec("c", 1, 1u << 28, 1u << 28, 36), StatusCode::kInvalidArgument, "spec.geometry.num_q_heads"},
      {CalibrationSpec("d", 1, 8, 8, 1u << 20), StatusCode::kInvalidArgument, "spec.geometry.head_dim"},
      {CalibrationSpec("e", 4294967295u, 8, 8, 36), StatusCode::kInvalidArgument, "got 4294967295"},
      // Within each bound, but 1024 x 1024 heads of 512 dims is terabytes.
      {CalibrationSpec("f", 1024, 1024, 1024, 512), StatusCode::kResourceExhausted, "--max_profile_bytes"},
  };
  for (const Case& k : cases) {
    absl::StatusOr<pb::ProfileInfo> r = c.CreateProfile(k.spec, [](pb::CalibrationChunk*) { return false; });
    ExpectStatus(r.status(), k.code, k.needle);
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Nothing was charged or registered, and the server still serves.
  absl::StatusOr<std::vector<pb::ProfileInfo>> list = c.ListProfiles();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
  EXPECT_TRUE(c.CreateProfile(Spec("p")).ok());
}

TEST_F(LimitsTest, ProfileMemoryIsATenantBudget) {
  const std::string tokens = dir_ + "/tokens";
  std::ofstream(tokens) << "token-alpha alpha\ntoken-beta beta\n";
  service::ServerOptions o;
  o.token_file = tokens;
  // One 16-layer x 8-head x d128 profile is bounded by about 19.5 MB
  // (planner::ProfileBytesUpperBound): two fit, a third does not.
  o.limits.tenant_profile_bytes = 48 << 20;
  Start(o);
  Client& a = Quick(absl::Seconds(20), "token-alpha");
  Client& b = Quick(absl::Seconds(20), "token-beta");
  ASSERT_TRUE(a.CreateProfile(ScoresSpec("p1", 16, 8, 128)).ok());
  ASSERT_TRUE(a.CreateProfile(ScoresSpec("p2", 16, 8, 128)).ok());
  ExpectStatus(a.CreateProfile(ScoresSpec("p3", 16, 8, 128)).status(), StatusCode::kResourceExhausted,
               "--tenant_profile_bytes");
  // Another tenant has a budget of its own.
  EXPECT_TRUE(b.CreateProfile(ScoresSpec("p1", 16, 8, 128)).ok());
  // Deleting gives the memory back; a refused or failed build holds none.
  ExpectStatus(a.CreateProfile(ScoresSpec("p3", 16, 8, 128)).status(), StatusCode::kResourceExhausted,
               "tenant");
  ASSERT_TRUE(a.DeleteProfile("p1").ok());
  EXPECT_TRUE(a.CreateProfile(ScoresSpec("p3", 16, 8, 128)).ok());
}

TEST_F(LimitsTest, EverySizeARequestNamesIsBounded) {
  service::ServerOptions o;
  o.limits.max_chunk_tokens = 40;
  o.limits.max_sequence_tokens = 48;
  o.limits.max_attend_items = 3;
  o.limits.max_q_len = 4;
  o.limits.max_calibration_tokens = 10;
  Start(o);
  Client& c = Quick();
  Prepare(c, 40);
  const int64_t free_before = server_->pool().free_pages();

  ExpectStatus(RawAppend(c, {Chunk("s", 0, 40, 41)}), StatusCode::kInvalidArgument, "--max_chunk_tokens");
  ExpectStatus(RawAppend(c, {Chunk("s", 0, 40, 8), Chunk("s", 0, 48, 1)}), StatusCode::kResourceExhausted,
               "--max_sequence_tokens");
  ExpectFreePages(free_before);  // the refused appends took nothing
  EXPECT_TRUE(RawAppend(c, {Chunk("s", 0, 40, 8)}).ok());  // up to the limit is fine

  pb::AttendRequest many;
  for (int i = 0; i < 4; ++i) *many.add_items() = Query("s").items(0);
  ExpectStatus(c.Attend(many).status(), StatusCode::kInvalidArgument, "--max_attend_items");
  many.mutable_items()->RemoveLast();
  EXPECT_TRUE(c.Attend(many).ok());
  pb::AttendRequest long_q = Query("s");
  *long_q.mutable_items(0)->mutable_queries() = Floats(kQHeads, 5, kHeadDim, 4);
  ExpectStatus(c.Attend(long_q).status(), StatusCode::kInvalidArgument, "items[0].queries.shape[1]");

  pb::ProfileSpec cal = CalibrationSpec("cal", kLayers, kQHeads, kKvHeads, kHeadDim);
  int sent = 0;
  absl::Status s = c.CreateProfile(cal, [&](pb::CalibrationChunk* chunk) {
    if (sent++ == 3) return false;
    chunk->set_layer(0);
    *chunk->mutable_keys() = Floats(kKvHeads, 4, kHeadDim, sent);
    return true;
  }).status();
  ExpectStatus(s, StatusCode::kResourceExhausted, "--max_calibration_tokens");

  // The server says what its limits are.
  absl::StatusOr<pb::ServerInfo> info = c.GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->limits().max_chunk_tokens(), 40);
  EXPECT_EQ(info->limits().max_sequence_tokens(), 48);
  EXPECT_EQ(info->limits().max_attend_items(), 3);
  EXPECT_EQ(info->limits().max_q_len(), 4);
  EXPECT_EQ(info->limits().max_calibration_tokens(), 10);
  EXPECT_EQ(info->limits().max_layers(), service::RequestLimits().max_layers);
  EXPECT_EQ(info->max_message_bytes(), service::ServerOptions().max_message_bytes);

  service::ServerOptions bad;
  bad.limits.max_head_dim = 1024;
  bad.address = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<service::Server>> refused = service::Server::Start(bad);
  ExpectStatus(refused.status(), StatusCode::kInvalidArgument, "max_head_dim");
}

// A profile whose one token is larger than a page cannot get a session
// (its records would run past the page).
TEST_F(LimitsTest, ATokenLargerThanAPageIsRefused) {
  service::ServerOptions o;
  o.page_bytes = 4096;
  o.memory_bytes = 1 << 20;
  Start(o);
  Client& c = Quick();
  pb::ProfileSpec spec = ScoresSpec("wide", 1, 32, 128);  // 32 x 260 bytes at K8V8
  spec.mutable_budget()->set_key_avg_bits(8);
  spec.mutable_budget()->set_value_bits(8);
  ASSERT_TRUE(c.CreateProfile(spec).ok());
  pb::CreateSessionRequest req;
  req.set_session_id("w");
  req.set_profile_id("wide");
  ExpectStatus(c.CreateSession(req).status(), StatusCode::kResourceExhausted, "--page_bytes");
  absl::StatusOr<std::vector<pb::SessionInfo>> sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  EXPECT_TRUE(sessions->empty());
}

TEST_F(LimitsTest, CausalOffsetsAreBoundedAndCannotWrap) {
  Start();
  Client& c = Quick();
  Prepare(c, 40);
  auto attend = [&](std::optional<int64_t> offset, int q_len = 1) {
    pb::AttendRequest req = Query("s");
    *req.mutable_items(0)->mutable_queries() = Floats(kQHeads, q_len, kHeadDim, 9);
    if (offset.has_value()) req.mutable_items(0)->set_causal_offset(*offset);
    return c.Attend(req);
  };
  // Far below zero: no query sees a token, whatever the magnitude.
  for (int64_t offset : {std::numeric_limits<int64_t>::min(), -(int64_t{1} << 62), int64_t{-1}}) {
    absl::StatusOr<pb::AttendResponse> r = attend(offset, 1);
    ASSERT_TRUE(r.ok()) << offset << ": " << r.status();
    std::vector<float> lse = *client::TensorValues(r->results(0).lse());
    for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0) << offset << ": lse " << x;
  }
  // q_len 3 at -2: only the last query sees token 0.
  {
    absl::StatusOr<pb::AttendResponse> r = attend(-2, 3);
    ASSERT_TRUE(r.ok());
    std::vector<float> lse = *client::TensorValues(r->results(0).lse());
    for (int h = 0; h < kQHeads; ++h) {
      EXPECT_TRUE(std::isinf(lse[h * 3 + 0]));
      EXPECT_TRUE(std::isinf(lse[h * 3 + 1]));
      EXPECT_TRUE(std::isfinite(lse[h * 3 + 2]));
    }
  }
  // The last committed position is the largest offset; it equals an
  // unrestricted call.
  absl::StatusOr<pb::AttendResponse> last = attend(39, 1);
  absl::StatusOr<pb::AttendResponse> all = attend(std::nullopt, 1);
  ASSERT_TRUE(last.ok() && all.ok());
  EXPECT_EQ(last->results(0).output().data(), all->results(0).output().data());
  EXPECT_TRUE(attend(37, 3).ok());
  // Past the cache: a decoder that forgot to append its token hears so.
  for (auto [offset, q_len] : {std::pair<int64_t, int>{40, 1}, {38, 3}, {std::numeric_limits<int64_t>::max(), 1}}) {
    ExpectStatus(attend(offset, q_len).status(), StatusCode::kOutOfRange, "items[0].causal_offset");
  }
}

TEST_F(LimitsTest, UnknownEnumsAndFieldPathsFromTheMessageRoot) {
  Start();
  Client& c = Quick();
  pb::ProfileSpec spec = Spec("p");
  spec.mutable_budget()->set_score(static_cast<pb::ScoreKind>(7));
  ExpectStatus(c.CreateProfile(spec).status(), StatusCode::kInvalidArgument, "budget.score");

  spec = Spec("p");
  spec.mutable_scores()->mutable_heads(2)->set_scores(5, -1.0);
  ExpectStatus(c.CreateProfile(spec).status(), StatusCode::kInvalidArgument, "spec.scores.heads[2].scores[5]");
  spec = Spec("p");
  spec.mutable_scores()->mutable_heads(1)->add_scores(1.0);
  ExpectStatus(c.CreateProfile(spec).status(), StatusCode::kInvalidArgument, "spec.scores.heads[1].scores:");
  spec = Spec("p");
  spec.mutable_scores()->mutable_heads(3)->set_kv_head(kKvHeads);
  ExpectStatus(c.CreateProfile(spec).status(), StatusCode::kOutOfRange, "spec.scores.heads[3].kv_head");

  pb::ProfileSpec alloc = Spec("q");
  alloc.clear_scores();
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      pb::HeadAllocation* a = alloc.mutable_allocation()->add_heads();
      a->set_layer(l);
      a->set_kv_head(h);
      for (int b = 0; b < kHeadDim / 2; ++b) a->add_block_bits(3);
    }
  }
  EXPECT_TRUE(c.CreateProfile(alloc).ok());
  alloc.set_profile_id("r");
  alloc.mutable_allocation()->mutable_heads(1)->set_block_bits(4, 9);
  ExpectStatus(c.CreateProfile(alloc).status(), StatusCode::kInvalidArgument,
               "spec.allocation.heads[1].block_bits[4]");
}

TEST_F(LimitsTest, NormOverflowNamesKeysOrValues) {
  Start();
  Client& c = Quick();
  Prepare(c, 8);
  for (const char* field : {"keys", "values"}) {
    pb::AppendRequest m = Chunk("s", 0, 8, 1);
    std::vector<float> big(kKvHeads * kHeadDim, 2.0e4f);  // norm about 1.1e5
    pb::Tensor* t = std::string(field) == "keys" ? m.mutable_keys() : m.mutable_values();
    *t = client::MakeTensor(big, {kKvHeads, 1, kHeadDim});
    absl::Status s = RawAppend(c, {m});
    ExpectStatus(s, StatusCode::kInvalidArgument, absl::StrCat(field, ": "));
    EXPECT_TRUE(absl::StrContains(s.message(), "fp16 range")) << s;
  }
}

TEST_F(LimitsTest, ReadRefusesRepeatedLayers) {
  Start();
  Client& c = Quick();
  Prepare(c, 8);
  pb::ReadRequest req;
  req.set_session_id("s");
  req.set_format(pb::READ_FORMAT_FP32);
  req.add_layers(1);
  req.add_layers(1);
  ExpectStatus(c.Read(req, [](const pb::ReadResponse&) { return true; }), StatusCode::kInvalidArgument,
               "layers[1]: layer 1 given twice");
}

TEST_F(LimitsTest, BearerSchemeIsCaseInsensitiveAndHealthAnswersByServiceName) {
  const std::string tokens = dir_ + "/tokens";
  std::ofstream(tokens) << "token-alpha alpha\n";
  service::ServerOptions o;
  o.token_file = tokens;
  Start(o);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = pb::RopeKv::NewStub(channel);
  for (const char* scheme : {"Bearer", "bearer", "BEARER"}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat(scheme, " token-alpha"));
    pb::ListProfilesRequest req;
    pb::ListProfilesResponse resp;
    EXPECT_TRUE(stub->ListProfiles(&ctx, req, &resp).ok()) << scheme;
  }
  Client& c = Quick(absl::Seconds(20), "token-alpha");
  for (const char* name : {"", "ropekv.v1.RopeKv"}) {
    absl::StatusOr<bool> serving = c.Healthy(name);
    ASSERT_TRUE(serving.ok()) << "'" << name << "': " << serving.status();
    EXPECT_TRUE(*serving) << name;
  }
  EXPECT_EQ(c.Healthy("no.such.Service").status().code(), StatusCode::kNotFound);
}

// Each kind of call in flight when the server shuts down, a CreateProfile
// mid-calibration and one mid-build among them: Shutdown returns within
// the grace period (plus scheduling slack), every call ends with a status,
// and the open append's pages go back.
TEST_F(LimitsTest, ShutdownEndsEveryKindOfCallWithinTheGrace) {
  Start();
  Client& c = Quick(absl::Seconds(120));
  // Large enough that a read of it cannot sit in the flow-control windows.
  constexpr int64_t kTokens = 16384;
  Prepare(c, kTokens);
  const int64_t free_before = server_->pool().free_pages();

  // CreateProfile mid-calibration: the stream stays open.
  std::unique_ptr<grpc::ClientContext> cal_ctx = c.NewContext();
  pb::ProfileInfo cal_info;
  auto cal = c.stub().CreateProfile(cal_ctx.get(), &cal_info);
  {
    pb::CreateProfileRequest m;
    *m.mutable_spec() = CalibrationSpec("cal", kLayers, kQHeads, kKvHeads, kHeadDim);
    ASSERT_TRUE(cal->Write(m));
    pb::CreateProfileRequest chunk;
    chunk.mutable_calibration()->set_layer(0);
    *chunk.mutable_calibration()->mutable_keys() = Floats(kKvHeads, 16, kHeadDim, 5);
    ASSERT_TRUE(cal->Write(chunk));
  }
  // CreateProfile mid-build: 160 heads of d512 take tens of seconds.
  std::atomic<int> build_code{-1};
  std::thread build([&] {
    build_code = static_cast<int>(c.CreateProfile(ScoresSpec("big", 20, 8, 512)).status().code());
  });
  // Append mid-stream.
  std::unique_ptr<grpc::ClientContext> app_ctx = c.NewContext();
  pb::AppendResponse app_resp;
  auto app = c.stub().Append(app_ctx.get(), &app_resp);
  ASSERT_TRUE(app->Write(Chunk("s", 0, kTokens, 64)));
  // AttendStream open and idle after one step.
  absl::StatusOr<std::unique_ptr<client::AttendStream>> stream = c.OpenAttendStream();
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE((*stream)->Call(Query("s")).ok());
  // Read blocked on flow control: the client takes one message and waits.
  std::unique_ptr<grpc::ClientContext> read_ctx = c.NewContext();
  pb::ReadRequest rr;
  rr.set_session_id("s");
  rr.set_format(pb::READ_FORMAT_FP32);
  rr.set_chunk_tokens(1);
  auto reader = c.stub().Read(read_ctx.get(), rr);
  pb::ReadResponse first;
  ASSERT_TRUE(reader->Read(&first));
  absl::SleepFor(absl::Milliseconds(300));  // the build is running now
  EXPECT_EQ(build_code.load(), -1) << "the build finished before the shutdown; make it larger";

  const absl::Duration grace = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  server_->Shutdown(grace);
  server_->Wait();
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, grace + absl::Seconds(5)) << absl::FormatDuration(took);

  build.join();
  EXPECT_NE(build_code.load(), static_cast<int>(StatusCode::kOk));
  cal->WritesDone();
  EXPECT_FALSE(cal->Finish().ok());
  app->WritesDone();
  EXPECT_FALSE(app->Finish().ok());
  EXPECT_FALSE((*stream)->Finish().ok());
  pb::ReadResponse rest;
  while (reader->Read(&rest)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_EQ(server_->pool().free_pages(), free_before);
  EXPECT_EQ(server_->sessions().size(), 1);
}

}  // namespace
}  // namespace ropekv
