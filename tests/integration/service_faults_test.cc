// Faults with a real server and client on loopback: clients that go away
// mid-stream, deadlines that expire inside each RPC, a shutdown with streams
// open, and page allocation failing at every step of an append. After each,
// no session is half-appended, every page comes back, and the server keeps
// serving.
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
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

class FaultsTest : public testing::ServerFixture {
 protected:
  // Small pages so a few hundred tokens take several of them.
  void StartSmallPages() {
    service::ServerOptions o;
    o.memory_bytes = 2048 * 4096;
    o.page_bytes = 4096;
    Start(o);
  }
  absl::Status FromGrpc(const grpc::Status& s) {
    return absl::Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  }
  pb::ReadRequest ReadAll(const std::string& id, uint32_t chunk_tokens) {
    pb::ReadRequest r;
    r.set_session_id(id);
    r.set_format(pb::READ_FORMAT_FP32);
    r.set_chunk_tokens(chunk_tokens);
    return r;
  }
  // Everything a fault must leave as it was: lengths, attention output, and
  // (after dropping the session) every page back in the pool.
  void ExpectUnchangedThenDrop(Client& c, int64_t tokens, const pb::AttendResponse& before) {
    absl::StatusOr<pb::SessionInfo> info = c.GetSession("s");
    ASSERT_TRUE(info.ok()) << info.status();
    for (int l = 0; l < kLayers; ++l) EXPECT_EQ(info->layer_tokens(l), static_cast<uint64_t>(tokens));
    absl::StatusOr<pb::AttendResponse> after = c.Attend(Query("s", 1));
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->results(0).output().data(), before.results(0).output().data());
    ASSERT_TRUE(c.DropSession("s").ok());
    ExpectFreePages(server_->pool().total_pages());
  }
};

TEST_F(FaultsTest, ClientsThatGoAwayMidStreamLeaveNothingBehind) {
  StartSmallPages();
  Client& c = C();
  Prepare(c, 600);
  absl::StatusOr<pb::AttendResponse> before = c.Attend(Query("s", 1));
  ASSERT_TRUE(before.ok()) << before.status();

  // Mid-read: the consumer stops after the first of many chunks.
  int messages = 0;
  absl::Status read = c.Read(ReadAll("s", 16), [&](const pb::ReadResponse&) { return ++messages < 2; });
  EXPECT_EQ(read.code(), StatusCode::kCancelled) << read;
  EXPECT_EQ(messages, 2);

  // Mid-attend-stream: requests written, responses never read, then gone.
  for (int answered : {0, 1}) {
    std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
    auto stream = c.stub().AttendStream(ctx.get());
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(stream->Write(Query("s", i % kLayers)));
    pb::AttendResponse r;
    if (answered) {
      ASSERT_TRUE(stream->Read(&r));
    }
    ctx->TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Mid-append, between messages that each need new pages.
  {
    std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
    pb::AppendResponse resp;
    auto writer = c.stub().Append(ctx.get(), &resp);
    ASSERT_TRUE(writer->Write(Chunk("s", 0, 600, 300)));
    ASSERT_TRUE(writer->Write(Chunk("s", 1, 600, 300)));
    ctx->TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // A client library stream dropped without Finish.
  {
    absl::StatusOr<std::unique_ptr<client::AttendStream>> stream = c.OpenAttendStream();
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE((*stream)->Call(Query("s")).ok());
  }
  ExpectUnchangedThenDrop(c, 600, *before);
}

TEST_F(FaultsTest, DeadlinesExpiringInsideEachRpcChangeNothing) {
  StartSmallPages();
  Client& c = C();
  Prepare(c, 600);
  absl::StatusOr<pb::AttendResponse> before = c.Attend(Query("s", 1));
  ASSERT_TRUE(before.ok()) << before.status();
  auto deadline_in = [&](int ms) {
    std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
    return ctx;
  };

  // Read: a slow consumer outlives the deadline between chunks.
  {
    auto ctx = deadline_in(300);
    auto reader = c.stub().Read(ctx.get(), ReadAll("s", 16));
    pb::ReadResponse r;
    int got = 0;
    while (reader->Read(&r)) {
      ++got;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_GE(got, 1);
  }
  // AttendStream: one answer, then the deadline passes before the next.
  {
    auto ctx = deadline_in(300);
    auto stream = c.stub().AttendStream(ctx.get());
    pb::AttendResponse r;
    ASSERT_TRUE(stream->Write(Query("s")));
    ASSERT_TRUE(stream->Read(&r));
    absl::SleepFor(absl::Milliseconds(500));
    stream->Write(Query("s"));
    EXPECT_FALSE(stream->Read(&r));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // Attend: a large batch whose deadline ends while it is sent or computed.
  {
    pb::AttendRequest big;
    for (int i = 0; i < 256; ++i) {
      pb::AttendItem* item = big.add_items();
      item->set_session_id("s");
      item->set_layer(i % kLayers);
      *item->mutable_queries() = Floats(kQHeads, 16, kHeadDim, i);
    }
    auto ctx = deadline_in(1);
    pb::AttendResponse r;
    EXPECT_EQ(c.stub().Attend(ctx.get(), big, &r).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // CreateProfile: the spec arrives, the stream is not finished in time.
  {
    auto ctx = deadline_in(300);
    pb::ProfileInfo info;
    auto writer = c.stub().CreateProfile(ctx.get(), &info);
    pb::CreateProfileRequest m;
    *m.mutable_spec() = testing::Spec("late");
    ASSERT_TRUE(writer->Write(m));
    absl::SleepFor(absl::Milliseconds(500));
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_EQ(c.GetProfile("late").status().code(), StatusCode::kNotFound);
  }
  // Append: the deadline passes between two chunks that each need pages.
  {
    auto ctx = deadline_in(300);
    pb::AppendResponse resp;
    auto writer = c.stub().Append(ctx.get(), &resp);
    ASSERT_TRUE(writer->Write(Chunk("s", 0, 600, 300)));
    absl::SleepFor(absl::Milliseconds(500));
    writer->Write(Chunk("s", 1, 600, 300));
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  ExpectUnchangedThenDrop(c, 600, *before);
}

TEST_F(FaultsTest, ShutdownWithStreamsOpenAbortsAppendsAndReturnsPages) {
  StartSmallPages();
  Client& c = C();
  Prepare(c, 600);
  const int64_t total = server_->pool().total_pages();
  const int64_t held = total - server_->pool().free_pages();
  ASSERT_GT(held, 0);

  // An append with tokens written but not committed, an attend stream with
  // an answered request, and a read whose consumer is slow.
  std::unique_ptr<grpc::ClientContext> append_ctx = c.NewContext();
  pb::AppendResponse append_resp;
  auto writer = c.stub().Append(append_ctx.get(), &append_resp);
  ASSERT_TRUE(writer->Write(Chunk("s", 0, 600, 300)));
  ASSERT_TRUE(writer->Write(Chunk("s", 1, 600, 300)));
  std::unique_ptr<grpc::ClientContext> attend_ctx = c.NewContext();
  auto attend = c.stub().AttendStream(attend_ctx.get());
  pb::AttendResponse answer;
  ASSERT_TRUE(attend->Write(Query("s")));
  ASSERT_TRUE(attend->Read(&answer));
  absl::Notification read_started;
  absl::Status read_status;
  int64_t read_tokens = 0;
  std::thread reader([&] {
    read_status = c.Read(ReadAll("s", 16), [&](const pb::ReadResponse& m) {
      read_tokens += m.chunk().tokens();
      if (!read_started.HasBeenNotified()) read_started.Notify();
      absl::SleepFor(absl::Milliseconds(50));
      return true;
    });
  });
  read_started.WaitForNotification();
  // Let the append's messages reach the server before it stops.
  for (int i = 0; i < 200 && server_->pool().free_pages() == total - held; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }

  const absl::Time t0 = absl::Now();
  server_->Shutdown(absl::Milliseconds(200));
  server_->Wait();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  reader.join();
  // The read either failed or (all of it already sent) delivered it whole.
  if (read_status.ok()) {
    EXPECT_EQ(read_tokens, 600 * kLayers);
  }
  EXPECT_FALSE(writer->Finish().ok());
  EXPECT_FALSE(attend->Finish().ok());

  // The open append was aborted: the session is as committed, and the
  // pages the append had taken are back.
  absl::StatusOr<std::shared_ptr<service::Session>> s = server_->sessions().Find("default", "s");
  ASSERT_TRUE(s.ok()) << s.status();
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ((*s)->Stats().layer_tokens[l], 600);
  EXPECT_EQ(server_->pool().free_pages(), total - held);
  s->reset();
  ASSERT_TRUE(server_->sessions().Drop("default", "s").ok());
  EXPECT_EQ(server_->pool().free_pages(), total);
}

TEST_F(FaultsTest, AllocationFailureAtEveryStepOfAnAppendChangesNothing) {
  StartSmallPages();
  Client& c = C();
  Prepare(c, 100);
  // "t" gets the same tokens as "s" and then the append under test, with no
  // failure: it counts the append's page allocations and is the reference
  // for "s" once the append finally succeeds.
  pb::CreateSessionRequest req;
  req.set_session_id("t");
  req.set_profile_id("p");
  ASSERT_TRUE(c.CreateSession(req).ok());
  Append(c, "t", 100, 0);
  std::vector<pb::AppendRequest> msgs;
  for (int i = 0; i < 3; ++i) {
    for (int l = 0; l < kLayers; ++l) msgs.push_back(Chunk("", l, 100 + 150 * i, 150, 10 * i + l));
  }
  auto to = [&](const std::string& id) {
    for (pb::AppendRequest& m : msgs) m.set_session_id(id);
    return msgs;
  };
  const int64_t calls_before = server_->pool().allocate_calls();
  ASSERT_TRUE(RawAppend(c, to("t")).ok());
  const int64_t steps = server_->pool().allocate_calls() - calls_before;
  ASSERT_GE(steps, 3) << "the append should need pages in several messages";

  absl::StatusOr<pb::AttendResponse> before = c.Attend(Query("s", 1));
  ASSERT_TRUE(before.ok());
  const int64_t free_before = server_->pool().free_pages();
  for (int64_t step = 0; step < steps; ++step) {
    server_->pool().InjectAllocationFailures(step, 1);
    absl::Status s = RawAppend(c, to("s"));
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << "step " << step << ": " << s;
    EXPECT_NE(s.message().find("injected"), std::string::npos) << s;
    ExpectFreePages(free_before);
    absl::StatusOr<pb::SessionInfo> info = c.GetSession("s");
    ASSERT_TRUE(info.ok());
    for (int l = 0; l < kLayers; ++l) EXPECT_EQ(info->layer_tokens(l), 100u) << "step " << step;
    EXPECT_EQ(c.Attend(Query("s", 1))->results(0).output().data(), before->results(0).output().data());
  }
  server_->pool().InjectAllocationFailures(0, 0);
  ASSERT_TRUE(RawAppend(c, to("s")).ok());
  // Nothing of the failed attempts remained: "s" now equals "t".
  for (int l = 0; l < kLayers; ++l) {
    absl::StatusOr<pb::AttendResponse> got = c.Attend(Query("s", l));
    absl::StatusOr<pb::AttendResponse> want = c.Attend(Query("t", l));
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ(got->results(0).output().data(), want->results(0).output().data());
    EXPECT_EQ(got->results(0).lse().data(), want->results(0).lse().data());
  }
}

}  // namespace
}  // namespace ropekv
