// Sessions: one sequence's packed cache under one profile, in pages of the
// shared PagePool, with a page table per layer (appends never copy).
//
// Visibility: a layer's committed length only grows when an append stream
// commits; an open append writes records past the committed length (in the
// layer's last page and in pages it holds privately), which no reader
// looks at, so an aborted append leaves the session exactly as before.
// Pages of a dropped session are returned when its last user lets go.
//
// Thread safety: SessionStore and Session are thread-safe. An AppendTxn is
// used by one stream at a time; only one may be open per session.
#ifndef ROPEKV_SERVICE_SESSIONS_H_
#define ROPEKV_SERVICE_SESSIONS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "planner/plan.h"
#include "service/page_pool.h"

namespace ropekv::service {

// Most fp16 tokens (sinks + window) a session may keep per layer.
inline constexpr int64_t kMaxDenseTokens = 65536;

struct SessionOptions {
  std::string profile_id;
  int64_t idle_ttl_seconds = 0;  // 0 = never expires
  // The first sink_tokens and the last window_tokens tokens of every layer
  // are also kept in fp16 and attended exactly; the packed cache serves the
  // rest. Their buffers are allocated at creation, outside the page pool.
  int64_t sink_tokens = 0;
  int64_t window_tokens = 0;
};

// Point-in-time numbers of a session.
struct SessionStats {
  std::string session_id;
  std::string profile_id;
  std::vector<int64_t> layer_tokens;
  int64_t pages = 0;
  int64_t bytes_resident = 0;
  int64_t bytes_fp16 = 0;
  int64_t idle_ttl_seconds = 0;
  int64_t sink_tokens = 0;
  int64_t window_tokens = 0;
  absl::Time created;
  absl::Time last_used;
};

class Session {
 public:
  Session(std::string id, std::string tenant, SessionOptions options,
          std::shared_ptr<const planner::ModelProfile> profile, PagePool* pool);
  ~Session();  // returns every page to the pool
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const std::string& tenant() const { return tenant_; }
  const planner::ModelProfile& profile() const { return *profile_; }
  const SessionOptions& options() const { return options_; }

  // Tokens per page of `layer` (its records for all KV heads fit a page).
  int page_tokens(int layer) const { return page_tokens_[layer]; }

  // A consistent copy of one layer's page table and committed length.
  struct LayerSnapshot {
    std::vector<uint8_t*> pages;
    int page_tokens = 0;
    int64_t tokens = 0;
    kernels::PagedLayerView view() const {
      return {pages.data(), static_cast<int64_t>(pages.size()), page_tokens, tokens};
    }
  };
  LayerSnapshot Snapshot(int layer) const;
  // Committed tokens of `layer` (it only grows). REQUIRES: a valid layer.
  int64_t tokens(int layer) const;

  // Attention of one layer over every committed token: the packed cache,
  // merged (by lse) with the fp16 sinks and window when the session has
  // them. params.token_begin/token_end must be left at their defaults.
  // OUT_OF_RANGE for a bad layer; otherwise as the backend's calls.
  absl::Status Attend(kernels::Backend& backend, int layer,
                      const kernels::AttentionParams& params) const;

  // No fp16 sinks or window: attention reads the packed cache alone.
  bool PackedOnly() const { return options_.sink_tokens == 0 && options_.window_tokens == 0; }

  SessionStats Stats() const;
  void Touch();
  absl::Time last_used() const;

 private:
  friend class AppendTxn;
  struct Layer {
    std::vector<uint8_t*> pages;
    int64_t tokens = 0;
  };
  // fp16 [num_kv_heads, capacity, head_dim] buffers of one layer. Sink slot
  // t holds token t; window slot t % window holds token t.
  struct DenseLayer {
    std::vector<uint16_t> sink_k, sink_v, window_k, window_v;
  };

  const std::string id_;
  const std::string tenant_;
  const SessionOptions options_;
  const std::shared_ptr<const planner::ModelProfile> profile_;
  PagePool* const pool_;
  const absl::Time created_;
  std::vector<int> page_tokens_;  // per layer, fixed at creation
  mutable absl::Mutex mu_;
  std::vector<Layer> layers_ ABSL_GUARDED_BY(mu_);
  // Window slots change only under mu_ (commit); sink slots at or past a
  // layer's committed length are written by the open append, unseen.
  std::vector<DenseLayer> dense_;
  bool append_open_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_used_ ABSL_GUARDED_BY(mu_);
};

// One Append stream's pending tokens.
class AppendTxn {
 public:
  // ABORTED when another append to the session is open.
  static absl::StatusOr<std::unique_ptr<AppendTxn>> Begin(
      std::shared_ptr<Session> session, kernels::Backend* backend);
  // Aborts unless committed: pages it took go back, the session is as before
  // and takes the next append.
  ~AppendTxn();

  // Encodes tokens [token_start, token_start + num_tokens) of `layer`.
  // keys/values: [num_kv_heads, num_tokens, head_dim] fp32.
  // OUT_OF_RANGE for a bad layer; FAILED_PRECONDITION when token_start is
  // not the layer's length; RESOURCE_EXHAUSTED when pages run out;
  // INVALID_ARGUMENT for values the codec refuses.
  absl::Status Add(int layer, int64_t token_start, const float* keys,
                   const float* values, int64_t num_tokens);
  // Makes every added token visible at once and ends the transaction (the
  // session takes the next append). Returns the committed lengths.
  // REQUIRES: called at most once.
  std::vector<int64_t> Commit();

  int64_t tokens_added() const { return tokens_added_; }
  Session& session() { return *session_; }

 private:
  AppendTxn(std::shared_ptr<Session> session, kernels::Backend* backend);

  std::shared_ptr<Session> session_;
  kernels::Backend* backend_;
  std::vector<Session::Layer> base_;          // committed state at Begin
  std::vector<std::vector<uint8_t*>> added_;  // pages taken, per layer
  std::vector<int64_t> pending_;              // tokens added, per layer
  // Window tokens this append wrote (same slot rule as the session's).
  std::vector<std::vector<uint16_t>> window_k_, window_v_;
  int64_t tokens_added_ = 0;
  bool committed_ = false;
};

class SessionStore {
 public:
  explicit SessionStore(PagePool* pool) : pool_(pool) {}

  // ALREADY_EXISTS for a taken id. An empty id gets a generated one.
  absl::StatusOr<std::shared_ptr<Session>> Create(
      const std::string& tenant, std::string id, SessionOptions options,
      std::shared_ptr<const planner::ModelProfile> profile);
  // NOT_FOUND for an unknown id or another tenant's.
  absl::StatusOr<std::shared_ptr<Session>> Find(const std::string& tenant,
                                                const std::string& id) const;
  absl::Status Drop(const std::string& tenant, const std::string& id);
  std::vector<std::shared_ptr<Session>> List(const std::string& tenant) const;
  // Sessions of `tenant` created on `profile_id`.
  int CountUsingProfile(const std::string& tenant, const std::string& profile_id) const;
  // Drops sessions idle past their TTL; returns how many.
  int ExpireIdle(absl::Time now);
  int64_t size() const;

  // Sums over every tenant's sessions (for metrics).
  struct Totals {
    int64_t sessions = 0;
    int64_t bytes_resident = 0;
    int64_t bytes_fp16 = 0;
  };
  Totals Total() const;

 private:
  PagePool* const pool_;
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_SESSIONS_H_
