// libFuzzer target: the service's handlers end to end. The input is a
// sequence of calls; each is parsed into that method's request messages
// (streams take several) and sent to a real ropekv server running in this
// process on loopback, through its real authentication, validation,
// reactors, store and CPU backend, over a small arena. Every input starts
// from the same state: one profile "p" (2 layers, 4/2 heads, d32) and one
// session "s" with 16 tokens.
//
// A call that does not answer within kCallDeadline counts as a crash (a
// hang); with -rss_limit_mb and -timeout, a blow-up of memory or time does
// too.
//
// Input: repeated [op byte][count byte][count x (u16 little-endian length,
// message bytes)]; op picks the method (kMethods), count % 4 + 1 the
// number of messages a stream sends (unary calls use the first). Bytes
// that do not parse as the request type are sent as an empty message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "grpcpp/grpcpp.h"
#include "ropekv/v1/service.grpc.pb.h"
#include "service/log.h"
#include "service/server.h"

namespace {

namespace pb = ::ropekv::v1;

constexpr absl::Duration kCallDeadline = absl::Seconds(8);
constexpr int kMethods = 12;

struct Harness {
  std::unique_ptr<ropekv::service::Server> server;
  std::unique_ptr<ropekv::client::Client> client;
};

// FUZZ_SERVICE_VERBOSE=1 prints every call's status (to see what an input
// or a reproducer does).
const bool kVerbose = getenv("FUZZ_SERVICE_VERBOSE") != nullptr;

// A call that timed out is a hang of the server: stop here with a report.
void CheckNotHung(const grpc::Status& s, const char* method) {
  if (kVerbose) fprintf(stderr, "fuzz_service: %s -> %d %s\n", method, s.error_code(), s.error_message().c_str());
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    fprintf(stderr, "fuzz_service: %s did not answer within %s: the server hangs\n", method,
            absl::FormatDuration(kCallDeadline).c_str());
    abort();
  }
}

void CheckNotHung(const absl::Status& s, const char* method) {
  CheckNotHung(grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message())), method);
}

Harness& Get() {
  static Harness* h = [] {
    ropekv::service::SetLogLevel(ropekv::service::LogLevel::kError);
    auto* harness = new Harness();
    ropekv::service::ServerOptions o;
    o.address = "127.0.0.1:0";
    o.backend = "cpu";
    o.cpu_threads = 1;
    o.memory_bytes = 8 << 20;  // a small arena: capacity errors are reachable
    o.page_bytes = 64 << 10;
    o.max_message_bytes = 4 << 20;
    o.data_dir = (std::filesystem::temp_directory_path() / absl::StrCat("fuzz-service-", getpid())).string();
    // Plans bounded so that one input's profile builds within -timeout
    // under ASan; every other limit keeps its default.
    o.limits.max_profile_bytes = 4 << 20;
    o.limits.tenant_profile_bytes = 16 << 20;
    absl::StatusOr<std::unique_ptr<ropekv::service::Server>> s = ropekv::service::Server::Start(o);
    if (!s.ok()) {
      fprintf(stderr, "fuzz_service: %s\n", s.status().ToString().c_str());
      abort();
    }
    harness->server = *std::move(s);
    ropekv::client::ClientOptions c;
    c.target = absl::StrCat("127.0.0.1:", harness->server->port());
    c.deadline = kCallDeadline;
    c.max_message_bytes = 4 << 20;
    c.upload_dtype = pb::DTYPE_FP32;
    harness->client = *ropekv::client::Client::Connect(c);
    return harness;
  }();
  return *h;
}

// Back to the starting state: nothing but profile "p" and session "s".
void Reset(ropekv::client::Client& c) {
  absl::StatusOr<std::vector<pb::SessionInfo>> sessions = c.ListSessions();
  if (sessions.ok()) {
    for (const pb::SessionInfo& s : *sessions) (void)c.DropSession(s.session_id());
  }
  absl::StatusOr<std::vector<pb::ProfileInfo>> profiles = c.ListProfiles();
  if (profiles.ok()) {
    for (const pb::ProfileInfo& p : *profiles) (void)c.DeleteProfile(p.profile_id());
  }
  pb::ProfileSpec spec;
  spec.set_profile_id("p");
  pb::ModelGeometry* g = spec.mutable_geometry();
  g->set_num_layers(2);
  g->set_num_q_heads(4);
  g->set_num_kv_heads(2);
  g->set_head_dim(32);
  g->set_rope_layout(pb::ROPE_LAYOUT_SPLIT_HALF);
  g->set_rotary_dim(32);
  g->set_rope_theta(10000);
  spec.mutable_budget()->set_key_avg_bits(3);
  spec.mutable_budget()->set_value_bits(3);
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 2; ++h) {
      pb::HeadScores* s = spec.mutable_scores()->add_heads();
      s->set_layer(l);
      s->set_kv_head(h);
      for (int b = 0; b < 16; ++b) s->add_scores(1.0 + b % 5);
    }
  }
  absl::Status made = c.CreateProfile(spec).status();
  CheckNotHung(made, "CreateProfile (reset)");
  pb::CreateSessionRequest session;
  session.set_session_id("s");
  session.set_profile_id("p");
  CheckNotHung(c.CreateSession(session).status(), "CreateSession (reset)");
  std::vector<float> kv(2 * 16 * 32);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<float>((i * 7919) % 23) / 11.0f - 1.0f;
  std::vector<ropekv::client::LayerKv> layers;
  for (int l = 0; l < 2; ++l) layers.push_back({l, 0, 2, 16, 32, kv, kv});
  CheckNotHung(c.Append("s", layers).status(), "Append (reset)");
}

// Splits the input into calls.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool done() const { return p_ >= end_; }
  uint8_t Byte() { return p_ < end_ ? *p_++ : 0; }
  std::string Message() {
    const size_t len = Byte() | (static_cast<size_t>(Byte()) << 8);
    const size_t n = std::min<size_t>(len, end_ - p_);
    std::string out(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return out;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

template <typename M>
M Parse(const std::string& bytes) {
  M m;
  if (!m.ParseFromString(bytes)) m.Clear();
  return m;
}

template <typename M>
std::vector<M> ParseAll(const std::vector<std::string>& bytes) {
  std::vector<M> out;
  for (const std::string& b : bytes) out.push_back(Parse<M>(b));
  return out;
}

void Call(ropekv::client::Client& c, int op, const std::vector<std::string>& msgs) {
  pb::RopeKv::Stub& stub = c.stub();
  std::unique_ptr<grpc::ClientContext> ctx = c.NewContext();
  switch (op) {
    case 0: {  // CreateProfile: spec then calibration chunks, as sent
      pb::ProfileInfo info;
      auto writer = stub.CreateProfile(ctx.get(), &info);
      for (const pb::CreateProfileRequest& m : ParseAll<pb::CreateProfileRequest>(msgs)) {
        if (!writer->Write(m)) break;
      }
      writer->WritesDone();
      CheckNotHung(writer->Finish(), "CreateProfile");
      return;
    }
    case 1: {
      pb::ProfileInfo r;
      CheckNotHung(stub.GetProfile(ctx.get(), Parse<pb::GetProfileRequest>(msgs[0]), &r), "GetProfile");
      return;
    }
    case 2: {
      pb::DeleteProfileResponse r;
      CheckNotHung(stub.DeleteProfile(ctx.get(), Parse<pb::DeleteProfileRequest>(msgs[0]), &r),
                   "DeleteProfile");
      return;
    }
    case 3: {
      pb::SessionInfo r;
      CheckNotHung(stub.CreateSession(ctx.get(), Parse<pb::CreateSessionRequest>(msgs[0]), &r),
                   "CreateSession");
      return;
    }
    case 4: {
      pb::SessionInfo r;
      CheckNotHung(stub.GetSession(ctx.get(), Parse<pb::GetSessionRequest>(msgs[0]), &r), "GetSession");
      return;
    }
    case 5: {
      pb::DropSessionResponse r;
      CheckNotHung(stub.DropSession(ctx.get(), Parse<pb::DropSessionRequest>(msgs[0]), &r), "DropSession");
      return;
    }
    case 6: {  // Append: every message, then the end of the stream
      pb::AppendResponse r;
      auto writer = stub.Append(ctx.get(), &r);
      for (const pb::AppendRequest& m : ParseAll<pb::AppendRequest>(msgs)) {
        if (!writer->Write(m)) break;
      }
      writer->WritesDone();
      CheckNotHung(writer->Finish(), "Append");
      return;
    }
    case 7: {
      pb::AttendResponse r;
      CheckNotHung(stub.Attend(ctx.get(), Parse<pb::AttendRequest>(msgs[0]), &r), "Attend");
      return;
    }
    case 8: {  // AttendStream: one request, one response, in turn
      auto stream = stub.AttendStream(ctx.get());
      pb::AttendResponse r;
      for (const pb::AttendRequest& m : ParseAll<pb::AttendRequest>(msgs)) {
        if (!stream->Write(m) || !stream->Read(&r)) break;
      }
      stream->WritesDone();
      CheckNotHung(stream->Finish(), "AttendStream");
      return;
    }
    case 9: {  // Read: every message of the export
      auto reader = stub.Read(ctx.get(), Parse<pb::ReadRequest>(msgs[0]));
      pb::ReadResponse r;
      while (reader->Read(&r)) {
      }
      CheckNotHung(reader->Finish(), "Read");
      return;
    }
    case 10: {
      pb::ListSessionsResponse r;
      CheckNotHung(stub.ListSessions(ctx.get(), pb::ListSessionsRequest(), &r), "ListSessions");
      return;
    }
    default: {
      pb::ServerInfo r;
      CheckNotHung(stub.GetServerInfo(ctx.get(), pb::GetServerInfoRequest(), &r), "GetServerInfo");
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Harness& h = Get();
  Reset(*h.client);
  Reader in(data, size);
  for (int calls = 0; !in.done() && calls < 16; ++calls) {
    const int op = in.Byte() % kMethods;
    const int count = in.Byte() % 4 + 1;
    std::vector<std::string> msgs;
    for (int i = 0; i < count; ++i) msgs.push_back(in.Message());
    Call(*h.client, op, msgs);
  }
  return 0;
}
