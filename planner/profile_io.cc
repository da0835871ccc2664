#include "planner/profile_io.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "planner/allocator.h"
#include "planner/codebook.h"
#include "planner/half.h"
#include "zlib.h"

namespace ropekv::planner {
namespace {

namespace pb = ::ropekv::v1;

std::string FloatsToBytes(const std::vector<float>& v) {
  // Little-endian on every platform ropekv builds for (x86-64, aarch64).
  static_assert(sizeof(float) == 4);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::vector<float> BytesToFloats(const std::string& s) {
  std::vector<float> v(s.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

void CodebookToProto(const Codebook& c, pb::Codebook* out) {
  out->set_bits(c.bits);
  out->set_dim(c.dim);
  for (float x : c.centroids) out->add_centroids(x);
  for (float x : c.boundaries) out->add_boundaries(x);
}

// Profiles written before codebook levels were rounded to fp16 carry the
// fp32 levels of the same quantizer: when every stored level rounds to the
// current codebook's, the profile loads with the current codebook (codes
// the old levels produced differ from the new ones only at near-ties).
// Anything else is kept as stored, for validation to judge.
Codebook CodebookFromProto(const pb::Codebook& c) {
  Codebook out;
  out.bits = static_cast<int>(c.bits());
  out.dim = static_cast<int>(c.dim());
  out.centroids.assign(c.centroids().begin(), c.centroids().end());
  out.boundaries.assign(c.boundaries().begin(), c.boundaries().end());
  if (out.bits >= kMinBits && out.bits <= kMaxBits && out.dim >= 1) {
    absl::StatusOr<Codebook> current = LloydMaxCodebook(out.bits, out.dim);
    if (current.ok() && current->centroids != out.centroids &&
        current->centroids.size() == out.centroids.size() &&
        std::equal(out.centroids.begin(), out.centroids.end(), current->centroids.begin(),
                   [](float stored, float level) { return RoundToHalf(stored) == level; })) {
      return *std::move(current);
    }
  }
  return out;
}

uint32_t Crc32(const std::string& bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes at most uInt bytes per call.
  for (size_t pos = 0; pos < bytes.size(); pos += 1u << 30) {
    const size_t n = std::min<size_t>(bytes.size() - pos, 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + pos),
                static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

// Caps unsigned fields into int without wrapping (validation rejects them).
int ToInt(uint64_t v) { return v > (1u << 30) ? (1 << 30) : static_cast<int>(v); }

}  // namespace

void GeometryToProto(const ModelGeometry& geometry, pb::ModelGeometry* g) {
  g->set_num_layers(geometry.num_layers);
  g->set_num_q_heads(geometry.num_q_heads);
  g->set_num_kv_heads(geometry.num_kv_heads);
  g->set_head_dim(geometry.head_dim);
  g->set_rope_layout(geometry.rope_layout == RopeLayout::kSplitHalf
                         ? pb::ROPE_LAYOUT_SPLIT_HALF
                         : pb::ROPE_LAYOUT_INTERLEAVED);
  g->set_rotary_dim(geometry.rotary_dim);
  g->set_rope_theta(geometry.rope_theta);
}

void BudgetToProto(const Budget& budget, pb::Budget* b) {
  b->set_key_avg_bits(budget.key_avg_bits);
  b->set_value_bits(budget.value_bits);
  b->set_min_bits(budget.min_bits);
  b->set_max_bits(budget.max_bits);
  b->set_score(budget.score == ScoreKind::kEnergy ? pb::SCORE_KIND_ENERGY
                                                  : pb::SCORE_KIND_LOGIT);
  b->set_seed(budget.seed);
  b->set_min_rotation_dim(budget.min_rotation_dim);
  b->set_key_bytes(budget.key_bytes);
  b->set_max_key_groups(budget.max_key_groups);
  b->set_key_group_multiple(budget.key_group_multiple);
}

absl::StatusOr<ModelGeometry> GeometryFromProto(const pb::ModelGeometry& g) {
  ModelGeometry out;
  out.num_layers = ToInt(g.num_layers());
  out.num_q_heads = ToInt(g.num_q_heads());
  out.num_kv_heads = ToInt(g.num_kv_heads());
  out.head_dim = ToInt(g.head_dim());
  switch (g.rope_layout()) {
    case pb::ROPE_LAYOUT_SPLIT_HALF:
      out.rope_layout = RopeLayout::kSplitHalf;
      break;
    case pb::ROPE_LAYOUT_INTERLEAVED:
      out.rope_layout = RopeLayout::kInterleaved;
      break;
    default:
      return absl::InvalidArgumentError(
          "geometry.rope_layout: expected SPLIT_HALF or INTERLEAVED");
  }
  out.rotary_dim = ToInt(g.rotary_dim());
  out.rope_theta = g.rope_theta();
  if (absl::Status s = ValidateGeometry(out); !s.ok()) return s;
  return out;
}

absl::StatusOr<Budget> BudgetFromProto(const pb::Budget& b, bool apply_defaults) {
  Budget out;
  out.key_avg_bits = b.key_avg_bits();
  out.value_bits = ToInt(b.value_bits());
  out.min_bits = ToInt(b.min_bits());
  out.max_bits = ToInt(b.max_bits());
  out.seed = b.seed();
  out.min_rotation_dim = ToInt(b.min_rotation_dim());
  out.key_bytes = ToInt(b.key_bytes());
  // 0 (unset, and every profile written before these fields) = defaults.
  out.max_key_groups = b.max_key_groups() == 0 ? 8 : ToInt(b.max_key_groups());
  out.key_group_multiple = b.key_group_multiple() == 0 ? 2 : ToInt(b.key_group_multiple());
  switch (b.score()) {
    case pb::SCORE_KIND_ENERGY:
      out.score = ScoreKind::kEnergy;
      break;
    case pb::SCORE_KIND_LOGIT:
      out.score = ScoreKind::kLogit;
      break;
    case pb::SCORE_KIND_UNSPECIFIED:
      if (!apply_defaults) {
        return absl::InvalidArgumentError("budget.score: expected ENERGY or LOGIT");
      }
      out.score = ScoreKind::kLogit;
      break;
    default:  // a value this build does not know: never guess
      return absl::InvalidArgumentError(absl::StrCat(
          "budget.score: expected SCORE_KIND_ENERGY (1), SCORE_KIND_LOGIT (2) or unset, got ",
          static_cast<int>(b.score())));
  }
  if (apply_defaults) {
    if (out.min_bits == 0) out.min_bits = 1;
    if (out.max_bits == 0) out.max_bits = 8;
    if (out.seed == 0) out.seed = kDefaultSeed;
  }
  if (absl::Status s = ValidateBudget(out); !s.ok()) return s;
  return out;
}

pb::Profile ProfileToProto(const ModelProfile& p) {
  pb::Profile out;
  out.set_format_version(kProfileFormatVersion);
  out.set_name(p.name);
  GeometryToProto(p.geometry, out.mutable_geometry());
  BudgetToProto(p.budget, out.mutable_budget());
  for (const LayerPlan& layer : p.layers) {
    pb::LayerPlan* lp = out.add_layers();
    for (const HeadPlan& h : layer.heads) {
      pb::HeadPlan* hp = lp->add_heads();
      for (int x : h.block_bits) hp->add_block_bits(x);
      for (int x : h.permutation) hp->add_permutation(x);
      for (const KeyGroupPlan& kg : h.key_groups) {
        pb::KeyGroup* k = hp->add_key_groups();
        k->set_bits(kg.bits);
        k->set_offset(kg.offset);
        k->set_dim(kg.dim);
        k->set_rotation_seed(kg.rotation_seed);
        k->set_rotation(FloatsToBytes(kg.rotation));
        CodebookToProto(kg.codebook, k->mutable_codebook());
      }
      hp->set_value_bits(h.value_bits);
      hp->set_value_rotation_seed(h.value_rotation_seed);
      hp->set_value_rotation(FloatsToBytes(h.value_rotation));
      CodebookToProto(h.value_codebook, hp->mutable_value_codebook());
      pb::TokenLayout* l = hp->mutable_layout();
      l->set_key_norms_offset(h.layout.key_norms_offset);
      l->set_value_norm_offset(h.layout.value_norm_offset);
      l->set_key_codes_offset(h.layout.key_codes_offset);
      l->set_key_code_bits(h.layout.key_code_bits);
      l->set_value_codes_offset(h.layout.value_codes_offset);
      l->set_value_code_bits(h.layout.value_code_bits);
      l->set_record_bytes(h.layout.record_bytes);
    }
  }
  return out;
}

absl::StatusOr<ModelProfile> ProfileFromProto(const pb::Profile& in) {
  if (in.format_version() != kProfileFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile.format_version: expected ", kProfileFormatVersion, ", got ",
        in.format_version()));
  }
  ModelProfile p;
  p.name = in.name();
  absl::StatusOr<ModelGeometry> geometry = GeometryFromProto(in.geometry());
  if (!geometry.ok()) return geometry.status();
  p.geometry = *geometry;
  absl::StatusOr<Budget> budget = BudgetFromProto(in.budget(), false);
  if (!budget.ok()) return budget.status();
  p.budget = *budget;
  // Bound the sizes before copying anything large.
  if (in.layers_size() != p.geometry.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile.layers: expected ", p.geometry.num_layers,
                     ", got ", in.layers_size()));
  }
  for (const pb::LayerPlan& lp : in.layers()) {
    if (lp.heads_size() != p.geometry.num_kv_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("profile.layers[].heads: expected ",
                       p.geometry.num_kv_heads, ", got ", lp.heads_size()));
    }
    LayerPlan layer;
    for (const pb::HeadPlan& hp : lp.heads()) {
      HeadPlan h;
      h.head_dim = p.geometry.head_dim;
      for (uint32_t x : hp.block_bits()) h.block_bits.push_back(ToInt(x));
      for (uint32_t x : hp.permutation()) h.permutation.push_back(ToInt(x));
      for (const pb::KeyGroup& k : hp.key_groups()) {
        KeyGroupPlan kg;
        kg.bits = ToInt(k.bits());
        kg.offset = ToInt(k.offset());
        kg.dim = ToInt(k.dim());
        kg.rotation_seed = k.rotation_seed();
        kg.rotation = BytesToFloats(k.rotation());
        kg.codebook = CodebookFromProto(k.codebook());
        h.key_groups.push_back(std::move(kg));
      }
      // Derived, not trusted from the file: recomputed from the groups (in
      // 64 bits and capped: the groups are validated only afterwards, and a
      // corrupt file may carry any dims and widths).
      int64_t code_bits = 0;
      for (KeyGroupPlan& kg : h.key_groups) {
        kg.code_bit_offset = static_cast<int>(std::min<int64_t>(code_bits, INT32_MAX));
        code_bits = std::min<int64_t>(code_bits + int64_t{kg.dim} * kg.bits, INT32_MAX);
      }
      h.value_bits = ToInt(hp.value_bits());
      h.value_rotation_seed = hp.value_rotation_seed();
      h.value_rotation = BytesToFloats(hp.value_rotation());
      h.value_codebook = CodebookFromProto(hp.value_codebook());
      const pb::TokenLayout& l = hp.layout();
      h.layout.key_norms_offset = ToInt(l.key_norms_offset());
      h.layout.value_norm_offset = ToInt(l.value_norm_offset());
      h.layout.key_codes_offset = ToInt(l.key_codes_offset());
      h.layout.key_code_bits = ToInt(l.key_code_bits());
      h.layout.value_codes_offset = ToInt(l.value_codes_offset());
      h.layout.value_code_bits = ToInt(l.value_code_bits());
      h.layout.record_bytes = ToInt(l.record_bytes());
      layer.heads.push_back(std::move(h));
    }
    layer.id = NewPlanId();
    p.layers.push_back(std::move(layer));
  }
  if (absl::Status s = ValidateProfile(p); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile: ", s.message()));
  }
  return p;
}

absl::Status SaveProfile(const ModelProfile& profile, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return absl::PermissionDeniedError(absl::StrCat(
          "cannot write ", tmp, ": ", std::strerror(errno)));
    }
    pb::ProfileFile file;
    if (!ProfileToProto(profile).SerializeToString(file.mutable_profile())) {
      return absl::InternalError("profile: serialization failed");
    }
    file.set_crc32(Crc32(file.profile()));
    if (!file.SerializeToOstream(&out) || !out.flush()) {
      std::remove(tmp.c_str());
      return absl::InternalError(absl::StrCat("writing ", tmp, " failed"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelProfile> LoadProfile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open profile ", path, ": ", std::strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ProfileFromFileBytes(buffer.str(), path);
}

absl::StatusOr<ModelProfile> ProfileFromFileBytes(const std::string& bytes, const std::string& path) {
  pb::ProfileFile file;
  if (!file.ParseFromString(bytes) || file.profile().empty()) {
    return absl::DataLossError(
        absl::StrCat(path, ": not a ropekv.v1.ProfileFile (truncated or corrupted)"));
  }
  if (Crc32(file.profile()) != file.crc32()) {
    return absl::DataLossError(absl::StrCat(
        path, ": checksum mismatch (the file is truncated or corrupted)"));
  }
  pb::Profile proto;
  if (!proto.ParseFromString(file.profile())) {
    return absl::DataLossError(
        absl::StrCat(path, ": not a valid ropekv.v1.Profile message"));
  }
  absl::StatusOr<ModelProfile> p = ProfileFromProto(proto);
  if (!p.ok()) {
    return absl::Status(p.status().code(),
                        absl::StrCat(path, ": ", p.status().message()));
  }
  return p;
}

}  // namespace ropekv::planner
