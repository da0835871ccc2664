#include "service/sessions.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ropekv::service {

namespace {

int64_t TokenBytes(const planner::LayerPlan& layer) {
  int64_t bytes = 0;
  for (const planner::HeadPlan& h : layer.heads) bytes += h.layout.record_bytes;
  return bytes;
}

}  // namespace

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
    page_tokens_.push_back(static_cast<int>(std::max<int64_t>(1, pool_->page_bytes() / TokenBytes(l))));
  }
  layers_.resize(profile_->layers.size());
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
  s.bytes_resident = s.pages * pool_->page_bytes();
  s.idle_ttl_seconds = options_.idle_ttl_seconds;
  s.created = created_;
  s.last_used = last_used_;
  return s;
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
  pending_[layer] += num_tokens;
  tokens_added_ += num_tokens;
  return absl::OkStatus();
}

std::vector<int64_t> AppendTxn::Commit() {
  absl::MutexLock lock(&session_->mu_);
  std::vector<int64_t> lengths;
  for (size_t l = 0; l < base_.size(); ++l) {
    Session::Layer& layer = session_->layers_[l];
    layer.pages.insert(layer.pages.end(), added_[l].begin(), added_[l].end());
    layer.tokens += pending_[l];
    lengths.push_back(layer.tokens);
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
