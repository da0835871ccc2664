// ropekv::client::Client: the C++ library a decoder links to talk to a
// ropekv server. It speaks only the proto (ropekv.v1).
//
// Every call sets the configured deadline and bearer token. Calls that are
// safe to repeat (Get*, List*, Attend, Read, health) are retried by the
// gRPC channel on UNAVAILABLE with exponential backoff; creating, dropping
// and appending are never retried (an append that may have committed must
// not be applied twice).
//
// Thread safety: a Client may be used from many threads at once. An
// AttendStream is used by one thread at a time.
#ifndef ROPEKV_CLIENT_CLIENT_H_
#define ROPEKV_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "ropekv/v1/service.grpc.pb.h"

namespace ropekv::client {

struct ClientOptions {
  // gRPC target: "host:port", "dns:///name:port", "unix:/path".
  std::string target = "127.0.0.1:50051";
  // Bearer token ("" = none).
  std::string token;
  // Deadline of each call.
  absl::Duration deadline = absl::Seconds(60);
  // Largest message either way; match the server's --max_message_bytes.
  int64_t max_message_bytes = 64 << 20;
  // TLS with these PEM root certificates (empty = the system roots).
  bool tls = false;
  std::string tls_root_certs;
  // Client certificate chain and private key (PEM) for servers that require
  // mutual TLS (empty = none).
  std::string tls_cert_chain;
  std::string tls_private_key;
  // Target size of each streamed upload message.
  int64_t chunk_bytes = 2 << 20;
  // Element type tensors are uploaded in (FP16 halves the bytes; FP32 is
  // exact for fp32 sources).
  ropekv::v1::DType upload_dtype = ropekv::v1::DTYPE_FP16;
};

// K and V of one layer: [num_kv_heads, tokens, head_dim] fp32 each.
struct LayerKv {
  int layer = 0;
  int64_t token_start = 0;
  int num_kv_heads = 0;
  int64_t tokens = 0;
  int head_dim = 0;
  absl::Span<const float> keys;
  absl::Span<const float> values;
};

// A bidirectional attention stream: one response per request, in order.
class AttendStream {
 public:
  ~AttendStream();
  // Sends one request and waits for its response.
  absl::StatusOr<ropekv::v1::AttendResponse> Call(const ropekv::v1::AttendRequest& request);
  // Half-closes and returns the stream's final status.
  absl::Status Finish();

 private:
  friend class Client;
  AttendStream() = default;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<ropekv::v1::AttendRequest,
                                           ropekv::v1::AttendResponse>> stream_;
  bool finished_ = false;
};

class Client {
 public:
  // Creates the channel (connection happens lazily or in WaitForReady).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  // DEADLINE_EXCEEDED when the server is not reachable within `timeout`.
  absl::Status WaitForReady(absl::Duration timeout);
  // grpc.health.v1 status of the whole server, or of one service by name
  // ("ropekv.v1.RopeKv"): true when SERVING; NOT_FOUND for an unknown name.
  absl::StatusOr<bool> Healthy(const std::string& service = "");

  // Profiles. `next_chunk` fills a calibration chunk and returns true, or
  // returns false when there are no more (spec.calibration source only).
  absl::StatusOr<ropekv::v1::ProfileInfo> CreateProfile(
      const ropekv::v1::ProfileSpec& spec,
      const std::function<bool(ropekv::v1::CalibrationChunk*)>& next_chunk = {});
  // Streams q [layers, num_q_heads, tokens, head_dim] and k [layers,
  // num_kv_heads, tokens, head_dim] (fp32) as calibration, chunked.
  absl::StatusOr<ropekv::v1::ProfileInfo> CreateProfileFromSamples(
      const ropekv::v1::ProfileSpec& spec, absl::Span<const float> q,
      absl::Span<const float> k, int64_t tokens);
  absl::StatusOr<ropekv::v1::ProfileInfo> GetProfile(const std::string& profile_id,
                                                     bool include_plan = false);
  absl::StatusOr<std::vector<ropekv::v1::ProfileInfo>> ListProfiles();
  absl::Status DeleteProfile(const std::string& profile_id);

  // Sessions.
  absl::StatusOr<ropekv::v1::SessionInfo> CreateSession(
      const ropekv::v1::CreateSessionRequest& request);
  absl::StatusOr<ropekv::v1::SessionInfo> GetSession(const std::string& session_id);
  absl::StatusOr<std::vector<ropekv::v1::SessionInfo>> ListSessions();
  absl::Status DropSession(const std::string& session_id);

  // Appends several layers' tokens in one atomic stream, split into
  // messages of about options.chunk_bytes.
  absl::StatusOr<ropekv::v1::AppendResponse> Append(const std::string& session_id,
                                                    absl::Span<const LayerKv> layers);

  absl::StatusOr<ropekv::v1::AttendResponse> Attend(const ropekv::v1::AttendRequest& request);
  absl::StatusOr<std::unique_ptr<AttendStream>> OpenAttendStream();

  // Calls `on_message` for every message of the export; stops early (with
  // CANCELLED) when it returns false.
  absl::Status Read(const ropekv::v1::ReadRequest& request,
                    const std::function<bool(const ropekv::v1::ReadResponse&)>& on_message);

  // What the server runs on.
  absl::StatusOr<ropekv::v1::ServerInfo> GetServerInfo();
  // Diagnostics (server started with --enable_echo): one call carrying
  // payload_bytes up and response_bytes back, or a stream of `messages`
  // payloads of payload_bytes each, like an append's chunks.
  absl::Status Echo(int64_t payload_bytes, int64_t response_bytes);
  absl::Status EchoStream(int64_t payload_bytes, int messages);

  // The raw stub, for calls the helpers do not cover.
  ropekv::v1::RopeKv::Stub& stub() { return *stub_; }
  // A context with the deadline and token set.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

 private:
  explicit Client(const ClientOptions& options) : options_(options) {}
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ropekv::v1::RopeKv::Stub> stub_;
};

// fp32 data as a wire tensor of `dtype`.
ropekv::v1::Tensor MakeTensor(absl::Span<const float> data,
                              std::initializer_list<int64_t> shape,
                              ropekv::v1::DType dtype = ropekv::v1::DTYPE_FP32);
// A wire tensor (FP16/BF16/FP32) as fp32; INVALID_ARGUMENT when malformed.
absl::StatusOr<std::vector<float>> TensorValues(const ropekv::v1::Tensor& tensor);

}  // namespace ropekv::client

#endif  // ROPEKV_CLIENT_CLIENT_H_
