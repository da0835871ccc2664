// Bad input, atomicity, capacity and tenants: every failure gets its
// specific code, changes nothing, and leaves the server serving.
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "service/page_pool.h"
#include "service/server.h"
#include "tests/unit/test_util.h"
#include "tests/integration/server_fixture.h"

namespace ropekv {
namespace {

namespace fs = std::filesystem;
namespace pb = ::ropekv::v1;
using absl::StatusCode;
using client::Client;
using testing::Floats;
using testing::kHeadDim;
using testing::kKvHeads;
using testing::kLayers;
using testing::kQHeads;
using testing::Spec;

class ErrorsTest : public testing::ServerFixture {};

TEST_F(ErrorsTest, BadInputMatrixGetsSpecificCodesAndChangesNothing) {
  Start();
  Client& c = C();
  Prepare(c);
  absl::StatusOr<pb::AttendResponse> before = c.Attend(Query("s"));
  ASSERT_TRUE(before.ok());
  const int64_t free_before = server_->pool().free_pages();

  struct Case {
    const char* what;
    std::vector<pb::AppendRequest> msgs;
    StatusCode code;
    const char* in_message;
  };
  std::vector<Case> cases;
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    m.mutable_keys()->set_dtype(pb::DTYPE_UNSPECIFIED);
    cases.push_back({"dtype", {m}, StatusCode::kInvalidArgument, "keys.dtype"});
  }
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    *m.mutable_keys() = Floats(kKvHeads, 4, kHeadDim + 2, 1);
    cases.push_back({"head_dim", {m}, StatusCode::kInvalidArgument, "keys.shape"});
  }
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    *m.mutable_keys() = Floats(kKvHeads + 1, 4, kHeadDim, 1);
    cases.push_back({"heads", {m}, StatusCode::kInvalidArgument, "keys.shape"});
  }
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    *m.mutable_values() = Floats(kKvHeads, 5, kHeadDim, 1);
    cases.push_back({"values tokens", {m}, StatusCode::kInvalidArgument, "values.shape"});
  }
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    m.mutable_keys()->mutable_data()->resize(10);
    cases.push_back({"bytes", {m}, StatusCode::kInvalidArgument, "keys.data"});
  }
  cases.push_back({"layer", {Chunk("s", kLayers, 40, 4)}, StatusCode::kOutOfRange, "layer"});
  cases.push_back({"token range", {Chunk("s", 0, 39, 4)}, StatusCode::kFailedPrecondition, "token_start"});
  cases.push_back({"gap", {Chunk("s", 0, 41, 4)}, StatusCode::kFailedPrecondition, "token_start"});
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    std::vector<float> k = testing::RandomNormal(kKvHeads * 4 * kHeadDim, 3);
    k[17] = NAN;
    *m.mutable_keys() = client::MakeTensor(k, {kKvHeads, 4, kHeadDim});
    cases.push_back({"nan", {m}, StatusCode::kInvalidArgument, "finite"});
  }
  {
    pb::AppendRequest m = Chunk("s", 1, 40, 4);
    std::vector<float> v = testing::RandomNormal(kKvHeads * 4 * kHeadDim, 3);
    v[5] = INFINITY;
    *m.mutable_values() = client::MakeTensor(v, {kKvHeads, 4, kHeadDim}, pb::DTYPE_FP16);
    // Valid first chunk, bad second: the first must not stick either.
    cases.push_back({"inf after a good chunk", {Chunk("s", 0, 40, 4), m},
                     StatusCode::kInvalidArgument, "finite"});
  }
  cases.push_back({"unknown session", {Chunk("nope", 0, 0, 4)}, StatusCode::kNotFound, "not found"});
  cases.push_back({"bad id", {Chunk("a/b", 0, 0, 4)}, StatusCode::kInvalidArgument, "session_id"});
  {
    pb::AppendRequest second = Chunk("other", 0, 44, 4);
    cases.push_back({"session switch", {Chunk("s", 0, 40, 4), second},
                     StatusCode::kInvalidArgument, "session_id"});
  }
  cases.push_back({"empty stream", {}, StatusCode::kInvalidArgument, "at least one"});
  {
    pb::AppendRequest m = Chunk("s", 0, 40, 4);
    *m.mutable_keys() = Floats(kKvHeads, 0, kHeadDim, 1);
    *m.mutable_values() = Floats(kKvHeads, 0, kHeadDim, 1);
    cases.push_back({"zero tokens", {m}, StatusCode::kInvalidArgument, "at least one token"});
  }
  for (const Case& k : cases) {
    absl::Status s = RawAppend(c, k.msgs);
    EXPECT_EQ(s.code(), k.code) << k.what << ": " << s;
    EXPECT_NE(s.message().find(k.in_message), std::string::npos) << k.what << ": " << s;
  }

  // Attend errors.
  pb::AttendRequest r = Query("s", kLayers);
  EXPECT_EQ(c.Attend(r).status().code(), StatusCode::kOutOfRange);
  r = Query("s");
  *r.mutable_items(0)->mutable_queries() = Floats(kQHeads - 1, 1, kHeadDim, 1);
  EXPECT_EQ(c.Attend(r).status().code(), StatusCode::kInvalidArgument);
  r = Query("s");
  *r.mutable_items(0)->mutable_queries() = Floats(kQHeads, 0, kHeadDim, 1);
  EXPECT_EQ(c.Attend(r).status().code(), StatusCode::kInvalidArgument);
  r = Query("s");
  r.set_output_dtype(pb::DTYPE_BF16);
  EXPECT_EQ(c.Attend(r).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Attend(pb::AttendRequest()).status().code(), StatusCode::kInvalidArgument);
  absl::Status missing = c.Attend(Query("ghost")).status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("items[0]"), std::string::npos) << missing;
  // Read errors.
  pb::ReadRequest read;
  read.set_session_id("s");
  EXPECT_EQ(c.Read(read, [](const pb::ReadResponse&) { return true; }).code(),
            StatusCode::kInvalidArgument);  // no format
  read.set_format(pb::READ_FORMAT_FP16);
  read.set_token_end(41);
  EXPECT_EQ(c.Read(read, [](const pb::ReadResponse&) { return true; }).code(),
            StatusCode::kOutOfRange);
  // Session and profile errors.
  pb::CreateSessionRequest cs;
  cs.set_session_id("s");
  cs.set_profile_id("p");
  EXPECT_EQ(c.CreateSession(cs).status().code(), StatusCode::kAlreadyExists);
  cs.set_session_id("t");
  cs.set_profile_id("missing");
  EXPECT_EQ(c.CreateSession(cs).status().code(), StatusCode::kNotFound);
  cs.set_profile_id("p");
  cs.set_window_tokens(60000);
  cs.set_sink_tokens(6000);
  EXPECT_EQ(c.CreateSession(cs).status().code(), StatusCode::kInvalidArgument);
  pb::ProfileSpec bad = Spec("q");
  bad.mutable_geometry()->set_head_dim(33);
  absl::Status s = c.CreateProfile(bad).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), std::string::npos) << s;
  bad = Spec("q");
  bad.mutable_budget()->set_key_avg_bits(9);
  EXPECT_EQ(c.CreateProfile(bad).status().code(), StatusCode::kInvalidArgument);
  bad = Spec("q");
  bad.mutable_scores()->mutable_heads(0)->set_scores(0, NAN);
  EXPECT_EQ(c.CreateProfile(bad).status().code(), StatusCode::kInvalidArgument);
  bad = Spec("q");
  bad.mutable_calibration();
  EXPECT_EQ(c.CreateProfile(bad).status().code(), StatusCode::kFailedPrecondition);  // no samples
  EXPECT_EQ(c.GetProfile("q").status().code(), StatusCode::kNotFound);

  // Nothing changed: same length, same attention, same pages; still serving.
  absl::StatusOr<pb::SessionInfo> info = c.GetSession("s");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layer_tokens(0), 40u);
  EXPECT_EQ(info->layer_tokens(1), 40u);
  absl::StatusOr<pb::AttendResponse> after = c.Attend(Query("s"));
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->results(0).output().data(), before->results(0).output().data());
  ExpectFreePages(free_before);
  EXPECT_TRUE(*c.Healthy());
}

TEST_F(ErrorsTest, OversizedMessageIsResourceExhausted) {
  service::ServerOptions o;
  o.max_message_bytes = 1 << 20;
  Start(o);
  Client& c = C();
  Prepare(c, 8);
  const int64_t tokens = (2 << 20) / (kKvHeads * kHeadDim * 4);  // 2 MiB of keys
  absl::Status s = RawAppend(c, {Chunk("s", 0, 8, tokens)});
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(c.GetSession("s")->layer_tokens(0), 8u);
}

TEST_F(ErrorsTest, AppendIsAtomicUnderCancellationAndLateFailure) {
  Start();
  Client& c = C();
  Prepare(c, 40);
  const int64_t free_before = server_->pool().free_pages();
  absl::StatusOr<pb::AttendResponse> before = c.Attend(Query("s", 1));
  // Enough tokens to need new pages, then a cancel before the stream ends.
  std::vector<pb::AppendRequest> msgs;
  for (int i = 0; i < 5; ++i) msgs.push_back(Chunk("s", 1, 40 + 2000 * i, 2000, i));
  absl::Status s = RawAppend(c, msgs, /*cancel_after=*/true);
  EXPECT_EQ(s.code(), StatusCode::kCancelled) << s;
  ExpectFreePages(free_before);
  EXPECT_EQ(c.GetSession("s")->layer_tokens(1), 40u);
  // A deadline that expires mid-stream.
  {
    std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    pb::AppendResponse resp;
    auto writer = c.stub().Append(ctx.get(), &resp);
    writer->Write(Chunk("s", 1, 40, 100));
    absl::SleepFor(absl::Milliseconds(600));
    writer->Write(Chunk("s", 1, 140, 100));
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  ExpectFreePages(free_before);
  EXPECT_EQ(c.GetSession("s")->layer_tokens(1), 40u);
  // Failing on the last chunk.
  msgs.resize(3);
  pb::AppendRequest last = Chunk("s", 0, 40, 10);
  last.set_token_start(41);
  msgs.push_back(last);
  s = RawAppend(c, msgs);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
  ExpectFreePages(free_before);
  EXPECT_EQ(c.GetSession("s")->layer_tokens(1), 40u);
  EXPECT_EQ(c.Attend(Query("s", 1))->results(0).output().data(),
            before->results(0).output().data());
  // And a good append still works afterwards.
  Append(c, "s", 10, 40);
  EXPECT_EQ(c.GetSession("s")->layer_tokens(0), 50u);
}

TEST_F(ErrorsTest, CapacityExhaustionAndDropReturnEveryPage) {
  service::ServerOptions o;
  o.memory_bytes = 64 * 4096;
  o.page_bytes = 4096;
  Start(o);
  Client& c = C();
  ASSERT_TRUE(c.CreateProfile(Spec("p")).ok());
  const int64_t total = server_->pool().total_pages();
  EXPECT_EQ(total, 64);
  int sessions = 0;
  absl::Status last;
  for (; sessions < 100; ++sessions) {
    pb::CreateSessionRequest req;
    req.set_session_id(absl::StrCat("s", sessions));
    req.set_profile_id("p");
    ASSERT_TRUE(c.CreateSession(req).ok());
    std::vector<float> k = testing::RandomNormal(kKvHeads * 300 * kHeadDim, sessions);
    std::vector<client::LayerKv> layers;
    for (int l = 0; l < kLayers; ++l) layers.push_back({l, 0, kKvHeads, 300, kHeadDim, k, k});
    last = c.Append(absl::StrCat("s", sessions), layers).status();
    if (!last.ok()) break;
  }
  EXPECT_EQ(last.code(), StatusCode::kResourceExhausted) << last;
  EXPECT_GT(sessions, 0);
  EXPECT_EQ(c.GetSession(absl::StrCat("s", sessions))->layer_tokens(0), 0u);  // nothing stuck
  for (int i = 0; i <= sessions; ++i) ASSERT_TRUE(c.DropSession(absl::StrCat("s", i)).ok());
  ExpectFreePages(total);
  EXPECT_EQ(c.DropSession("s0").code(), StatusCode::kNotFound);
}

TEST_F(ErrorsTest, TenantsAreIsolatedAndTokensRequired) {
  const std::string tokens = (fs::path(dir_) / "tokens").string();
  {
    std::ofstream f(tokens);
    f << "# token tenant\nalpha-token-123 alpha\nbeta-token-4567 beta\n";
  }
  service::ServerOptions o;
  o.token_file = tokens;
  Start(o);
  Client& alpha = C("alpha-token-123");
  Client& beta = C("beta-token-4567");
  Prepare(alpha);
  EXPECT_EQ(C().ListProfiles().status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(C("wrong-token-000").GetSession("s").status().code(), StatusCode::kUnauthenticated);
  // The diagnostics need a token too (and Echo is off unless enabled).
  EXPECT_EQ(C().GetServerInfo().status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(C().Echo(10, 10).code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(C().EchoStream(10, 2).code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(alpha.Echo(10, 10).code(), StatusCode::kUnimplemented);
  EXPECT_EQ(alpha.EchoStream(10, 2).code(), StatusCode::kUnimplemented);
  absl::StatusOr<pb::ServerInfo> info = alpha.GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->backend(), server_->backend_name());
  EXPECT_FALSE(info->device().empty());
  EXPECT_EQ(info->total_pages(), server_->pool().total_pages());
  EXPECT_FALSE(info->echo_enabled());
  // Beta sees none of alpha's resources, through any call.
  EXPECT_EQ(beta.GetProfile("p").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(beta.ListProfiles()->empty());
  EXPECT_TRUE(beta.ListSessions()->empty());
  EXPECT_EQ(beta.GetSession("s").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(beta.DropSession("s").code(), StatusCode::kNotFound);
  EXPECT_EQ(beta.DeleteProfile("p").code(), StatusCode::kNotFound);
  EXPECT_EQ(beta.Attend(Query("s")).status().code(), StatusCode::kNotFound);
  {
    absl::StatusOr<std::unique_ptr<client::AttendStream>> stream = beta.OpenAttendStream();
    ASSERT_TRUE(stream.ok());
    EXPECT_EQ((*stream)->Call(Query("s")).status().code(), StatusCode::kNotFound);
  }
  EXPECT_EQ(RawAppend(beta, {Chunk("s", 0, 40, 4)}).code(), StatusCode::kNotFound);
  pb::ReadRequest read;
  read.set_session_id("s");
  read.set_format(pb::READ_FORMAT_FP32);
  EXPECT_EQ(beta.Read(read, [](const pb::ReadResponse&) { return true; }).code(),
            StatusCode::kNotFound);
  pb::CreateSessionRequest cs;
  cs.set_session_id("x");
  cs.set_profile_id("p");
  EXPECT_EQ(beta.CreateSession(cs).status().code(), StatusCode::kNotFound);
  // The same ids are free for beta to use.
  ASSERT_TRUE(beta.CreateProfile(Spec("p")).ok());
  cs.set_session_id("s");
  ASSERT_TRUE(beta.CreateSession(cs).ok());
  EXPECT_EQ(alpha.GetSession("s")->layer_tokens(0), 40u);
  EXPECT_EQ(beta.GetSession("s")->layer_tokens(0), 0u);
}

TEST_F(ErrorsTest, CorruptProfileFileIsReportedAndOthersServed) {
  Start();
  Client& c = C();
  ASSERT_TRUE(c.CreateProfile(Spec("good")).ok());
  ASSERT_TRUE(c.CreateProfile(Spec("bad")).ok());
  clients_.clear();
  server_.reset();
  const fs::path bad = fs::path(dir_) / "profiles" / "default" / "bad.profile";
  fs::resize_file(bad, fs::file_size(bad) / 2);
  Start();
  Client& c2 = C();
  absl::StatusOr<pb::ProfileInfo> info = c2.GetProfile("bad");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->available());
  EXPECT_NE(info->unavailable_reason().find("truncated"), std::string::npos) << info->unavailable_reason();
  pb::CreateSessionRequest cs;
  cs.set_profile_id("bad");
  EXPECT_EQ(c2.CreateSession(cs).status().code(), StatusCode::kFailedPrecondition);
  cs.set_profile_id("good");
  EXPECT_TRUE(c2.CreateSession(cs).ok());
}

TEST_F(ErrorsTest, IdleSessionsExpire) {
  Start();
  Client& c = C();
  ASSERT_TRUE(c.CreateProfile(Spec("p")).ok());
  pb::CreateSessionRequest cs;
  cs.set_session_id("short");
  cs.set_profile_id("p");
  cs.set_idle_ttl_seconds(1);
  ASSERT_TRUE(c.CreateSession(cs).ok());
  cs.set_session_id("forever");
  cs.set_idle_ttl_seconds(0);
  ASSERT_TRUE(c.CreateSession(cs).ok());
  absl::SleepFor(absl::Milliseconds(2600));
  EXPECT_EQ(c.GetSession("short").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(c.GetSession("forever").ok());
}

TEST_F(ErrorsTest, TlsServesTlsClientsOnly) {
  const std::string dir = ROPEKV_TESTDATA_DIR;
  service::ServerOptions o;
  o.tls_cert_file = dir + "/test-server.crt";
  o.tls_key_file = dir + "/test-server.key";
  Start(o);
  std::ifstream in(o.tls_cert_file);
  client::ClientOptions co;
  co.target = absl::StrCat("localhost:", server_->port());
  co.tls = true;
  co.tls_root_certs.assign(std::istreambuf_iterator<char>(in), {});
  std::unique_ptr<Client> tls = *Client::Connect(co);
  ASSERT_TRUE(tls->CreateProfile(Spec("p")).ok());
  EXPECT_TRUE(*tls->Healthy());
  co.deadline = absl::Seconds(2);
  co.tls = false;  // plaintext against a TLS port fails, it is not served
  std::unique_ptr<Client> plain = *Client::Connect(co);
  EXPECT_EQ(plain->ListProfiles().status().code(), StatusCode::kUnavailable);
  co.tls = true;
  co.tls_root_certs.clear();  // a client that does not trust the certificate
  std::unique_ptr<Client> untrusting = *Client::Connect(co);
  EXPECT_EQ(untrusting->ListProfiles().status().code(), StatusCode::kUnavailable);
  // A non-loopback address is allowed with TLS.
  service::ServerOptions remote = o;
  remote.address = "0.0.0.0:0";
  remote.data_dir = dir_ + "/remote";
  EXPECT_TRUE(service::Server::Start(remote).ok());
}

TEST_F(ErrorsTest, MutualTlsServesOnlyClientsWithACertificateTheCaSigned) {
  const std::string dir = ROPEKV_TESTDATA_DIR;
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  service::ServerOptions o;
  o.tls_cert_file = dir + "/test-server.crt";
  o.tls_key_file = dir + "/test-server.key";
  o.tls_client_ca_file = dir + "/test-client-ca.crt";
  Start(o);
  client::ClientOptions co;
  co.target = absl::StrCat("localhost:", server_->port());
  co.tls = true;
  co.tls_root_certs = read(o.tls_cert_file);
  co.deadline = absl::Seconds(5);
  auto connect = [&](const std::string& cert, const std::string& key) {
    client::ClientOptions with = co;
    if (!cert.empty()) {
      with.tls_cert_chain = read(dir + "/" + cert);
      with.tls_private_key = read(dir + "/" + key);
    }
    return *Client::Connect(with);
  };
  std::unique_ptr<Client> signed_client = connect("test-client.crt", "test-client.key");
  absl::StatusOr<pb::ProfileInfo> created = signed_client->CreateProfile(Spec("p"));
  EXPECT_TRUE(created.ok()) << created.status();
  // No certificate, or one the CA did not sign: the handshake fails.
  EXPECT_EQ(connect("", "")->ListProfiles().status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(connect("test-rogue-client.crt", "test-rogue-client.key")->ListProfiles().status().code(),
            StatusCode::kUnavailable);
  // Mutual TLS without TLS is a configuration error, named.
  service::ServerOptions bad;
  bad.address = "127.0.0.1:0";
  bad.tls_client_ca_file = o.tls_client_ca_file;
  absl::StatusOr<std::unique_ptr<service::Server>> refused = service::Server::Start(bad);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("tls_client_ca"), std::string::npos) << refused.status();
}

TEST_F(ErrorsTest, NonLoopbackWithoutTlsIsRefused) {
  service::ServerOptions o;
  o.address = "0.0.0.0:0";
  absl::StatusOr<std::unique_ptr<service::Server>> s = service::Server::Start(o);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("TLS"), std::string::npos);
}

}  // namespace
}  // namespace ropekv
