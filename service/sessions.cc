#include "service/sessions.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "planner/half.h"

namespace ropekv::service {

Session::Session(std::string id, std::string tenant, SessionOptions options,
                 std::shared_ptr<const planner::ModelProfile> profile, PagePool* pool)
    : id_(std::move(id)),
      tenant_(std::move(tenant)),
      options_(std::move(options)),
      profile_(std::move(profile)),
      pool_(pool),
      created_(absl::Now()),
      last_used_(created_) {
  for (const planner::LayerPlan& l : profile_->layers) {
    // The backend cuts its pages (SessionStore::Create checked that a
    // token fits).
    page_tokens_.push_back(std::max(1, pool_->backend().PageTokens(l, pool_->page_bytes())));
  }
  layers_.resize(profile_->layers.size());
  const planner::ModelGeometry& g = profile_->geometry;
  const size_t row = static_cast<size_t>(g.num_kv_heads) * g.head_dim;
  dense_.resize(profile_->layers.size());
  for (DenseLayer& d : dense_) {
    d.sink_k.resize(row * options_.sink_tokens);
    d.sink_v.resize(row * options_.sink_tokens);
    d.window_k.resize(row * options_.window_tokens);
    d.window_v.resize(row * options_.window_tokens);
  }
}

Session::~Session() {
  absl::MutexLock lock(&mu_);
  for (Layer& l : layers_) pool_->Free(l.pages, tenant_);
}

Session::LayerSnapshot Session::Snapshot(int layer) const {
  absl::MutexLock lock(&mu_);
  LayerSnapshot s;
  s.pages = layers_[layer].pages;
  s.page_tokens = page_tokens_[layer];
  s.tokens = layers_[layer].tokens;
  return s;
}

int64_t Session::tokens(int layer) const {
  absl::MutexLock lock(&mu_);
  return layers_[layer].tokens;
}

SessionStats Session::Stats() const {
  absl::MutexLock lock(&mu_);
  SessionStats s;
  s.session_id = id_;
  s.profile_id = options_.profile_id;
  const planner::ModelGeometry& g = profile_->geometry;
  for (const Layer& l : layers_) {
    s.layer_tokens.push_back(l.tokens);
    s.pages += static_cast<int64_t>(l.pages.size());
    s.bytes_fp16 += l.tokens * g.num_kv_heads * g.head_dim * 4;
  }
  s.bytes_resident = s.pages * pool_->page_bytes() +
                     static_cast<int64_t>(layers_.size()) * g.num_kv_heads * g.head_dim * 4 *
                         (options_.sink_tokens + options_.window_tokens);
  s.idle_ttl_seconds = options_.idle_ttl_seconds;
  s.sink_tokens = options_.sink_tokens;
  s.window_tokens = options_.window_tokens;
  s.created = created_;
  s.last_used = last_used_;
  return s;
}

absl::Status Session::Attend(kernels::Backend& backend, int layer,
                             const kernels::AttentionParams& params) const {
  if (layer < 0 || layer >= static_cast<int>(page_tokens_.size())) {
    return absl::OutOfRangeError(absl::StrCat("layer: expected [0, ", page_tokens_.size(),
                                              "), got ", layer));
  }
  const planner::LayerPlan& plan = profile_->layers[layer];
  const planner::ModelGeometry& g = profile_->geometry;
  // Readers share the lock; a commit waits for them (it never waits long).
  absl::ReaderMutexLock lock(&mu_);
  const Layer& l = layers_[layer];
  const kernels::PagedLayerView view{l.pages.data(), static_cast<int64_t>(l.pages.size()),
                                     page_tokens_[layer], l.tokens};
  const int64_t sinks = std::min(options_.sink_tokens, l.tokens);
  const int64_t window_begin = std::max(sinks, l.tokens - options_.window_tokens);
  if (sinks == 0 && window_begin == l.tokens) {
    return backend.Attend(plan, view, params);  // all packed
  }
  // Partial states over disjoint ranges, merged by lse: sinks [0, sinks),
  // packed [sinks, window_begin), window [window_begin, tokens) (up to two
  // runs of ring slots).
  const size_t rows = static_cast<size_t>(params.num_q_heads) * params.q_len;
  std::vector<std::vector<float>> outs, lses;
  auto run = [&](auto&& call, kernels::AttentionParams p) -> absl::Status {
    outs.emplace_back(rows * g.head_dim);
    lses.emplace_back(rows);
    p.out = outs.back().data();
    p.lse = lses.back().data();
    return call(p);
  };
  const DenseLayer& d = dense_[layer];
  absl::Status s;
  if (sinks > 0) {
    const kernels::DenseKvView sink{d.sink_k.data(), d.sink_v.data(), options_.sink_tokens,
                                    0, sinks, 0};
    s.Update(run([&](const kernels::AttentionParams& p) {
      return backend.AttendDense(g.num_kv_heads, g.head_dim, sink, p);
    }, params));
  }
  if (window_begin > sinks) {
    kernels::AttentionParams p = params;
    p.token_begin = sinks;
    p.token_end = window_begin;
    s.Update(run([&](const kernels::AttentionParams& q) { return backend.Attend(plan, view, q); }, p));
  }
  const int64_t w = options_.window_tokens;
  for (int64_t t = window_begin; t < l.tokens && s.ok();) {
    const int64_t slot = t % w;
    const int64_t n = std::min(l.tokens - t, w - slot);  // up to the ring's end
    const kernels::DenseKvView win{d.window_k.data(), d.window_v.data(), w, slot, n, t};
    s.Update(run([&](const kernels::AttentionParams& p) {
      return backend.AttendDense(g.num_kv_heads, g.head_dim, win, p);
    }, params));
    t += n;
  }
  if (!s.ok()) return s;
  std::vector<const float*> out_ptrs, lse_ptrs;
  for (size_t i = 0; i < outs.size(); ++i) {
    out_ptrs.push_back(outs[i].data());
    lse_ptrs.push_back(lses[i].data());
  }
  kernels::MergeParams m;
  m.partial_out = out_ptrs;
  m.partial_lse = lse_ptrs;
  m.rows = static_cast<int64_t>(rows);
  m.head_dim = g.head_dim;
  m.out = params.out;
  m.lse = params.lse;
  return backend.MergeStates(m);
}

void Session::Touch() {
  absl::MutexLock lock(&mu_);
  last_used_ = absl::Now();
}

absl::Time Session::last_used() const {
  absl::MutexLock lock(&mu_);
  return last_used_;
}

absl::StatusOr<std::unique_ptr<AppendTxn>> AppendTxn::Begin(
    std::shared_ptr<Session> session, kernels::Backend* backend) {
  {
    absl::MutexLock lock(&session->mu_);
    if (session->append_open_) {
      return absl::AbortedError(absl::StrCat(
          "session '", session->id(), "' has another append in progress"));
    }
    session->append_open_ = true;
  }
  return std::unique_ptr<AppendTxn>(new AppendTxn(std::move(session), backend));
}

AppendTxn::AppendTxn(std::shared_ptr<Session> session, kernels::Backend* backend)
    : session_(std::move(session)), backend_(backend) {
  absl::MutexLock lock(&session_->mu_);
  base_ = session_->layers_;
  added_.resize(base_.size());
  pending_.assign(base_.size(), 0);
  window_k_.resize(base_.size());
  window_v_.resize(base_.size());
}

AppendTxn::~AppendTxn() {
  if (committed_) return;  // Commit already released the session
  for (auto& pages : added_) session_->pool_->Free(pages, session_->tenant());
  absl::MutexLock lock(&session_->mu_);
  session_->append_open_ = false;
}

absl::Status AppendTxn::Add(int layer, int64_t token_start, const float* keys,
                            const float* values, int64_t num_tokens) {
  const int num_layers = static_cast<int>(base_.size());
  if (layer < 0 || layer >= num_layers) {
    return absl::OutOfRangeError(
        absl::StrCat("layer: expected [0, ", num_layers, "), got ", layer));
  }
  const int64_t length = base_[layer].tokens + pending_[layer];
  if (token_start != length) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token_start: expected ", length, " (the length of layer ", layer,
        " including this stream's tokens), got ", token_start));
  }
  if (num_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: expected at least one token, got ", num_tokens));
  }
  const int page_tokens = session_->page_tokens(layer);
  const int64_t have = static_cast<int64_t>(base_[layer].pages.size() + added_[layer].size());
  const int64_t need = (length + num_tokens + page_tokens - 1) / page_tokens;
  if (need > have) {
    absl::StatusOr<std::vector<uint8_t*>> pages =
        session_->pool_->Allocate(need - have, session_->tenant());
    if (!pages.ok()) return pages.status();
    added_[layer].insert(added_[layer].end(), pages->begin(), pages->end());
  }
  std::vector<uint8_t*> table = base_[layer].pages;
  table.insert(table.end(), added_[layer].begin(), added_[layer].end());
  const kernels::PagedLayerView view{table.data(), static_cast<int64_t>(table.size()),
                                     page_tokens, length};
  absl::Status s = backend_->EncodeLayer(session_->profile().layers[layer], view,
                                         token_start, keys, values, num_tokens);
  if (!s.ok()) return s;
  // fp16 copies: sink slots directly (past the committed length, unseen),
  // window slots staged until commit (they may hold visible tokens).
  const SessionOptions& o = session_->options();
  const planner::ModelGeometry& g = session_->profile().geometry;
  const int d = g.head_dim;
  Session::DenseLayer& dense = session_->dense_[layer];
  if (o.window_tokens > 0 && window_k_[layer].empty()) {
    window_k_[layer].resize(dense.window_k.size());
    window_v_[layer].resize(dense.window_v.size());
  }
  for (int h = 0; h < g.num_kv_heads; ++h) {
    for (int64_t i = 0; i < num_tokens; ++i) {
      const int64_t t = token_start + i;
      const float* k = keys + (h * num_tokens + i) * d;
      const float* v = values + (h * num_tokens + i) * d;
      if (t < o.sink_tokens) {
        uint16_t* kd = dense.sink_k.data() + (h * o.sink_tokens + t) * d;
        uint16_t* vd = dense.sink_v.data() + (h * o.sink_tokens + t) * d;
        for (int c = 0; c < d; ++c) {
          kd[c] = planner::FloatToHalf(k[c]);
          vd[c] = planner::FloatToHalf(v[c]);
        }
      }
      if (o.window_tokens > 0 && t >= token_start + num_tokens - o.window_tokens) {
        const int64_t slot = t % o.window_tokens;
        uint16_t* kd = window_k_[layer].data() + (h * o.window_tokens + slot) * d;
        uint16_t* vd = window_v_[layer].data() + (h * o.window_tokens + slot) * d;
        for (int c = 0; c < d; ++c) {
          kd[c] = planner::FloatToHalf(k[c]);
          vd[c] = planner::FloatToHalf(v[c]);
        }
      }
    }
  }
  pending_[layer] += num_tokens;
  tokens_added_ += num_tokens;
  return absl::OkStatus();
}

std::vector<int64_t> AppendTxn::Commit() {
  absl::MutexLock lock(&session_->mu_);
  std::vector<int64_t> lengths;
  const SessionOptions& o = session_->options();
  const planner::ModelGeometry& g = session_->profile().geometry;
  const int64_t row = g.head_dim;
  for (size_t l = 0; l < base_.size(); ++l) {
    Session::Layer& layer = session_->layers_[l];
    layer.pages.insert(layer.pages.end(), added_[l].begin(), added_[l].end());
    const int64_t old_len = layer.tokens;
    layer.tokens += pending_[l];
    lengths.push_back(layer.tokens);
    if (o.window_tokens == 0 || pending_[l] == 0) continue;
    Session::DenseLayer& dense = session_->dense_[l];
    for (int64_t t = std::max(old_len, layer.tokens - o.window_tokens); t < layer.tokens; ++t) {
      const int64_t slot = t % o.window_tokens;
      for (int h = 0; h < g.num_kv_heads; ++h) {
        const int64_t at = (h * o.window_tokens + slot) * row;
        std::copy_n(window_k_[l].data() + at, row, dense.window_k.data() + at);
        std::copy_n(window_v_[l].data() + at, row, dense.window_v.data() + at);
      }
    }
  }
  session_->last_used_ = absl::Now();
  // The next append may start as soon as the client sees this one's reply.
  session_->append_open_ = false;
  committed_ = true;
  return lengths;
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Create(
    const std::string& tenant, std::string id, SessionOptions options,
    std::shared_ptr<const planner::ModelProfile> profile) {
  absl::MutexLock lock(&mu_);
  if (id.empty()) {
    static thread_local std::mt19937_64 gen(std::random_device{}());
    do {
      id = absl::StrFormat("s-%016x", gen());
    } while (sessions_.count({tenant, id}) != 0);
  }
  if (sessions_.count({tenant, id}) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("session '", id, "' already exists"));
  }
  // A profile whose token does not fit a page cannot be stored here.
  for (size_t l = 0; l < profile->layers.size(); ++l) {
    if (pool_->backend().PageTokens(profile->layers[l], pool_->page_bytes()) < 1) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "profile_id: one token of layer ", l, " takes ", pool_->backend().PageBytesPerToken(profile->layers[l]),
          " bytes, more than a page of ", pool_->page_bytes(), " bytes (--page_bytes)"));
    }
  }
  auto session = std::make_shared<Session>(id, tenant, std::move(options),
                                           std::move(profile), pool_);
  sessions_[{tenant, id}] = session;
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionStore::Find(const std::string& tenant,
                                                            const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find({tenant, id});
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session '", id, "' not found"));
  }
  return it->second;
}

absl::Status SessionStore::Drop(const std::string& tenant, const std::string& id) {
  std::shared_ptr<Session> dropped;  // released outside the lock
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find({tenant, id});
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session '", id, "' not found"));
  }
  dropped = std::move(it->second);
  sessions_.erase(it);
  return absl::OkStatus();
}

std::vector<std::shared_ptr<Session>> SessionStore::List(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Session>> out;
  for (const auto& [key, s] : sessions_) {
    if (key.first == tenant) out.push_back(s);
  }
  return out;
}

int SessionStore::CountUsingProfile(const std::string& tenant,
                                    const std::string& profile_id) const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [key, s] : sessions_) {
    n += key.first == tenant && s->options().profile_id == profile_id;
  }
  return n;
}

int SessionStore::ExpireIdle(absl::Time now) {
  std::vector<std::shared_ptr<Session>> expired;
  absl::MutexLock lock(&mu_);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    const int64_t ttl = it->second->options().idle_ttl_seconds;
    if (ttl > 0 && now - it->second->last_used() > absl::Seconds(ttl)) {
      expired.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return static_cast<int>(expired.size());
}

SessionStore::Totals SessionStore::Total() const {
  std::vector<std::shared_ptr<Session>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, s] : sessions_) all.push_back(s);
  }
  Totals t;
  for (const std::shared_ptr<Session>& s : all) {
    const SessionStats stats = s->Stats();
    ++t.sessions;
    t.bytes_resident += stats.bytes_resident;
    t.bytes_fp16 += stats.bytes_fp16;
  }
  return t;
}

int64_t SessionStore::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

}  // namespace ropekv::service
