#include "service/profiles.h"

#include <cmath>
#include <filesystem>
#include <tuple>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "planner/profile_io.h"
#include "proto/tensor_util.h"

namespace ropekv::service {

namespace fs = std::filesystem;
namespace pb = ::ropekv::v1;

absl::Status ValidateId(const std::string& id, const std::string& field) {
  bool ok = !id.empty() && id.size() <= 128 && id != "." && id != "..";
  for (char c : id) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": expected 1-128 characters of [A-Za-z0-9._-], got '",
        id.substr(0, 160), "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ProfileBuilder>> ProfileBuilder::Start(
    const pb::ProfileSpec& spec, const std::string& tenant, const RequestLimits& limits,
    ProfileMemory* memory) {
  if (absl::Status s = ValidateId(spec.profile_id(), "spec.profile_id"); !s.ok()) return s;
  // Bounds first, on the wire values: everything below is sized by them.
  if (absl::Status s = CheckGeometryLimits(spec.geometry(), limits); !s.ok()) return s;
  absl::StatusOr<planner::ModelGeometry> g = planner::GeometryFromProto(spec.geometry());
  if (!g.ok()) return absl::InvalidArgumentError(absl::StrCat("spec.", g.status().message()));
  absl::StatusOr<planner::Budget> b = planner::BudgetFromProto(spec.budget(), true);
  if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("spec.", b.status().message()));
  const int64_t bytes = planner::ProfileBytesUpperBound(*g);
  if (bytes > limits.max_profile_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "spec.geometry: a profile of ", g->num_layers, " layers x ", g->num_kv_heads,
        " KV heads x head_dim ", g->head_dim, " needs up to ", bytes,
        " bytes of server memory, more than the ", limits.max_profile_bytes,
        " bytes one profile may take (--max_profile_bytes)"));
  }
  std::unique_ptr<ProfileBuilder> builder(new ProfileBuilder());
  if (memory != nullptr) {
    absl::StatusOr<std::shared_ptr<const ProfileMemory::Charge>> charge =
        memory->Reserve(tenant, bytes, "spec.geometry");
    if (!charge.ok()) return charge.status();
    builder->charge_ = *std::move(charge);
  }
  builder->spec_ = spec;
  builder->limits_ = limits;
  builder->geometry_ = *g;
  builder->budget_ = *b;
  if (absl::Status s = builder->CollectSource(); !s.ok()) return s;
  return builder;
}

absl::Status ProfileBuilder::CollectSource() {
  const planner::ModelGeometry& g = geometry_;
  // Entries of a scores or allocation source: each (layer, KV head) exactly
  // once, each value checked where the client can find it.
  auto collect = [&](const auto& heads, const std::string& field, auto&& check_entry,
                     auto* out) -> absl::Status {
    out->assign(g.num_layers, {});
    for (auto& l : *out) l.resize(g.num_kv_heads);
    std::vector<std::vector<bool>> seen(g.num_layers, std::vector<bool>(g.num_kv_heads));
    for (int i = 0; i < heads.size(); ++i) {
      const auto& h = heads[i];
      const std::string where = absl::StrCat(field, "[", i, "]");
      if (h.layer() >= static_cast<uint32_t>(g.num_layers)) {
        return absl::OutOfRangeError(absl::StrCat(where, ".layer: expected [0, ", g.num_layers,
                                                  "), got ", h.layer()));
      }
      if (h.kv_head() >= static_cast<uint32_t>(g.num_kv_heads)) {
        return absl::OutOfRangeError(absl::StrCat(where, ".kv_head: expected [0, ",
                                                  g.num_kv_heads, "), got ", h.kv_head()));
      }
      if (seen[h.layer()][h.kv_head()]) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": (layer ", h.layer(), ", kv_head ", h.kv_head(), ") given twice"));
      }
      seen[h.layer()][h.kv_head()] = true;
      if (absl::Status s = check_entry(h, where, &(*out)[h.layer()][h.kv_head()]); !s.ok()) {
        return s;
      }
    }
    for (int l = 0; l < g.num_layers; ++l) {
      for (int h = 0; h < g.num_kv_heads; ++h) {
        if (!seen[l][h]) {
          return absl::InvalidArgumentError(absl::StrCat(
              field, ": missing (layer ", l, ", kv_head ", h, ")"));
        }
      }
    }
    return absl::OkStatus();
  };
  const int blocks = g.num_blocks();
  switch (spec_.source_case()) {
    case pb::ProfileSpec::kCalibration: {
      absl::StatusOr<planner::ScoreAccumulator> acc = planner::ScoreAccumulator::Create(g);
      if (!acc.ok()) return acc.status();
      scores_.emplace(*std::move(acc));
      query_tokens_.assign(g.num_layers, 0);
      key_tokens_.assign(g.num_layers, 0);
      return absl::OkStatus();
    }
    case pb::ProfileSpec::kScores:
      return collect(spec_.scores().heads(), "spec.scores.heads",
                     [&](const pb::HeadScores& h, const std::string& where,
                         std::vector<double>* out) -> absl::Status {
                       if (h.scores_size() != blocks) {
                         return absl::InvalidArgumentError(absl::StrCat(
                             where, ".scores: expected head_dim / 2 = ", blocks, " values, got ",
                             h.scores_size()));
                       }
                       for (int j = 0; j < blocks; ++j) {
                         const double x = h.scores(j);
                         if (!std::isfinite(x) || x < 0) {
                           return absl::InvalidArgumentError(absl::StrCat(
                               where, ".scores[", j, "]: expected a finite value >= 0, got ", x));
                         }
                       }
                       out->assign(h.scores().begin(), h.scores().end());
                       return absl::OkStatus();
                     },
                     &given_scores_);
    case pb::ProfileSpec::kAllocation:
      return collect(spec_.allocation().heads(), "spec.allocation.heads",
                     [&](const pb::HeadAllocation& h, const std::string& where,
                         std::vector<int>* out) -> absl::Status {
                       if (h.block_bits_size() != blocks) {
                         return absl::InvalidArgumentError(absl::StrCat(
                             where, ".block_bits: expected head_dim / 2 = ", blocks,
                             " widths, got ", h.block_bits_size()));
                       }
                       for (int j = 0; j < blocks; ++j) {
                         const uint32_t x = h.block_bits(j);
                         if (x < static_cast<uint32_t>(budget_.min_bits) ||
                             x > static_cast<uint32_t>(budget_.max_bits)) {
                           return absl::InvalidArgumentError(absl::StrCat(
                               where, ".block_bits[", j, "]: expected [", budget_.min_bits, ", ",
                               budget_.max_bits, "] (spec.budget.min_bits..max_bits), got ", x));
                         }
                         out->push_back(static_cast<int>(x));
                       }
                       return absl::OkStatus();
                     },
                     &given_bits_);
    default:
      return absl::InvalidArgumentError(
          "spec.source: expected calibration, scores or allocation");
  }
}

absl::Status ProfileBuilder::AddCalibration(const pb::CalibrationChunk& chunk) {
  if (!scores_.has_value()) {
    return absl::FailedPreconditionError(
        "calibration: the spec's source is not calibration");
  }
  const planner::ModelGeometry& g = geometry_;
  if (chunk.layer() >= static_cast<uint32_t>(g.num_layers)) {
    return absl::OutOfRangeError(absl::StrCat(
        "calibration.layer: expected [0, ", g.num_layers, "), got ", chunk.layer()));
  }
  const int layer = static_cast<int>(chunk.layer());
  std::vector<float> q, k;
  if (chunk.has_queries()) {
    absl::StatusOr<std::vector<float>> t = proto::TensorToFloats(
        chunk.queries(), {g.num_q_heads, -1, g.head_dim}, "calibration.queries");
    if (!t.ok()) return t.status();
    q = *std::move(t);
  }
  if (chunk.has_keys()) {
    absl::StatusOr<std::vector<float>> t = proto::TensorToFloats(
        chunk.keys(), {g.num_kv_heads, -1, g.head_dim}, "calibration.keys");
    if (!t.ok()) return t.status();
    k = *std::move(t);
  }
  // Both tensors are validated (finite, shaped, within the limit) before
  // anything is added.
  const int64_t q_tokens = chunk.has_queries() ? chunk.queries().shape(1) : 0;
  const int64_t k_tokens = chunk.has_keys() ? chunk.keys().shape(1) : 0;
  const int64_t cap = limits_.max_calibration_tokens;
  for (auto [field, have, adding] : {std::tuple{"calibration.queries", query_tokens_[layer], q_tokens},
                                     std::tuple{"calibration.keys", key_tokens_[layer], k_tokens}}) {
    if (adding > cap - have) {
      return absl::ResourceExhaustedError(absl::StrCat(
          field, ": layer ", layer, " would have ", have + adding,
          " calibration tokens, more than the ", cap, " allowed (--max_calibration_tokens)"));
    }
  }
  for (int h = 0; h < g.num_q_heads && q_tokens > 0; ++h) {
    absl::Status s = scores_->AddQueries(layer, h, q.data() + h * q_tokens * g.head_dim, q_tokens);
    if (!s.ok()) return s;
  }
  for (int h = 0; h < g.num_kv_heads && k_tokens > 0; ++h) {
    absl::Status s = scores_->AddKeys(layer, h, k.data() + h * k_tokens * g.head_dim, k_tokens);
    if (!s.ok()) return s;
  }
  query_tokens_[layer] += q_tokens;
  key_tokens_[layer] += k_tokens;
  return absl::OkStatus();
}

absl::StatusOr<planner::ModelProfile> ProfileBuilder::Finish(const planner::CancelCheck& cancelled) {
  absl::StatusOr<planner::ModelProfile> profile;
  switch (spec_.source_case()) {
    case pb::ProfileSpec::kCalibration:
      profile = planner::BuildProfile(*scores_, budget_, cancelled);
      break;
    case pb::ProfileSpec::kScores:
      profile = planner::BuildProfileFromScores(geometry_, budget_, given_scores_, cancelled);
      break;
    case pb::ProfileSpec::kAllocation:
      profile = planner::BuildProfileFromAllocation(geometry_, budget_, given_bits_, cancelled);
      break;
    default:
      return absl::InvalidArgumentError("spec.source: missing");
  }
  if (!profile.ok()) return profile.status();
  profile->name = spec_.name();
  return profile;
}

ProfileRegistry::ProfileRegistry(std::string data_dir, ProfileMemory* memory, kernels::Backend* backend)
    : data_dir_(std::move(data_dir)), memory_(memory), backend_(backend) {}

std::shared_ptr<const planner::ModelProfile> ProfileRegistry::Share(planner::ModelProfile profile) const {
  kernels::Backend* backend = backend_;
  return std::shared_ptr<const planner::ModelProfile>(
      new planner::ModelProfile(std::move(profile)), [backend](const planner::ModelProfile* p) {
        if (backend != nullptr) {
          for (const planner::LayerPlan& l : p->layers) backend->ForgetPlan(l.id);
        }
        delete p;
      });
}

std::string ProfileRegistry::PathFor(const std::string& tenant,
                                     const std::string& id) const {
  return (fs::path(data_dir_) / "profiles" / tenant / (id + ".profile")).string();
}

std::pair<int, int> ProfileRegistry::LoadAll() {
  int loaded = 0, failed = 0;
  if (data_dir_.empty()) return {0, 0};
  std::error_code ec;
  const fs::path root = fs::path(data_dir_) / "profiles";
  if (!fs::is_directory(root, ec)) return {0, 0};
  absl::MutexLock lock(&mu_);
  for (const fs::directory_entry& tenant_dir : fs::directory_iterator(root, ec)) {
    if (!tenant_dir.is_directory()) continue;
    const std::string tenant = tenant_dir.path().filename().string();
    for (const fs::directory_entry& f : fs::directory_iterator(tenant_dir.path(), ec)) {
      if (f.path().extension() != ".profile") continue;
      const std::string id = f.path().stem().string();
      if (!ValidateId(id, "profile_id").ok()) continue;
      ProfileEntry entry;
      entry.profile_id = id;
      absl::StatusOr<planner::ModelProfile> p = planner::LoadProfile(f.path().string());
      if (p.ok()) {
        if (memory_ != nullptr) {
          entry.memory = memory_->ReserveUnchecked(tenant, planner::ProfileBytesUpperBound(p->geometry));
        }
        entry.profile = Share(*std::move(p));
        ++loaded;
      } else {
        entry.unavailable_reason = std::string(p.status().message());
        ++failed;
      }
      entries_[{tenant, id}] = std::move(entry);
    }
  }
  return {loaded, failed};
}

absl::Status ProfileRegistry::Add(const std::string& tenant, const std::string& id,
                                  planner::ModelProfile profile,
                                  std::shared_ptr<const ProfileMemory::Charge> charge) {
  absl::MutexLock lock(&mu_);
  if (entries_.count({tenant, id}) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("profile '", id, "' already exists"));
  }
  if (!data_dir_.empty()) {
    std::error_code ec;
    fs::create_directories(fs::path(PathFor(tenant, id)).parent_path(), ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot create the profile folder: ", ec.message()));
    }
    if (absl::Status s = planner::SaveProfile(profile, PathFor(tenant, id)); !s.ok()) return s;
  }
  ProfileEntry entry;
  entry.profile_id = id;
  entry.profile = Share(std::move(profile));
  entry.memory = std::move(charge);
  entries_[{tenant, id}] = std::move(entry);
  return absl::OkStatus();
}

absl::StatusOr<ProfileEntry> ProfileRegistry::Entry(const std::string& tenant,
                                                    const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find({tenant, id});
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("profile '", id, "' not found"));
  }
  return it->second;
}

absl::StatusOr<std::shared_ptr<const planner::ModelProfile>> ProfileRegistry::Get(
    const std::string& tenant, const std::string& id) const {
  absl::StatusOr<ProfileEntry> e = Entry(tenant, id);
  if (!e.ok()) return e.status();
  if (e->profile == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile '", id, "' is unavailable: ", e->unavailable_reason));
  }
  return e->profile;
}

std::vector<ProfileEntry> ProfileRegistry::List(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  std::vector<ProfileEntry> out;
  for (const auto& [key, entry] : entries_) {
    if (key.first == tenant) out.push_back(entry);
  }
  return out;
}

absl::Status ProfileRegistry::Delete(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find({tenant, id});
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("profile '", id, "' not found"));
  }
  if (!data_dir_.empty()) {
    std::error_code ec;
    fs::remove(PathFor(tenant, id), ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot remove the profile file: ", ec.message()));
    }
  }
  entries_.erase(it);
  return absl::OkStatus();
}

void EntryToInfo(const ProfileEntry& entry, bool include_plan, pb::ProfileInfo* info) {
  info->set_profile_id(entry.profile_id);
  info->set_available(entry.profile != nullptr);
  info->set_unavailable_reason(entry.unavailable_reason);
  if (entry.profile == nullptr) return;
  const planner::ModelProfile& p = *entry.profile;
  info->set_name(p.name);
  planner::GeometryToProto(p.geometry, info->mutable_geometry());
  planner::BudgetToProto(p.budget, info->mutable_budget());
  info->set_packed_bytes_per_token(p.packed_bytes_per_token());
  info->set_fp16_bytes_per_token(p.fp16_bytes_per_token());
  if (include_plan) *info->mutable_plan() = planner::ProfileToProto(p);
}

}  // namespace ropekv::service
