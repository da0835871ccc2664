// Three ropekv-server processes on loopback addressed as one cluster by
// ClusterClient: sessions spread by rendezvous hashing, a session created
// on the wrong server is refused with its owner named, a long sequence
// sharded over the servers attends like one session, and a killed server
// fails only its own sessions.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "client/cluster.h"
#include "gtest/gtest.h"
#include "proto/routing.h"
#include "tests/integration/server_fixture.h"
#include "tests/unit/test_util.h"

namespace ropekv {
namespace {

namespace pb = ::ropekv::v1;
using absl::StatusCode;
using client::Client;
using client::ClusterClient;
using testing::kHeadDim;
using testing::kKvHeads;
using testing::kLayers;
using testing::kQHeads;

// A free loopback port (the kernel's pick; released for the server).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// One ropekv-server child process.
class ServerProcess {
 public:
  ServerProcess(const std::string& self, const std::vector<std::string>& members,
                const std::string& log_path) {
    std::vector<std::string> args = {ROPEKV_SERVER_BINARY,
                                     "--address=" + self,
                                     "--backend=" + testing::TestBackend(),
                                     "--memory_bytes=67108864",
                                     "--page_bytes=65536",
                                     "--cluster_members=" + absl::StrJoin(members, ","),
                                     "--cluster_self=" + self};
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // The server must not outlive the test, also when the test is killed
      // (ctest's timeout): SIGKILL when the parent dies, and at once if it
      // already has.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(log, 2);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~ServerProcess() { Kill(SIGTERM); }
  void Kill(int signal) {
    if (pid_ <= 0) return;
    kill(pid_, signal);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / absl::StrCat("ropekv-cluster-", getpid())).string();
    std::filesystem::create_directories(dir_);
    for (int i = 0; i < 3; ++i) members_.push_back(absl::StrCat("127.0.0.1:", FreePort()));
    for (int i = 0; i < 3; ++i) {
      servers_.push_back(std::make_unique<ServerProcess>(members_[i], members_,
                                                         absl::StrCat(dir_, "/server-", i, ".log")));
    }
    client::ClusterOptions o;
    o.members = members_;
    o.client.upload_dtype = pb::DTYPE_FP32;
    o.client.deadline = absl::Seconds(10);
    cluster_ = *ClusterClient::Connect(o);
    for (size_t i = 0; i < members_.size(); ++i) {
      ASSERT_TRUE(cluster_->member(i).WaitForReady(absl::Seconds(20)).ok())
          << "server " << i << " did not start; see " << dir_;
    }
    ASSERT_TRUE(cluster_->CreateProfile(testing::Spec("p")).ok());
  }
  void TearDown() override {
    cluster_.reset();
    servers_.clear();
    std::filesystem::remove_all(dir_);
  }
  void AppendTo(const std::string& id, int64_t tokens, uint32_t seed) {
    std::vector<float> k = testing::RandomNormal(kKvHeads * tokens * kHeadDim, seed);
    std::vector<float> v = testing::RandomNormal(kKvHeads * tokens * kHeadDim, seed + 1);
    std::vector<client::LayerKv> layers;
    for (int l = 0; l < kLayers; ++l) layers.push_back({l, 0, kKvHeads, tokens, kHeadDim, k, v});
    ASSERT_TRUE(cluster_->Append(id, layers).ok()) << id;
  }
  pb::AttendItem Item(const std::string& id, int layer, int q_len, uint32_t seed) {
    pb::AttendItem item;
    item.set_session_id(id);
    item.set_layer(layer);
    *item.mutable_queries() = client::MakeTensor(
        testing::RandomNormal(kQHeads * q_len * kHeadDim, seed), {kQHeads, q_len, kHeadDim});
    return item;
  }

  std::string dir_;
  std::vector<std::string> members_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::unique_ptr<ClusterClient> cluster_;
};

TEST_F(ClusterTest, SessionsSpreadAndEachLivesOnItsOwner) {
  absl::StatusOr<pb::ServerInfo> info = cluster_->member(1).GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->cluster_self(), members_[1]);
  EXPECT_EQ(info->cluster_members_size(), 3);
  const int kSessions = 30;
  for (int i = 0; i < kSessions; ++i) {
    pb::CreateSessionRequest req;
    req.set_session_id(absl::StrCat("session-", i));
    req.set_profile_id("p");
    ASSERT_TRUE(cluster_->CreateSession(req).ok()) << i;
    AppendTo(req.session_id(), 20 + i, i);
  }
  int total = 0;
  for (size_t m = 0; m < members_.size(); ++m) {
    absl::StatusOr<std::vector<pb::SessionInfo>> here = cluster_->member(m).ListSessions();
    ASSERT_TRUE(here.ok());
    EXPECT_GE(here->size(), 3u) << "member " << m << " got too few of 30 sessions";
    for (const pb::SessionInfo& s : *here) EXPECT_EQ(cluster_->OwnerOf(s.session_id()), m);
    total += static_cast<int>(here->size());
  }
  EXPECT_EQ(total, kSessions);
  EXPECT_EQ(cluster_->ListSessions()->size(), static_cast<size_t>(kSessions));

  // One request over every session: split per member, results in order,
  // equal to each session asked on its own.
  pb::AttendRequest all;
  for (int i = 0; i < kSessions; ++i) *all.add_items() = Item(absl::StrCat("session-", i), i % kLayers, 2, i);
  absl::StatusOr<pb::AttendResponse> together = cluster_->Attend(all);
  ASSERT_TRUE(together.ok()) << together.status();
  ASSERT_EQ(together->results_size(), kSessions);
  for (int i = 0; i < kSessions; ++i) {
    pb::AttendRequest one;
    *one.add_items() = all.items(i);
    absl::StatusOr<pb::AttendResponse> alone = cluster_->ForSession(all.items(i).session_id()).Attend(one);
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ(together->results(i).output().data(), alone->results(0).output().data()) << i;
  }
}

TEST_F(ClusterTest, WrongServerRefusesAndNamesTheOwner) {
  const std::string id = "misplaced";
  const size_t owner = cluster_->OwnerOf(id);
  const size_t wrong = (owner + 1) % members_.size();
  std::unique_ptr<grpc::ClientContext> ctx = cluster_->member(wrong).NewContext();
  pb::CreateSessionRequest req;
  req.set_session_id(id);
  req.set_profile_id("p");
  pb::SessionInfo info;
  const grpc::Status s = cluster_->member(wrong).stub().CreateSession(ctx.get(), req, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(members_[owner]), std::string::npos) << s.error_message();
  auto named = ctx->GetServerTrailingMetadata().find(routing::kOwnerMetadataKey);
  ASSERT_NE(named, ctx->GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(named->second.data(), named->second.size()), members_[owner]);
  EXPECT_TRUE(cluster_->member(wrong).ListSessions()->empty());  // nothing created
  // An id-less session gets an id its server owns.
  req.clear_session_id();
  absl::StatusOr<pb::SessionInfo> generated = cluster_->member(wrong).CreateSession(req);
  ASSERT_TRUE(generated.ok()) << generated.status();
  EXPECT_EQ(cluster_->OwnerOf(generated->session_id()), wrong);
}

TEST_F(ClusterTest, ShardedSequenceAttendsLikeOneSession) {
  const int64_t kShard = 96, kTokens = 3 * kShard - 17;  // the last shard partly filled
  absl::StatusOr<client::ShardedSession> sharded =
      cluster_->CreateShardedSession("long", "p", 3, kShard);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  std::map<size_t, int> owners;
  for (const std::string& id : sharded->shard_session_ids) ++owners[cluster_->OwnerOf(id)];
  EXPECT_EQ(owners.size(), 3u) << "three shards on three members";
  // The reference: the same tokens in one session, in two appends.
  pb::CreateSessionRequest req;
  req.set_session_id("whole");
  req.set_profile_id("p");
  ASSERT_TRUE(cluster_->CreateSession(req).ok());
  const std::vector<float> k = testing::RandomNormal(kKvHeads * kTokens * kHeadDim, 7);
  const std::vector<float> v = testing::RandomNormal(kKvHeads * kTokens * kHeadDim, 8);
  std::vector<client::LayerKv> layers;
  for (int l = 0; l < kLayers; ++l) layers.push_back({l, 0, kKvHeads, kTokens, kHeadDim, k, v});
  ASSERT_TRUE(cluster_->AppendSharded(*sharded, layers).ok());
  ASSERT_TRUE(cluster_->Append("whole", layers).ok());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(cluster_->GetSession(sharded->shard_session_ids[i])->layer_tokens(1),
              static_cast<uint64_t>(std::min<int64_t>(kShard, kTokens - i * kShard)));
  }
  // Full attention, decode-style causal, and a causal block that straddles
  // the boundary between shards 0 and 1.
  struct Case {
    int q_len;
    std::optional<int64_t> causal;
  };
  for (const Case& c : {Case{1, std::nullopt}, Case{1, kTokens - 1}, Case{4, kShard - 2}, Case{3, 10}}) {
    for (int layer = 0; layer < kLayers; ++layer) {
      pb::AttendItem item = Item("whole", layer, c.q_len, 40 + layer);
      if (c.causal) item.set_causal_offset(*c.causal);
      pb::AttendRequest one;
      *one.add_items() = item;
      absl::StatusOr<pb::AttendResponse> want = cluster_->Attend(one);
      absl::StatusOr<pb::AttendResult> got = cluster_->AttendSharded(*sharded, item);
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_TRUE(got.ok()) << got.status();
      const std::vector<float> o = *client::TensorValues(got->output());
      const std::vector<float> w = *client::TensorValues(want->results(0).output());
      const std::vector<float> lo = *client::TensorValues(got->lse());
      const std::vector<float> lw = *client::TensorValues(want->results(0).lse());
      EXPECT_LT(testing::RelativeError(o, w), 1e-5) << "q_len " << c.q_len << " layer " << layer;
      ASSERT_EQ(lo.size(), lw.size());
      for (size_t i = 0; i < lo.size(); ++i) EXPECT_NEAR(lo[i], lw[i], 1e-4);
    }
  }
  EXPECT_TRUE(cluster_->DropShardedSession(*sharded).ok());
}

TEST_F(ClusterTest, AKilledServerFailsOnlyItsOwnSessions) {
  const int kSessions = 24;
  std::vector<std::string> ids;
  for (int i = 0; i < kSessions; ++i) {
    ids.push_back(absl::StrCat("k", i));
    pb::CreateSessionRequest req;
    req.set_session_id(ids.back());
    req.set_profile_id("p");
    ASSERT_TRUE(cluster_->CreateSession(req).ok());
    AppendTo(ids.back(), 30, i);
  }
  const size_t victim = 2;
  servers_[victim]->Kill(SIGKILL);
  int failed = 0, served = 0;
  for (const std::string& id : ids) {
    pb::AttendRequest one;
    *one.add_items() = Item(id, 0, 1, 3);
    absl::StatusOr<pb::AttendResponse> r = cluster_->Attend(one);
    if (cluster_->OwnerOf(id) == victim) {
      EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << id << ": " << r.status();
      ++failed;
    } else {
      EXPECT_TRUE(r.ok()) << id << ": " << r.status();
      const std::vector<float> kv = testing::RandomNormal(kKvHeads * kHeadDim, 5);
      std::vector<client::LayerKv> more = {{0, 30, kKvHeads, 1, kHeadDim, kv, kv}};
      EXPECT_TRUE(cluster_->Append(id, more).ok()) << id;
      ++served;
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(served, 0);
}

TEST(ClusterClientTest, MembersFromADnsNameAndBadOptions) {
  client::ClusterOptions o;
  o.dns_name = "localhost:50999";
  absl::StatusOr<std::unique_ptr<ClusterClient>> c = ClusterClient::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<std::string>& m = (*c)->members();
  EXPECT_NE(std::find(m.begin(), m.end(), "127.0.0.1:50999"), m.end()) << absl::StrJoin(m, ",");
  EXPECT_TRUE(std::is_sorted(m.begin(), m.end()));
  o.dns_name = "localhost";  // no port
  EXPECT_EQ(ClusterClient::Connect(o).status().code(), StatusCode::kInvalidArgument);
  o.dns_name = "no-such-host.invalid:50051";
  EXPECT_EQ(ClusterClient::Connect(o).status().code(), StatusCode::kUnavailable);
  o.dns_name.clear();
  EXPECT_EQ(ClusterClient::Connect(o).status().code(), StatusCode::kInvalidArgument);
  o.members = {"a:1", "a:1"};
  EXPECT_EQ(ClusterClient::Connect(o).status().code(), StatusCode::kInvalidArgument);
  // Sessions need an id: the owner of an id-less one is unknown.
  o.members = {"127.0.0.1:1"};
  pb::CreateSessionRequest req;
  req.set_profile_id("p");
  EXPECT_EQ((*ClusterClient::Connect(o))->CreateSession(req).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv
