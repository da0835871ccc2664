#include "client/cluster.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "proto/routing.h"
#include "proto/tensor_util.h"

namespace ropekv::client {
namespace {

namespace pb = ::ropekv::v1;

// Query positions [begin, end) of an [num_q_heads, q_len, head_dim] tensor,
// any dtype (the element size follows from the data length).
pb::Tensor QueryRows(const pb::Tensor& t, int64_t begin, int64_t end) {
  const int64_t heads = t.shape(0), q_len = t.shape(1), d = t.shape(2);
  const int64_t elem = static_cast<int64_t>(t.data().size()) / std::max<int64_t>(1, heads * q_len * d);
  pb::Tensor out;
  out.set_dtype(t.dtype());
  out.add_shape(heads);
  out.add_shape(end - begin);
  out.add_shape(d);
  for (int64_t h = 0; h < heads; ++h) {
    out.mutable_data()->append(t.data(), ((h * q_len + begin) * d) * elem, (end - begin) * d * elem);
  }
  return out;
}

// Two results over query positions [0, r) and [r, q_len) as one (fp32).
absl::StatusOr<pb::AttendResult> JoinRows(const pb::AttendResult& a, const pb::AttendResult& b) {
  absl::StatusOr<std::vector<float>> oa = proto::TensorToFloats(a.output(), {-1, -1, -1}, "output");
  absl::StatusOr<std::vector<float>> ob = proto::TensorToFloats(b.output(), {-1, -1, -1}, "output");
  absl::StatusOr<std::vector<float>> la = proto::TensorToFloats(a.lse(), {-1, -1}, "lse", false);
  absl::StatusOr<std::vector<float>> lb = proto::TensorToFloats(b.lse(), {-1, -1}, "lse", false);
  for (const auto* x : {&oa, &ob, &la, &lb}) {
    if (!x->ok()) return x->status();
  }
  const int64_t heads = a.output().shape(0), ra = a.output().shape(1), rb = b.output().shape(1),
                d = a.output().shape(2);
  std::vector<float> out, lse;
  for (int64_t h = 0; h < heads; ++h) {
    out.insert(out.end(), oa->begin() + h * ra * d, oa->begin() + (h + 1) * ra * d);
    out.insert(out.end(), ob->begin() + h * rb * d, ob->begin() + (h + 1) * rb * d);
    lse.insert(lse.end(), la->begin() + h * ra, la->begin() + (h + 1) * ra);
    lse.insert(lse.end(), lb->begin() + h * rb, lb->begin() + (h + 1) * rb);
  }
  pb::AttendResult r;
  const int64_t out_shape[] = {heads, ra + rb, d};
  const int64_t lse_shape[] = {heads, ra + rb};
  proto::FloatsToTensor(out, out_shape, pb::DTYPE_FP32, r.mutable_output());
  proto::FloatsToTensor(lse, lse_shape, pb::DTYPE_FP32, r.mutable_lse());
  return r;
}

// "host:port" -> every address of host as "address:port" (IPv6 bracketed).
absl::StatusOr<std::vector<std::string>> Resolve(const std::string& name) {
  const size_t colon = name.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == name.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dns_name: expected host:port, got '", name, "'"));
  }
  const std::string host = name.substr(0, colon), port = name.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int err = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); err != 0) {
    return absl::UnavailableError(absl::StrCat("dns_name ", name, ": ", gai_strerror(err)));
  }
  std::set<std::string> members;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) != 0) {
      continue;
    }
    members.insert(a->ai_family == AF_INET6 ? absl::StrCat("[", text, "]:", port)
                                            : absl::StrCat(text, ":", port));
  }
  freeaddrinfo(found);
  if (members.empty()) return absl::UnavailableError(absl::StrCat("dns_name ", name, ": no addresses"));
  return std::vector<std::string>(members.begin(), members.end());
}

// Runs fn(i) for each index concurrently; returns the statuses in order.
template <typename Fn>
std::vector<absl::Status> ForEachConcurrently(size_t n, Fn fn) {
  std::vector<absl::Status> statuses(n);
  std::vector<std::thread> threads;
  for (size_t i = 1; i < n; ++i) threads.emplace_back([&, i] { statuses[i] = fn(i); });
  if (n > 0) statuses[0] = fn(0);
  for (std::thread& t : threads) t.join();
  return statuses;
}

absl::Status FirstError(const std::vector<absl::Status>& statuses) {
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The first `count` tokens from token `from` of a [heads, tokens, d] buffer.
std::vector<float> TokenSlice(absl::Span<const float> data, int heads, int64_t tokens, int d,
                              int64_t from, int64_t count) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(heads) * count * d);
  for (int h = 0; h < heads; ++h) {
    const float* begin = data.data() + (h * tokens + from) * d;
    out.insert(out.end(), begin, begin + count * d);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Connect(const ClusterOptions& options) {
  std::vector<std::string> members = options.members;
  if (members.empty() && !options.dns_name.empty()) {
    absl::StatusOr<std::vector<std::string>> resolved = Resolve(options.dns_name);
    if (!resolved.ok()) return resolved.status();
    members = *std::move(resolved);
  }
  if (members.empty()) {
    return absl::InvalidArgumentError("members: expected at least one member (or a dns_name)");
  }
  if (std::set<std::string>(members.begin(), members.end()).size() != members.size()) {
    return absl::InvalidArgumentError("members: expected distinct names");
  }
  std::unique_ptr<ClusterClient> cluster(new ClusterClient());
  for (const std::string& m : members) {
    ClientOptions o = options.client;
    o.target = m;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    if (!c.ok()) return c.status();
    cluster->clients_.push_back(*std::move(c));
  }
  cluster->members_ = std::move(members);
  return cluster;
}

size_t ClusterClient::OwnerOf(absl::string_view session_id) const {
  return routing::Owner(members_, session_id);
}

absl::StatusOr<pb::ProfileInfo> ClusterClient::CreateProfile(const pb::ProfileSpec& spec) {
  std::vector<pb::ProfileInfo> infos(clients_.size());
  const absl::Status s = FirstError(ForEachConcurrently(clients_.size(), [&](size_t i) {
    absl::StatusOr<pb::ProfileInfo> info = clients_[i]->CreateProfile(spec);
    if (!info.ok()) return info.status();
    infos[i] = *std::move(info);
    return absl::OkStatus();
  }));
  if (!s.ok()) return s;
  return infos[0];
}

absl::Status ClusterClient::DeleteProfile(const std::string& profile_id) {
  return FirstError(ForEachConcurrently(
      clients_.size(), [&](size_t i) { return clients_[i]->DeleteProfile(profile_id); }));
}

absl::StatusOr<pb::SessionInfo> ClusterClient::CreateSession(const pb::CreateSessionRequest& request) {
  if (request.session_id().empty()) {
    return absl::InvalidArgumentError(
        "session_id: expected an id (a cluster routes sessions by their id)");
  }
  return ForSession(request.session_id()).CreateSession(request);
}

absl::StatusOr<pb::SessionInfo> ClusterClient::GetSession(const std::string& session_id) {
  return ForSession(session_id).GetSession(session_id);
}

absl::Status ClusterClient::DropSession(const std::string& session_id) {
  return ForSession(session_id).DropSession(session_id);
}

absl::StatusOr<pb::AppendResponse> ClusterClient::Append(const std::string& session_id,
                                                         absl::Span<const LayerKv> layers) {
  return ForSession(session_id).Append(session_id, layers);
}

absl::Status ClusterClient::Read(const pb::ReadRequest& request,
                                 const std::function<bool(const pb::ReadResponse&)>& on_message) {
  return ForSession(request.session_id()).Read(request, on_message);
}

absl::StatusOr<pb::AttendResponse> ClusterClient::Attend(const pb::AttendRequest& request) {
  // Item indices per owner, in order.
  std::map<size_t, std::vector<int>> by_member;
  for (int i = 0; i < request.items_size(); ++i) {
    by_member[OwnerOf(request.items(i).session_id())].push_back(i);
  }
  std::vector<std::pair<size_t, std::vector<int>>> groups(by_member.begin(), by_member.end());
  std::vector<pb::AttendResponse> parts(groups.size());
  const absl::Status s = FirstError(ForEachConcurrently(groups.size(), [&](size_t g) {
    pb::AttendRequest sub;
    sub.set_output_dtype(request.output_dtype());
    for (int i : groups[g].second) *sub.add_items() = request.items(i);
    absl::StatusOr<pb::AttendResponse> r = clients_[groups[g].first]->Attend(sub);
    if (!r.ok()) return r.status();
    parts[g] = *std::move(r);
    return absl::OkStatus();
  }));
  if (!s.ok()) return s;
  pb::AttendResponse out;
  for (int i = 0; i < request.items_size(); ++i) out.add_results();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t j = 0; j < groups[g].second.size(); ++j) {
      *out.mutable_results(groups[g].second[j]) = std::move(*parts[g].mutable_results(static_cast<int>(j)));
    }
  }
  return out;
}

absl::StatusOr<std::vector<pb::SessionInfo>> ClusterClient::ListSessions() {
  std::vector<std::vector<pb::SessionInfo>> lists(clients_.size());
  const absl::Status s = FirstError(ForEachConcurrently(clients_.size(), [&](size_t i) {
    absl::StatusOr<std::vector<pb::SessionInfo>> l = clients_[i]->ListSessions();
    if (!l.ok()) return l.status();
    lists[i] = *std::move(l);
    return absl::OkStatus();
  }));
  if (!s.ok()) return s;
  std::vector<pb::SessionInfo> all;
  for (auto& l : lists) all.insert(all.end(), l.begin(), l.end());
  return all;
}

absl::StatusOr<ShardedSession> ClusterClient::CreateShardedSession(const std::string& id,
                                                                   const std::string& profile_id,
                                                                   int shards, int64_t shard_tokens) {
  if (shards < 1 || shard_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shards, shard_tokens: expected >= 1, got ", shards, ", ", shard_tokens));
  }
  ShardedSession out;
  out.id = id;
  out.shard_tokens = shard_tokens;
  const std::vector<size_t> ranking = routing::Ranking(members_, id);
  for (int i = 0; i < shards; ++i) {
    const size_t want = ranking[i % ranking.size()];
    // Expected tries: the member count.
    for (int k = 0;; ++k) {
      std::string shard_id = absl::StrCat(id, ".shard", i, "-", k);
      if (OwnerOf(shard_id) == want) {
        out.shard_session_ids.push_back(std::move(shard_id));
        break;
      }
    }
  }
  for (size_t i = 0; i < out.shard_session_ids.size(); ++i) {
    pb::CreateSessionRequest req;
    req.set_session_id(out.shard_session_ids[i]);
    req.set_profile_id(profile_id);
    absl::StatusOr<pb::SessionInfo> created = CreateSession(req);
    if (!created.ok()) {
      for (size_t j = 0; j < i; ++j) DropSession(out.shard_session_ids[j]).IgnoreError();
      return absl::Status(created.status().code(),
                          absl::StrCat("shard ", i, " (", out.shard_session_ids[i], "): ",
                                       created.status().message()));
    }
  }
  return out;
}

absl::Status ClusterClient::AppendSharded(const ShardedSession& session,
                                          absl::Span<const LayerKv> layers) {
  const int64_t cap = session.shard_tokens;
  // Slices per shard, in shard order; spans stay valid while `storage` lives.
  std::map<int64_t, std::vector<LayerKv>> per_shard;
  std::vector<std::vector<float>> storage;
  storage.reserve(layers.size() * 2 * (session.shard_session_ids.size() + 1));
  for (const LayerKv& l : layers) {
    if (l.token_start < 0 || l.tokens < 1 ||
        l.token_start + l.tokens > cap * static_cast<int64_t>(session.shard_session_ids.size())) {
      return absl::OutOfRangeError(absl::StrCat(
          "layers[", l.layer, "]: tokens [", l.token_start, ", ", l.token_start + l.tokens,
          ") do not fit ", session.shard_session_ids.size(), " shards of ", cap));
    }
    for (int64_t t = l.token_start; t < l.token_start + l.tokens;) {
      const int64_t shard = t / cap;
      const int64_t n = std::min(l.token_start + l.tokens, (shard + 1) * cap) - t;
      const int64_t from = t - l.token_start;
      storage.push_back(TokenSlice(l.keys, l.num_kv_heads, l.tokens, l.head_dim, from, n));
      storage.push_back(TokenSlice(l.values, l.num_kv_heads, l.tokens, l.head_dim, from, n));
      per_shard[shard].push_back({l.layer, t - shard * cap, l.num_kv_heads, n, l.head_dim,
                                  storage[storage.size() - 2], storage.back()});
      t += n;
    }
  }
  for (const auto& [shard, parts] : per_shard) {
    const std::string& id = session.shard_session_ids[shard];
    absl::StatusOr<pb::AppendResponse> r = Append(id, parts);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("shard ", shard, " (", id, "): ",
                                                          r.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::AttendResult> ClusterClient::AttendSharded(const ShardedSession& session,
                                                              const pb::AttendItem& item) {
  if (item.queries().shape_size() != 3) {
    return absl::InvalidArgumentError("queries: expected [num_q_heads, q_len, head_dim]");
  }
  const int64_t q_len = item.queries().shape(1);
  // Shards that at least one query position sees.
  std::vector<int64_t> shards;
  for (int64_t s = 0; s < static_cast<int64_t>(session.shard_session_ids.size()); ++s) {
    const int64_t begin = s * session.shard_tokens;
    if (item.has_causal_offset() && begin > item.causal_offset() + q_len - 1) break;
    shards.push_back(s);
  }
  std::vector<pb::AttendResult> parts(shards.size());
  const absl::Status status = FirstError(ForEachConcurrently(shards.size(), [&](size_t i) {
    pb::AttendRequest req;
    req.set_output_dtype(pb::DTYPE_FP32);
    pb::AttendItem* local = req.add_items();
    *local = item;
    local->set_session_id(session.shard_session_ids[shards[i]]);
    // The server wants every query position to be a committed token of the
    // session it asks. A shard before the queries' own is full (cap
    // tokens): rows that see all of it go without an offset, and when the
    // rows straddle its end they are split into two items.
    const int64_t cap = session.shard_tokens;
    int64_t split = 0;  // rows [split, q_len) see the whole shard
    if (item.has_causal_offset()) {
      const int64_t local_offset = item.causal_offset() - shards[i] * cap;
      if (local_offset + q_len <= cap) {
        local->set_causal_offset(local_offset);
      } else if (local_offset >= cap - 1) {
        local->clear_causal_offset();
      } else {
        split = cap - local_offset;
        *local->mutable_queries() = QueryRows(item.queries(), 0, split);
        local->set_causal_offset(local_offset);
        pb::AttendItem* rest = req.add_items();
        *rest = *local;
        rest->clear_causal_offset();
        *rest->mutable_queries() = QueryRows(item.queries(), split, q_len);
      }
    }
    absl::StatusOr<pb::AttendResponse> r = ForSession(local->session_id()).Attend(req);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("shard ", shards[i], ": ", r.status().message()));
    }
    if (split == 0) {
      parts[i] = std::move(*r->mutable_results(0));
      return absl::OkStatus();
    }
    absl::StatusOr<pb::AttendResult> joined = JoinRows(r->results(0), r->results(1));
    if (!joined.ok()) return joined.status();
    parts[i] = *std::move(joined);
    return absl::OkStatus();
  }));
  if (!status.ok()) return status;
  if (parts.empty()) return absl::InvalidArgumentError("causal_offset: no query sees any token");

  // out = sum_s w_s out_s / sum_s w_s and lse = m + log sum_s w_s, with
  // w_s = exp(lse_s - m), m the largest lse of the row (rows that see no
  // token in a shard have lse -inf there and weigh 0).
  std::vector<std::vector<float>> outs, lses;
  for (const pb::AttendResult& p : parts) {
    absl::StatusOr<std::vector<float>> o = proto::TensorToFloats(p.output(), {-1, -1, -1}, "output");
    absl::StatusOr<std::vector<float>> l = proto::TensorToFloats(p.lse(), {-1, -1}, "lse", false);
    if (!o.ok()) return o.status();
    if (!l.ok()) return l.status();
    outs.push_back(*std::move(o));
    lses.push_back(*std::move(l));
  }
  const size_t rows = lses[0].size();
  const size_t d = outs[0].size() / std::max<size_t>(rows, 1);
  std::vector<float> out(rows * d), lse(rows);
  for (size_t r = 0; r < rows; ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (const auto& l : lses) m = std::max<double>(m, l[r]);
    if (std::isinf(m)) {
      lse[r] = -std::numeric_limits<float>::infinity();
      continue;  // out stays 0
    }
    double total = 0;
    std::vector<double> acc(d, 0.0);
    for (size_t s = 0; s < parts.size(); ++s) {
      const double w = std::exp(static_cast<double>(lses[s][r]) - m);
      total += w;
      for (size_t j = 0; j < d; ++j) acc[j] += w * outs[s][r * d + j];
    }
    for (size_t j = 0; j < d; ++j) out[r * d + j] = static_cast<float>(acc[j] / total);
    lse[r] = static_cast<float>(m + std::log(total));
  }
  pb::AttendResult merged;
  proto::FloatsToTensor(out, std::vector<int64_t>(parts[0].output().shape().begin(),
                                                  parts[0].output().shape().end()),
                        pb::DTYPE_FP32, merged.mutable_output());
  proto::FloatsToTensor(lse, std::vector<int64_t>(parts[0].lse().shape().begin(),
                                                  parts[0].lse().shape().end()),
                        pb::DTYPE_FP32, merged.mutable_lse());
  return merged;
}

absl::Status ClusterClient::DropShardedSession(const ShardedSession& session) {
  absl::Status first;
  for (const std::string& id : session.shard_session_ids) first.Update(DropSession(id));
  return first;
}

}  // namespace ropekv::client
