#include "client/client.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "proto/tensor_util.h"

namespace ropekv::client {

namespace pb = ::ropekv::v1;

namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Retry idempotent calls on UNAVAILABLE (gRPC's own retry machinery).
constexpr char kServiceConfig[] = R"({
  "methodConfig": [{
    "name": [
      {"service": "ropekv.v1.RopeKv", "method": "GetProfile"},
      {"service": "ropekv.v1.RopeKv", "method": "ListProfiles"},
      {"service": "ropekv.v1.RopeKv", "method": "GetSession"},
      {"service": "ropekv.v1.RopeKv", "method": "ListSessions"},
      {"service": "ropekv.v1.RopeKv", "method": "Attend"},
      {"service": "ropekv.v1.RopeKv", "method": "Read"},
      {"service": "grpc.health.v1.Health"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})";

}  // namespace

pb::Tensor MakeTensor(absl::Span<const float> data, std::initializer_list<int64_t> shape,
                      pb::DType dtype) {
  pb::Tensor t;
  proto::FloatsToTensor(data, std::vector<int64_t>(shape), dtype, &t);
  return t;
}

absl::StatusOr<std::vector<float>> TensorValues(const pb::Tensor& tensor) {
  std::vector<int64_t> any(tensor.shape_size(), -1);
  return proto::TensorToFloats(tensor, any, "tensor", /*require_finite=*/false);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: expected an address");
  if (options.chunk_bytes < 4096 || options.chunk_bytes > options.max_message_bytes / 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_bytes: expected [4096, max_message_bytes / 2], got ", options.chunk_bytes));
  }
  std::unique_ptr<Client> c(new Client(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetServiceConfigJSON(kServiceConfig);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_cert_chain;
    ssl.pem_private_key = options.tls_private_key;
    creds = grpc::SslCredentials(ssl);
  }
  c->channel_ = grpc::CreateCustomChannel(options.target, creds, args);
  c->stub_ = pb::RopeKv::NewStub(c->channel_);
  return c;
}

std::unique_ptr<grpc::ClientContext> Client::NewContext() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoMicroseconds(options_.deadline));
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  return ctx;
}

absl::Status Client::WaitForReady(absl::Duration timeout) {
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout);
  if (!channel_->WaitForConnected(deadline)) {
    return absl::DeadlineExceededError(
        absl::StrCat("server ", options_.target, " not reachable within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Client::Healthy(const std::string& service) {
  // grpc.health.v1.Health/Check without the generated health stubs: the
  // request's field 1 is the service name (absent for the whole server)
  // and the response's field 1 is the status enum (1 = SERVING).
  if (service.size() > 127) return absl::InvalidArgumentError("service: expected at most 127 characters");
  auto ctx = NewContext();
  grpc::ByteBuffer request, response;
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes = std::string(1, '\x0a') + static_cast<char>(service.size()) + service;
  }
  grpc::Slice request_slice(request_bytes);
  request = grpc::ByteBuffer(&request_slice, 1);
  grpc::GenericStub generic(channel_);
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = std::move(s);
                      done = true;
                      cv.notify_one();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("bad health response");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // Field 1, varint: tag 0x08 then the value.
  return bytes.size() >= 2 && bytes[0] == 0x08 && bytes[1] == 1;
}

absl::StatusOr<pb::ProfileInfo> Client::CreateProfile(
    const pb::ProfileSpec& spec, const std::function<bool(pb::CalibrationChunk*)>& next_chunk) {
  auto ctx = NewContext();
  pb::ProfileInfo info;
  std::unique_ptr<grpc::ClientWriter<pb::CreateProfileRequest>> writer =
      stub_->CreateProfile(ctx.get(), &info);
  pb::CreateProfileRequest req;
  *req.mutable_spec() = spec;
  bool ok = writer->Write(req);
  while (ok && next_chunk) {
    req.Clear();
    if (!next_chunk(req.mutable_calibration())) break;
    ok = writer->Write(req);
  }
  writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish());
  if (!s.ok()) return s;
  return info;
}

absl::StatusOr<pb::ProfileInfo> Client::CreateProfileFromSamples(
    const pb::ProfileSpec& spec, absl::Span<const float> q, absl::Span<const float> k,
    int64_t tokens) {
  const pb::ModelGeometry& g = spec.geometry();
  const int64_t layers = g.num_layers(), hq = g.num_q_heads(), hk = g.num_kv_heads(),
                d = g.head_dim();
  if (tokens < 1 || static_cast<int64_t>(q.size()) != layers * hq * tokens * d ||
      static_cast<int64_t>(k.size()) != layers * hk * tokens * d) {
    return absl::InvalidArgumentError(
        "q/k: expected [layers, heads, tokens, head_dim] matching spec.geometry");
  }
  const int elem = proto::DTypeBytes(options_.upload_dtype);
  const int64_t per_token = (hq + hk) * d * elem;
  const int64_t step = std::max<int64_t>(1, options_.chunk_bytes / per_token);
  int64_t layer = 0, start = 0;
  std::vector<float> qbuf, kbuf;
  return CreateProfile(spec, [&](pb::CalibrationChunk* chunk) {
    if (layer >= layers) return false;
    const int64_t n = std::min(step, tokens - start);
    qbuf.resize(hq * n * d);
    kbuf.resize(hk * n * d);
    for (int64_t h = 0; h < hq; ++h) {
      const float* src = q.data() + ((layer * hq + h) * tokens + start) * d;
      std::copy(src, src + n * d, qbuf.begin() + h * n * d);
    }
    for (int64_t h = 0; h < hk; ++h) {
      const float* src = k.data() + ((layer * hk + h) * tokens + start) * d;
      std::copy(src, src + n * d, kbuf.begin() + h * n * d);
    }
    chunk->set_layer(static_cast<uint32_t>(layer));
    *chunk->mutable_queries() = MakeTensor(qbuf, {hq, n, d}, options_.upload_dtype);
    *chunk->mutable_keys() = MakeTensor(kbuf, {hk, n, d}, options_.upload_dtype);
    start += n;
    if (start == tokens) {
      start = 0;
      ++layer;
    }
    return true;
  });
}

absl::StatusOr<pb::ProfileInfo> Client::GetProfile(const std::string& id, bool include_plan) {
  auto ctx = NewContext();
  pb::GetProfileRequest req;
  req.set_profile_id(id);
  req.set_include_plan(include_plan);
  pb::ProfileInfo resp;
  absl::Status s = FromGrpc(stub_->GetProfile(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<std::vector<pb::ProfileInfo>> Client::ListProfiles() {
  auto ctx = NewContext();
  pb::ListProfilesResponse resp;
  absl::Status s = FromGrpc(stub_->ListProfiles(ctx.get(), {}, &resp));
  if (!s.ok()) return s;
  return std::vector<pb::ProfileInfo>(resp.profiles().begin(), resp.profiles().end());
}

absl::Status Client::DeleteProfile(const std::string& id) {
  auto ctx = NewContext();
  pb::DeleteProfileRequest req;
  req.set_profile_id(id);
  pb::DeleteProfileResponse resp;
  return FromGrpc(stub_->DeleteProfile(ctx.get(), req, &resp));
}

absl::StatusOr<pb::SessionInfo> Client::CreateSession(const pb::CreateSessionRequest& req) {
  auto ctx = NewContext();
  pb::SessionInfo resp;
  absl::Status s = FromGrpc(stub_->CreateSession(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<pb::SessionInfo> Client::GetSession(const std::string& id) {
  auto ctx = NewContext();
  pb::GetSessionRequest req;
  req.set_session_id(id);
  pb::SessionInfo resp;
  absl::Status s = FromGrpc(stub_->GetSession(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<std::vector<pb::SessionInfo>> Client::ListSessions() {
  auto ctx = NewContext();
  pb::ListSessionsResponse resp;
  absl::Status s = FromGrpc(stub_->ListSessions(ctx.get(), {}, &resp));
  if (!s.ok()) return s;
  return std::vector<pb::SessionInfo>(resp.sessions().begin(), resp.sessions().end());
}

absl::StatusOr<pb::ServerInfo> Client::GetServerInfo() {
  auto ctx = NewContext();
  pb::ServerInfo info;
  absl::Status s = FromGrpc(stub_->GetServerInfo(ctx.get(), pb::GetServerInfoRequest(), &info));
  if (!s.ok()) return s;
  return info;
}

absl::Status Client::Echo(int64_t payload_bytes, int64_t response_bytes) {
  auto ctx = NewContext();
  pb::EchoRequest req;
  req.mutable_payload()->assign(static_cast<size_t>(payload_bytes), '\x5a');
  req.set_response_bytes(response_bytes);
  pb::EchoResponse resp;
  absl::Status s = FromGrpc(stub_->Echo(ctx.get(), req, &resp));
  if (s.ok() && (resp.received_bytes() != payload_bytes ||
                 static_cast<int64_t>(resp.payload().size()) != response_bytes)) {
    return absl::DataLossError("Echo: byte counts do not match what was sent");
  }
  return s;
}

absl::Status Client::EchoStream(int64_t payload_bytes, int messages) {
  auto ctx = NewContext();
  pb::EchoResponse resp;
  std::unique_ptr<grpc::ClientWriter<pb::EchoRequest>> writer = stub_->EchoStream(ctx.get(), &resp);
  pb::EchoRequest req;
  req.mutable_payload()->assign(static_cast<size_t>(payload_bytes), '\x5a');
  for (int i = 0; i < messages; ++i) {
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish());
  if (s.ok() && resp.received_bytes() != payload_bytes * messages) {
    return absl::DataLossError("EchoStream: byte counts do not match what was sent");
  }
  return s;
}

absl::Status Client::DropSession(const std::string& id) {
  auto ctx = NewContext();
  pb::DropSessionRequest req;
  req.set_session_id(id);
  pb::DropSessionResponse resp;
  return FromGrpc(stub_->DropSession(ctx.get(), req, &resp));
}

absl::StatusOr<pb::AppendResponse> Client::Append(const std::string& session_id,
                                                  absl::Span<const LayerKv> layers) {
  for (const LayerKv& l : layers) {
    const int64_t n = static_cast<int64_t>(l.num_kv_heads) * l.tokens * l.head_dim;
    if (l.tokens < 1 || static_cast<int64_t>(l.keys.size()) != n ||
        static_cast<int64_t>(l.values.size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", l.layer, ": keys/values must hold num_kv_heads x tokens x head_dim = ", n,
          " values"));
    }
  }
  auto ctx = NewContext();
  pb::AppendResponse resp;
  std::unique_ptr<grpc::ClientWriter<pb::AppendRequest>> writer = stub_->Append(ctx.get(), &resp);
  pb::AppendRequest req;
  std::vector<float> kbuf, vbuf;
  bool ok = true;
  bool first = true;
  const int elem = proto::DTypeBytes(options_.upload_dtype);
  for (const LayerKv& l : layers) {
    const int64_t per_token = int64_t{2} * l.num_kv_heads * l.head_dim * elem;
    const int64_t step = std::max<int64_t>(1, options_.chunk_bytes / per_token);
    for (int64_t start = 0; ok && start < l.tokens; start += step) {
      const int64_t n = std::min(step, l.tokens - start);
      kbuf.resize(static_cast<size_t>(l.num_kv_heads) * n * l.head_dim);
      vbuf.resize(kbuf.size());
      for (int h = 0; h < l.num_kv_heads; ++h) {
        const int64_t src = (h * l.tokens + start) * l.head_dim;
        std::copy_n(l.keys.data() + src, n * l.head_dim, kbuf.begin() + h * n * l.head_dim);
        std::copy_n(l.values.data() + src, n * l.head_dim, vbuf.begin() + h * n * l.head_dim);
      }
      req.Clear();
      if (first) req.set_session_id(session_id);
      first = false;
      req.set_layer(l.layer);
      req.set_token_start(l.token_start + start);
      *req.mutable_keys() = MakeTensor(kbuf, {l.num_kv_heads, n, l.head_dim}, options_.upload_dtype);
      *req.mutable_values() = MakeTensor(vbuf, {l.num_kv_heads, n, l.head_dim}, options_.upload_dtype);
      ok = writer->Write(req);
    }
  }
  if (ok) writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish());
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<pb::AttendResponse> Client::Attend(const pb::AttendRequest& req) {
  auto ctx = NewContext();
  pb::AttendResponse resp;
  absl::Status s = FromGrpc(stub_->Attend(ctx.get(), req, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<std::unique_ptr<AttendStream>> Client::OpenAttendStream() {
  std::unique_ptr<AttendStream> stream(new AttendStream());
  // A stream lives as long as the decoder: no per-call deadline.
  stream->context_ = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) {
    stream->context_->AddMetadata("authorization", "Bearer " + options_.token);
  }
  stream->stream_ = stub_->AttendStream(stream->context_.get());
  if (stream->stream_ == nullptr) return absl::UnavailableError("cannot open the stream");
  return stream;
}

absl::StatusOr<pb::AttendResponse> AttendStream::Call(const pb::AttendRequest& req) {
  if (finished_) return absl::FailedPreconditionError("stream already finished");
  pb::AttendResponse resp;
  if (!stream_->Write(req) || !stream_->Read(&resp)) {
    finished_ = true;
    stream_->WritesDone();
    absl::Status s = FromGrpc(stream_->Finish());
    return s.ok() ? absl::UnavailableError("stream ended") : s;
  }
  return resp;
}

absl::Status AttendStream::Finish() {
  if (finished_) return absl::OkStatus();
  finished_ = true;
  stream_->WritesDone();
  return FromGrpc(stream_->Finish());
}

AttendStream::~AttendStream() {
  if (!finished_) {
    context_->TryCancel();
    stream_->Finish();
  }
}

absl::Status Client::Read(const pb::ReadRequest& req,
                          const std::function<bool(const pb::ReadResponse&)>& on_message) {
  auto ctx = NewContext();
  std::unique_ptr<grpc::ClientReader<pb::ReadResponse>> reader = stub_->Read(ctx.get(), req);
  pb::ReadResponse resp;
  while (reader->Read(&resp)) {
    if (!on_message(resp)) {
      ctx->TryCancel();
      reader->Finish();
      return absl::CancelledError("read stopped by the caller");
    }
  }
  return FromGrpc(reader->Finish());
}

}  // namespace ropekv::client
