#include "service/rope_kv_service.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "planner/profile_io.h"
#include "service/log.h"
#include "proto/routing.h"
#include "proto/tensor_util.h"

namespace ropekv::service {

namespace pb = ::ropekv::v1;

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

namespace {

absl::Status WithField(const absl::Status& s, const std::string& prefix) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

void StatsToInfo(const SessionStats& s, const Session& session, pb::SessionInfo* info) {
  info->set_session_id(s.session_id);
  info->set_profile_id(s.profile_id);
  for (int64_t t : s.layer_tokens) info->add_layer_tokens(t);
  info->set_bytes_resident(s.bytes_resident);
  info->set_bytes_fp16(s.bytes_fp16);
  info->set_pages(s.pages);
  info->set_idle_ttl_seconds(static_cast<uint32_t>(s.idle_ttl_seconds));
  info->set_sink_tokens(static_cast<uint32_t>(s.sink_tokens));
  info->set_window_tokens(static_cast<uint32_t>(s.window_tokens));
  info->set_created_unix_ms(absl::ToUnixMillis(s.created));
  info->set_last_used_unix_ms(absl::ToUnixMillis(s.last_used));
}

// Runs `fn`; an exception (in practice an allocation that failed) becomes a
// status, so none escapes into gRPC's threads. Callers change state only
// after their allocations, so a failed call leaves nothing behind.
template <typename Fn>
absl::Status Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("the server is out of memory for this call; nothing was changed");
  } catch (const std::length_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("the call asks for too much memory: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("internal error: ", e.what()));
  }
}

absl::Status CheckResponseSize(const google::protobuf::Message& m, int64_t limit) {
  const size_t size = m.ByteSizeLong();
  if (static_cast<int64_t>(size) > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "response of ", size, " bytes exceeds the message limit of ", limit,
        " bytes; ask for less per call"));
  }
  return absl::OkStatus();
}

// Runs `fn(tenant)` and finishes a unary call with its status.
template <typename Fn>
grpc::ServerUnaryReactor* Unary(const RopeKvService* service, const char* method,
                                grpc::CallbackServerContext* ctx, Fn fn) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<std::string> tenant = service->TenantOf(ctx);
  absl::Status s = tenant.ok() ? Guarded([&] { return fn(*tenant); }) : tenant.status();
  const grpc::Status status = ToGrpcStatus(s);
  service->Record(method, start, status);
  reactor->Finish(status);
  return reactor;
}

// Base of the streaming reactors: finishes once and records the call.
template <typename Reactor>
class Recorded : public Reactor {
 protected:
  Recorded(const RopeKvService* service, const char* method)
      : service_(service), method_(method) {}
  void FinishRecorded(const grpc::Status& status) {
    service_->Record(method_, start_, status);
    this->Finish(status);
  }
  void FinishRecorded(const absl::Status& status) { FinishRecorded(ToGrpcStatus(status)); }
  // Sets tenant_, or finishes the call with UNAUTHENTICATED and returns false.
  bool Authenticate(grpc::CallbackServerContext* ctx) {
    absl::StatusOr<std::string> tenant = service_->TenantOf(ctx);
    if (!tenant.ok()) {
      FinishRecorded(tenant.status());
      return false;
    }
    tenant_ = *tenant;
    return true;
  }
  const RopeKvService* service_;
  std::string tenant_;

 private:
  const char* method_;
  const absl::Time start_ = absl::Now();
};

// ---------------------------------------------------------------- CreateProfile

class CreateProfileReactor final
    : public Recorded<grpc::ServerReadReactor<pb::CreateProfileRequest>> {
 public:
  CreateProfileReactor(const RopeKvService* service, grpc::CallbackServerContext* ctx,
                       pb::ProfileInfo* response)
      : Recorded(service, "CreateProfile"), ctx_(ctx), response_(response) {
    if (Authenticate(ctx)) StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (ctx_->IsCancelled()) {
        FinishRecorded(absl::CancelledError("cancelled"));
      } else if (builder_ == nullptr) {
        FinishRecorded(absl::InvalidArgumentError("spec: expected a spec message"));
      } else if (service_->deps().planner == nullptr) {
        FinishRecorded(Guarded([&] { return Complete(); }));
      } else {
        // Planning a large model takes seconds to minutes: off the callback
        // thread, and stopped when the call is cancelled (by the client, its
        // deadline or the server's shutdown).
        service_->deps().planner->Submit([this] { FinishRecorded(Guarded([&] { return Complete(); })); });
      }
      return;
    }
    absl::Status s = Guarded([&] { return Handle(); });
    if (!s.ok()) {
      FinishRecorded(s);
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Handle() {
    if (request_.has_spec()) {
      if (builder_ != nullptr) {
        return absl::InvalidArgumentError("spec: expected only in the first message");
      }
      absl::StatusOr<std::unique_ptr<ProfileBuilder>> b = ProfileBuilder::Start(
          request_.spec(), tenant_, service_->deps().limits, service_->deps().profile_memory);
      if (!b.ok()) return b.status();
      builder_ = *std::move(b);
      return absl::OkStatus();
    }
    if (builder_ == nullptr) {
      return absl::InvalidArgumentError("spec: expected in the first message");
    }
    if (!request_.has_calibration()) {
      return absl::InvalidArgumentError("part: expected spec or calibration");
    }
    return builder_->AddCalibration(request_.calibration());
  }

  absl::Status Complete() {
    absl::StatusOr<planner::ModelProfile> profile =
        builder_->Finish([ctx = ctx_] { return ctx->IsCancelled(); });
    if (!profile.ok()) return profile.status();
    const std::string id = builder_->profile_id();
    if (absl::Status s = service_->deps().profiles->Add(tenant_, id, *std::move(profile),
                                                        builder_->charge());
        !s.ok()) {
      return s;
    }
    absl::StatusOr<ProfileEntry> entry = service_->deps().profiles->Entry(tenant_, id);
    if (!entry.ok()) return entry.status();
    EntryToInfo(*entry, false, response_);
    Log(LogLevel::kInfo, "profile_created", {{"tenant", tenant_}, {"profile_id", id}});
    return absl::OkStatus();
  }

  grpc::CallbackServerContext* ctx_;
  pb::ProfileInfo* response_;
  pb::CreateProfileRequest request_;
  std::unique_ptr<ProfileBuilder> builder_;
};

// ---------------------------------------------------------------- Append

class AppendReactor final : public Recorded<grpc::ServerReadReactor<pb::AppendRequest>> {
 public:
  AppendReactor(const RopeKvService* service, grpc::CallbackServerContext* ctx,
                pb::AppendResponse* response)
      : Recorded(service, "Append"), ctx_(ctx), response_(response) {
    if (Authenticate(ctx)) StartRead(&request_);
  }

  // Reads run one message ahead: the next message arrives and is parsed
  // while this one is converted, copied and encoded. Its OnReadDone may
  // then start before this one returns; the lock keeps the messages in
  // order and current_ to one handler.
  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    if (finished_) return;  // the read that was ahead when the call failed
    if (!ok) {
      // End of the client's stream, or cancellation/deadline: only the
      // former commits.
      absl::Status s = ctx_->IsCancelled()
                           ? absl::CancelledError("append cancelled")
                           : Guarded([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return Commit(); });
      Finish(s);
      return;
    }
    current_.Swap(&request_);
    StartRead(&request_);
    absl::Status s = Guarded([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return Handle(current_); });
    if (!s.ok()) Finish(s);
  }

  void OnDone() override { delete this; }

 private:
  void Finish(const absl::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    txn_.reset();  // aborts unless committed, before the client hears back
    finished_ = true;
    FinishRecorded(s);
  }

  absl::Status Handle(const pb::AppendRequest& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (txn_ == nullptr) {
      if (absl::Status s = ValidateId(m.session_id(), "session_id"); !s.ok()) return s;
      absl::StatusOr<std::shared_ptr<Session>> session =
          service_->deps().sessions->Find(tenant_, m.session_id());
      if (!session.ok()) return session.status();
      absl::StatusOr<std::unique_ptr<AppendTxn>> txn =
          AppendTxn::Begin(*session, service_->deps().backend);
      if (!txn.ok()) return txn.status();
      txn_ = *std::move(txn);
    } else if (!m.session_id().empty() &&
               m.session_id() != txn_->session().id()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session_id: expected '", txn_->session().id(), "' (or empty) in later messages"));
    }
    const planner::ModelGeometry& g = txn_->session().profile().geometry;
    if (m.layer() >= static_cast<uint32_t>(g.num_layers)) {
      return absl::OutOfRangeError(absl::StrCat(
          "layer: expected [0, ", g.num_layers, "), got ", m.layer()));
    }
    const RequestLimits& limits = service_->deps().limits;
    if (m.keys().shape_size() == 3 && m.keys().shape(1) > limits.max_chunk_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys.shape[1]: expected at most ", limits.max_chunk_tokens,
          " tokens per message (--max_chunk_tokens), got ", m.keys().shape(1)));
    }
    absl::StatusOr<std::vector<float>> keys =
        proto::TensorToFloats(m.keys(), {g.num_kv_heads, -1, g.head_dim}, "keys");
    if (!keys.ok()) return keys.status();
    const int64_t tokens = m.keys().shape(1);
    absl::StatusOr<std::vector<float>> values =
        proto::TensorToFloats(m.values(), {g.num_kv_heads, tokens, g.head_dim}, "values");
    if (!values.ok()) return values.status();
    // token_start must be the layer's length (checked by the transaction),
    // which never passes the limit; so this bounds both.
    if (m.token_start() > static_cast<uint64_t>(limits.max_sequence_tokens) ||
        static_cast<int64_t>(m.token_start()) + tokens > limits.max_sequence_tokens) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "keys: tokens [", m.token_start(), ", ", m.token_start() + tokens, ") of layer ",
          m.layer(), " pass the ", limits.max_sequence_tokens,
          " tokens a session's layer may hold (--max_sequence_tokens)"));
    }
    return txn_->Add(static_cast<int>(m.layer()),
                     static_cast<int64_t>(m.token_start()), keys->data(),
                     values->data(), tokens);
  }

  absl::Status Commit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (txn_ == nullptr) {
      return absl::InvalidArgumentError("append: expected at least one message");
    }
    // A session dropped while the stream was open takes nothing.
    absl::StatusOr<std::shared_ptr<Session>> current =
        service_->deps().sessions->Find(tenant_, txn_->session().id());
    if (!current.ok() || current->get() != &txn_->session()) {
      return absl::NotFoundError(absl::StrCat(
          "session '", txn_->session().id(), "' was dropped during the append"));
    }
    for (int64_t t : txn_->Commit()) response_->add_layer_tokens(t);
    response_->set_tokens_appended(txn_->tokens_added());
    if (service_->deps().metrics != nullptr) {
      const planner::ModelGeometry& g = txn_->session().profile().geometry;
      service_->deps().metrics->AddIngested(
          txn_->tokens_added(), txn_->tokens_added() * g.num_kv_heads * g.head_dim * 4);
    }
    return absl::OkStatus();
  }

  grpc::CallbackServerContext* ctx_;
  pb::AppendResponse* response_;
  pb::AppendRequest request_;  // being read
  absl::Mutex mu_;
  pb::AppendRequest current_ ABSL_GUARDED_BY(mu_);  // being handled
  std::unique_ptr<AppendTxn> txn_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------- AttendStream

class AttendStreamReactor final
    : public Recorded<grpc::ServerBidiReactor<pb::AttendRequest, pb::AttendResponse>> {
 public:
  AttendStreamReactor(const RopeKvService* service, grpc::CallbackServerContext* ctx)
      : Recorded(service, "AttendStream") {
    if (Authenticate(ctx)) StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishRecorded(grpc::Status::OK);
      return;
    }
    response_.Clear();
    absl::Status s = Guarded([&] { return service_->DoAttend(tenant_, request_, &response_); });
    if (!s.ok()) {
      FinishRecorded(s);
      return;
    }
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishRecorded(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  pb::AttendRequest request_;
  pb::AttendResponse response_;
};

// ---------------------------------------------------------------- Read

class ReadReactor final : public Recorded<grpc::ServerWriteReactor<pb::ReadResponse>> {
 public:
  ReadReactor(const RopeKvService* service, grpc::CallbackServerContext* ctx,
              const pb::ReadRequest* request)
      : Recorded(service, "Read"), request_(*request) {
    absl::Status s = Guarded([&] { return Start(ctx); });
    if (!s.ok()) {
      FinishRecorded(s);
      return;
    }
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishRecorded(grpc::Status(grpc::StatusCode::CANCELLED, "read cancelled"));
      return;
    }
    Next();
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Start(grpc::CallbackServerContext* ctx) {
    absl::StatusOr<std::string> tenant = service_->TenantOf(ctx);
    if (!tenant.ok()) return tenant.status();
    if (absl::Status s = ValidateId(request_.session_id(), "session_id"); !s.ok()) return s;
    absl::StatusOr<std::shared_ptr<Session>> session =
        service_->deps().sessions->Find(*tenant, request_.session_id());
    if (!session.ok()) return session.status();
    session_ = *session;
    session_->Touch();
    const planner::ModelGeometry& g = session_->profile().geometry;
    switch (request_.format()) {
      case pb::READ_FORMAT_FP16:
      case pb::READ_FORMAT_FP32:
      case pb::READ_FORMAT_PACKED:
        break;
      default:
        return absl::InvalidArgumentError("format: expected FP16, FP32 or PACKED");
    }
    std::vector<bool> asked(g.num_layers);
    for (int i = 0; i < request_.layers_size(); ++i) {
      const uint32_t layer = request_.layers(i);
      if (layer >= static_cast<uint32_t>(g.num_layers)) {
        return absl::OutOfRangeError(absl::StrCat(
            "layers[", i, "]: expected values in [0, ", g.num_layers, "), got ", layer));
      }
      if (asked[layer]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layers[", i, "]: layer ", layer, " given twice; expected distinct layers"));
      }
      asked[layer] = true;
      layers_.push_back(static_cast<int>(layer));
    }
    if (layers_.empty()) {
      for (int l = 0; l < g.num_layers; ++l) layers_.push_back(l);
    }
    // Snapshot every requested layer now, so the export is consistent.
    for (int l : layers_) {
      Session::LayerSnapshot snap = session_->Snapshot(l);
      const int64_t end = request_.token_end() == 0
                              ? snap.tokens
                              : static_cast<int64_t>(std::min<uint64_t>(request_.token_end(), 1ull << 40));
      const int64_t begin = static_cast<int64_t>(std::min<uint64_t>(request_.token_start(), 1ull << 40));
      if (begin > end || end > snap.tokens) {
        return absl::OutOfRangeError(absl::StrCat(
            "token range [", begin, ", ", end, "): expected within layer ", l,
            "'s ", snap.tokens, " tokens"));
      }
      ranges_.push_back({begin, end});
      snapshots_.push_back(std::move(snap));
    }
    int64_t per_token = 0;
    if (request_.format() == pb::READ_FORMAT_PACKED) {
      for (const planner::HeadPlan& h : session_->profile().layers[0].heads) {
        per_token = std::max<int64_t>(per_token, h.layout.record_bytes * g.num_kv_heads);
      }
    } else {
      per_token = int64_t{2} * g.num_kv_heads * g.head_dim *
                  (request_.format() == pb::READ_FORMAT_FP16 ? 2 : 4);
    }
    chunk_tokens_ = request_.chunk_tokens() > 0
                        ? request_.chunk_tokens()
                        : std::max<int64_t>(1, (1 << 20) / per_token);
    if (chunk_tokens_ * per_token > service_->deps().max_message_bytes - 4096) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk_tokens: ", chunk_tokens_, " tokens exceed the message limit of ",
          service_->deps().max_message_bytes, " bytes"));
    }
    send_plan_ = request_.format() == pb::READ_FORMAT_PACKED;
    return absl::OkStatus();
  }

  void Next() {
    response_.Clear();
    if (send_plan_) {
      send_plan_ = false;
      absl::Status s = Guarded([&] {
        *response_.mutable_plan() = planner::ProfileToProto(session_->profile());
        return absl::OkStatus();
      });
      if (!s.ok()) {
        FinishRecorded(s);
        return;
      }
      StartWrite(&response_);
      return;
    }
    while (index_ < layers_.size() && ranges_[index_].first >= ranges_[index_].second) {
      ++index_;
    }
    if (index_ >= layers_.size()) {
      FinishRecorded(grpc::Status::OK);
      return;
    }
    absl::Status s = Guarded([&] { return FillChunk(); });
    if (!s.ok()) {
      FinishRecorded(s);
      return;
    }
    StartWrite(&response_);
  }

  absl::Status FillChunk() {
    const int layer = layers_[index_];
    auto& [begin, end] = ranges_[index_];
    const int64_t n = std::min(chunk_tokens_, end - begin);
    const planner::ModelGeometry& g = session_->profile().geometry;
    const planner::LayerPlan& plan = session_->profile().layers[layer];
    const kernels::PagedLayerView view = snapshots_[index_].view();
    pb::ReadChunk* chunk = response_.mutable_chunk();
    chunk->set_layer(layer);
    chunk->set_token_start(begin);
    chunk->set_tokens(static_cast<uint32_t>(n));
    if (request_.format() == pb::READ_FORMAT_PACKED) {
      int64_t bytes = 0;
      for (const planner::HeadPlan& h : plan.heads) bytes += h.layout.record_bytes * n;
      std::string* out = chunk->mutable_packed();
      out->resize(bytes);
      absl::Status s = service_->deps().backend->ReadRecords(
          plan, view, begin, n, reinterpret_cast<uint8_t*>(out->data()));
      if (!s.ok()) return s;
    } else {
      std::vector<float> k(static_cast<size_t>(g.num_kv_heads) * n * g.head_dim);
      std::vector<float> v(k.size());
      absl::Status s = service_->deps().backend->DecodeLayer(plan, view, begin, n, k.data(), v.data());
      if (!s.ok()) return s;
      const pb::DType dtype =
          request_.format() == pb::READ_FORMAT_FP16 ? pb::DTYPE_FP16 : pb::DTYPE_FP32;
      const int64_t shape[] = {g.num_kv_heads, n, g.head_dim};
      proto::FloatsToTensor(k, shape, dtype, chunk->mutable_keys());
      proto::FloatsToTensor(v, shape, dtype, chunk->mutable_values());
    }
    begin += n;
    return absl::OkStatus();
  }

  const pb::ReadRequest request_;
  std::shared_ptr<Session> session_;
  std::vector<int> layers_;
  std::vector<std::pair<int64_t, int64_t>> ranges_;
  std::vector<Session::LayerSnapshot> snapshots_;
  int64_t chunk_tokens_ = 1;
  size_t index_ = 0;
  bool send_plan_ = false;
  pb::ReadResponse response_;
};

}  // namespace

void RopeKvService::Record(const char* method, absl::Time start,
                           const grpc::Status& status) const {
  if (deps_.metrics == nullptr) return;
  deps_.metrics->RecordRpc(method, status.error_code(), absl::Now() - start);
}

absl::StatusOr<std::string> RopeKvService::TenantOf(grpc::CallbackServerContext* ctx) const {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  const absl::string_view value =
      it == md.end() ? absl::string_view() : absl::string_view(it->second.data(), it->second.size());
  return deps_.auth->Authenticate(value);
}

absl::Status RopeKvService::DoAttend(const std::string& tenant, const pb::AttendRequest& req,
                                     pb::AttendResponse* resp) const {
  pb::DType out_dtype = req.output_dtype();
  if (out_dtype == pb::DTYPE_UNSPECIFIED) out_dtype = pb::DTYPE_FP32;
  if (out_dtype != pb::DTYPE_FP32 && out_dtype != pb::DTYPE_FP16) {
    return absl::InvalidArgumentError("output_dtype: expected FP16 or FP32");
  }
  if (req.items_size() == 0) {
    return absl::InvalidArgumentError("items: expected at least one item");
  }
  const RequestLimits& limits = deps_.limits;
  if (req.items_size() > limits.max_attend_items) {
    return absl::InvalidArgumentError(absl::StrCat("items: expected at most ", limits.max_attend_items,
                                                   " items per call (--max_attend_items), got ",
                                                   req.items_size()));
  }
  // Every item is checked and converted before any is computed.
  struct Work {
    std::shared_ptr<Session> session;
    int layer = 0;
    int64_t q_len = 0;
    std::vector<float> q, out, lse;
    kernels::AttentionParams params;
    Session::LayerSnapshot snapshot;  // packed-only sessions: what the batch reads
  };
  std::vector<Work> work(req.items_size());
  for (int i = 0; i < req.items_size(); ++i) {
    const pb::AttendItem& item = req.items(i);
    Work& w = work[i];
    const std::string where = absl::StrCat("items[", i, "].");
    if (absl::Status s = ValidateId(item.session_id(), where + "session_id"); !s.ok()) return s;
    absl::StatusOr<std::shared_ptr<Session>> session =
        deps_.sessions->Find(tenant, item.session_id());
    if (!session.ok()) return WithField(session.status(), where);
    w.session = *session;
    const planner::ModelGeometry& g = w.session->profile().geometry;
    if (item.layer() >= static_cast<uint32_t>(g.num_layers)) {
      return absl::OutOfRangeError(absl::StrCat(where, "layer: expected [0, ", g.num_layers,
                                                "), got ", item.layer()));
    }
    w.layer = static_cast<int>(item.layer());
    if (item.queries().shape_size() == 3 &&
        (item.queries().shape(1) < 1 || item.queries().shape(1) > limits.max_q_len)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "queries.shape[1]: expected q_len in [1, ", limits.max_q_len,
          "] (--max_q_len), got ", item.queries().shape(1)));
    }
    absl::StatusOr<std::vector<float>> q =
        proto::TensorToFloats(item.queries(), {g.num_q_heads, -1, g.head_dim}, where + "queries");
    if (!q.ok()) return q.status();
    w.q = *std::move(q);
    w.q_len = item.queries().shape(1);
    // Query i sits at position causal_offset + i, so every position must
    // be a committed token; an offset at or below -q_len hides every token
    // (lse -inf) and is taken as -q_len, so nothing downstream can wrap.
    int64_t causal_offset = 0;
    if (item.has_causal_offset()) {
      const int64_t length = w.session->tokens(w.layer);
      causal_offset = std::max<int64_t>(item.causal_offset(), -w.q_len);
      if (causal_offset > length - w.q_len) {
        return absl::OutOfRangeError(absl::StrCat(
            where, "causal_offset: expected at most layer length - q_len = ", length - w.q_len,
            " (layer ", w.layer, " has ", length, " committed tokens, q_len ", w.q_len, "), got ",
            item.causal_offset(), "; the queries' own tokens must be appended before attending"));
      }
    }
    if (!std::isfinite(item.scale())) {
      return absl::InvalidArgumentError(absl::StrCat(where, "scale: expected a finite value"));
    }
    w.out.resize(w.q.size());
    w.lse.resize(static_cast<size_t>(g.num_q_heads) * w.q_len);
    kernels::AttentionParams& p = w.params;
    p.queries = w.q.data();
    p.num_q_heads = g.num_q_heads;
    p.q_len = static_cast<int>(w.q_len);
    p.causal = item.has_causal_offset();
    p.causal_offset = causal_offset;
    p.scale = item.scale() != 0 ? item.scale() : 1.0f / std::sqrt(static_cast<float>(g.head_dim));
    p.out = w.out.data();
    p.lse = w.lse.data();
  }
  // Sessions without fp16 sinks or window attend from the packed cache
  // alone: those items go to the backend together (and, through the
  // batcher, together with concurrent calls' items). Committed records
  // never change, so a snapshot of the page table is safe to read while
  // the session (held here) lives.
  std::vector<kernels::Backend::AttendItem> batch;
  std::vector<int> batch_index;
  for (int i = 0; i < req.items_size(); ++i) {
    Work& w = work[i];
    if (w.session->PackedOnly()) {
      w.snapshot = w.session->Snapshot(w.layer);
      batch.push_back({&w.session->profile().layers[w.layer], w.snapshot.view(), w.params});
      batch_index.push_back(i);
      continue;
    }
    absl::Status s = w.session->Attend(*deps_.backend, w.layer, w.params);
    if (!s.ok()) return WithField(s, absl::StrCat("items[", i, "]."));
  }
  if (!batch.empty()) {
    absl::Status s = deps_.batcher != nullptr ? deps_.batcher->Run(batch) : deps_.backend->AttendBatch(batch);
    if (!s.ok()) return s;
  }
  for (int i = 0; i < req.items_size(); ++i) {
    Work& w = work[i];
    w.session->Touch();
    const planner::ModelGeometry& g = w.session->profile().geometry;
    pb::AttendResult* r = resp->add_results();
    const int64_t out_shape[] = {g.num_q_heads, w.q_len, g.head_dim};
    const int64_t lse_shape[] = {g.num_q_heads, w.q_len};
    proto::FloatsToTensor(w.out, out_shape, out_dtype, r->mutable_output());
    proto::FloatsToTensor(w.lse, lse_shape, pb::DTYPE_FP32, r->mutable_lse());
  }
  return CheckResponseSize(*resp, deps_.max_message_bytes);
}

grpc::ServerReadReactor<pb::CreateProfileRequest>* RopeKvService::CreateProfile(
    grpc::CallbackServerContext* ctx, pb::ProfileInfo* response) {
  return new CreateProfileReactor(this, ctx, response);
}

grpc::ServerUnaryReactor* RopeKvService::GetProfile(grpc::CallbackServerContext* ctx,
                                                    const pb::GetProfileRequest* req,
                                                    pb::ProfileInfo* resp) {
  return Unary(this, "GetProfile", ctx, [&](const std::string& tenant) -> absl::Status {
    if (absl::Status s = ValidateId(req->profile_id(), "profile_id"); !s.ok()) return s;
    absl::StatusOr<ProfileEntry> e = deps_.profiles->Entry(tenant, req->profile_id());
    if (!e.ok()) return e.status();
    EntryToInfo(*e, req->include_plan(), resp);
    return CheckResponseSize(*resp, deps_.max_message_bytes);
  });
}

grpc::ServerUnaryReactor* RopeKvService::ListProfiles(grpc::CallbackServerContext* ctx,
                                                      const pb::ListProfilesRequest*,
                                                      pb::ListProfilesResponse* resp) {
  return Unary(this, "ListProfiles", ctx, [&](const std::string& tenant) -> absl::Status {
    for (const ProfileEntry& e : deps_.profiles->List(tenant)) {
      EntryToInfo(e, false, resp->add_profiles());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RopeKvService::DeleteProfile(grpc::CallbackServerContext* ctx,
                                                       const pb::DeleteProfileRequest* req,
                                                       pb::DeleteProfileResponse*) {
  return Unary(this, "DeleteProfile", ctx, [&](const std::string& tenant) -> absl::Status {
    if (absl::Status s = ValidateId(req->profile_id(), "profile_id"); !s.ok()) return s;
    const int users = deps_.sessions->CountUsingProfile(tenant, req->profile_id());
    if (users > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "profile '", req->profile_id(), "' is used by ", users, " session(s)"));
    }
    absl::Status s = deps_.profiles->Delete(tenant, req->profile_id());
    if (s.ok()) {
      Log(LogLevel::kInfo, "profile_deleted", {{"tenant", tenant}, {"profile_id", req->profile_id()}});
    }
    return s;
  });
}

grpc::ServerUnaryReactor* RopeKvService::CreateSession(grpc::CallbackServerContext* ctx,
                                                       const pb::CreateSessionRequest* req,
                                                       pb::SessionInfo* resp) {
  return Unary(this, "CreateSession", ctx, [&](const std::string& tenant) -> absl::Status {
    std::string session_id = req->session_id();
    if (!session_id.empty()) {
      if (absl::Status s = ValidateId(session_id, "session_id"); !s.ok()) return s;
    }
    // In a cluster a session lives on the member its id hashes to; a
    // generated id is drawn until it is this member's.
    const std::vector<std::string>& members = deps_.cluster_members;
    if (!members.empty() && session_id.empty()) {
      absl::BitGen gen;
      do {
        session_id = absl::StrFormat("s-%016x", absl::Uniform<uint64_t>(gen));
      } while (members[routing::Owner(members, session_id)] != deps_.cluster_self);
    } else if (!members.empty()) {
      const std::string& owner = members[routing::Owner(members, session_id)];
      if (owner != deps_.cluster_self) {
        ctx->AddTrailingMetadata(routing::kOwnerMetadataKey, owner);
        return absl::FailedPreconditionError(absl::StrCat(
            "session_id: '", session_id, "' belongs to cluster member ", owner, ", not to ",
            deps_.cluster_self, " (route sessions by rendezvous hashing over the members)"));
      }
    }
    if (absl::Status s = ValidateId(req->profile_id(), "profile_id"); !s.ok()) return s;
    if (static_cast<int64_t>(req->sink_tokens()) + req->window_tokens() > kMaxDenseTokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sink_tokens + window_tokens: expected at most ", kMaxDenseTokens, ", got ",
          static_cast<int64_t>(req->sink_tokens()) + req->window_tokens()));
    }
    absl::StatusOr<std::shared_ptr<const planner::ModelProfile>> profile =
        deps_.profiles->Get(tenant, req->profile_id());
    if (!profile.ok()) return profile.status();
    SessionOptions options;
    options.profile_id = req->profile_id();
    options.idle_ttl_seconds = req->idle_ttl_seconds();
    options.sink_tokens = req->sink_tokens();
    options.window_tokens = req->window_tokens();
    absl::StatusOr<std::shared_ptr<Session>> session =
        deps_.sessions->Create(tenant, session_id, options, *profile);
    if (!session.ok()) return session.status();
    StatsToInfo((*session)->Stats(), **session, resp);
    Log(LogLevel::kInfo, "session_created",
        {{"tenant", tenant}, {"session_id", (*session)->id()}, {"profile_id", req->profile_id()}});
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RopeKvService::GetSession(grpc::CallbackServerContext* ctx,
                                                    const pb::GetSessionRequest* req,
                                                    pb::SessionInfo* resp) {
  return Unary(this, "GetSession", ctx, [&](const std::string& tenant) -> absl::Status {
    if (absl::Status s = ValidateId(req->session_id(), "session_id"); !s.ok()) return s;
    absl::StatusOr<std::shared_ptr<Session>> session = deps_.sessions->Find(tenant, req->session_id());
    if (!session.ok()) return session.status();
    StatsToInfo((*session)->Stats(), **session, resp);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RopeKvService::ListSessions(grpc::CallbackServerContext* ctx,
                                                      const pb::ListSessionsRequest*,
                                                      pb::ListSessionsResponse* resp) {
  return Unary(this, "ListSessions", ctx, [&](const std::string& tenant) -> absl::Status {
    for (const std::shared_ptr<Session>& s : deps_.sessions->List(tenant)) {
      StatsToInfo(s->Stats(), *s, resp->add_sessions());
    }
    return CheckResponseSize(*resp, deps_.max_message_bytes);
  });
}

grpc::ServerUnaryReactor* RopeKvService::DropSession(grpc::CallbackServerContext* ctx,
                                                     const pb::DropSessionRequest* req,
                                                     pb::DropSessionResponse*) {
  return Unary(this, "DropSession", ctx, [&](const std::string& tenant) -> absl::Status {
    if (absl::Status s = ValidateId(req->session_id(), "session_id"); !s.ok()) return s;
    absl::Status s = deps_.sessions->Drop(tenant, req->session_id());
    if (s.ok()) {
      Log(LogLevel::kInfo, "session_dropped", {{"tenant", tenant}, {"session_id", req->session_id()}});
    }
    return s;
  });
}

grpc::ServerReadReactor<pb::AppendRequest>* RopeKvService::Append(
    grpc::CallbackServerContext* ctx, pb::AppendResponse* response) {
  return new AppendReactor(this, ctx, response);
}

grpc::ServerUnaryReactor* RopeKvService::Attend(grpc::CallbackServerContext* ctx,
                                                const pb::AttendRequest* req,
                                                pb::AttendResponse* resp) {
  return Unary(this, "Attend", ctx, [&](const std::string& tenant) {
    return DoAttend(tenant, *req, resp);
  });
}

grpc::ServerBidiReactor<pb::AttendRequest, pb::AttendResponse>* RopeKvService::AttendStream(
    grpc::CallbackServerContext* ctx) {
  return new AttendStreamReactor(this, ctx);
}

grpc::ServerWriteReactor<pb::ReadResponse>* RopeKvService::Read(
    grpc::CallbackServerContext* ctx, const pb::ReadRequest* request) {
  return new ReadReactor(this, ctx, request);
}

// ------------------------------------------------------------ server info, echo

grpc::ServerUnaryReactor* RopeKvService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                       const pb::GetServerInfoRequest*,
                                                       pb::ServerInfo* resp) {
  return Unary(this, "GetServerInfo", ctx, [&](const std::string&) -> absl::Status {
    resp->set_backend(deps_.backend->name());
    resp->set_device(deps_.device);
    resp->set_page_bytes(deps_.pool->page_bytes());
    resp->set_total_pages(deps_.pool->total_pages());
    resp->set_free_pages(deps_.pool->free_pages());
    resp->set_host_cpus(static_cast<int>(std::thread::hardware_concurrency()));
    resp->set_echo_enabled(deps_.enable_echo);
    for (const std::string& m : deps_.cluster_members) resp->add_cluster_members(m);
    resp->set_cluster_self(deps_.cluster_self);
    const RequestLimits& l = deps_.limits;
    pb::ServerLimits* out = resp->mutable_limits();
    out->set_max_layers(l.max_layers);
    out->set_max_heads(l.max_heads);
    out->set_max_head_dim(l.max_head_dim);
    out->set_max_profile_bytes(l.max_profile_bytes);
    out->set_tenant_profile_bytes(l.tenant_profile_bytes);
    out->set_max_calibration_tokens(l.max_calibration_tokens);
    out->set_max_chunk_tokens(l.max_chunk_tokens);
    out->set_max_sequence_tokens(l.max_sequence_tokens);
    out->set_max_attend_items(l.max_attend_items);
    out->set_max_q_len(l.max_q_len);
    resp->set_max_message_bytes(deps_.max_message_bytes);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RopeKvService::Echo(grpc::CallbackServerContext* ctx,
                                              const pb::EchoRequest* req, pb::EchoResponse* resp) {
  return Unary(this, "Echo", ctx, [&](const std::string&) -> absl::Status {
    if (!deps_.enable_echo) return absl::UnimplementedError("Echo: the server runs without --enable_echo");
    if (req->response_bytes() < 0 || req->response_bytes() > deps_.max_message_bytes - 64) {
      return absl::InvalidArgumentError(absl::StrCat("response_bytes: expected 0..", deps_.max_message_bytes - 64,
                                                     ", got ", req->response_bytes()));
    }
    resp->set_received_bytes(static_cast<int64_t>(req->payload().size()));
    resp->mutable_payload()->assign(static_cast<size_t>(req->response_bytes()), '\0');
    return absl::OkStatus();
  });
}

class EchoStreamReactor final : public Recorded<grpc::ServerReadReactor<pb::EchoRequest>> {
 public:
  EchoStreamReactor(const RopeKvService* service, grpc::CallbackServerContext* ctx,
                    pb::EchoResponse* response)
      : Recorded(service, "EchoStream"), response_(response) {
    if (!Authenticate(ctx)) return;
    if (!service->deps().enable_echo) {
      FinishRecorded(absl::UnimplementedError("EchoStream: the server runs without --enable_echo"));
      return;
    }
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      response_->set_received_bytes(received_);
      FinishRecorded(absl::OkStatus());
      return;
    }
    received_ += static_cast<int64_t>(request_.payload().size());
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  pb::EchoResponse* response_;
  pb::EchoRequest request_;
  int64_t received_ = 0;
};

grpc::ServerReadReactor<pb::EchoRequest>* RopeKvService::EchoStream(grpc::CallbackServerContext* ctx,
                                                                    pb::EchoResponse* resp) {
  return new EchoStreamReactor(this, ctx, resp);
}

}  // namespace ropekv::service
