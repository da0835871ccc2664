#include "planner/calibration.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ropekv::planner {
namespace {

absl::StatusOr<int> MetaInt(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  int v = 0;
  if (it == f.metadata().end() || !absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "__metadata__.", key, ": expected an integer"));
  }
  return v;
}

}  // namespace

absl::StatusOr<ModelGeometry> GeometryFromMetadata(const SafetensorsFile& f) {
  ModelGeometry g;
  for (auto [key, field] : {std::pair{"layers", &g.num_layers},
                            std::pair{"q_heads", &g.num_q_heads},
                            std::pair{"kv_heads", &g.num_kv_heads},
                            std::pair{"head_dim", &g.head_dim},
                            std::pair{"rotary_dim", &g.rotary_dim}}) {
    absl::StatusOr<int> v = MetaInt(f, key);
    if (!v.ok()) return v.status();
    *field = *v;
  }
  auto layout = f.metadata().find("rope_layout");
  if (layout == f.metadata().end()) {
    return absl::InvalidArgumentError(
        "__metadata__.rope_layout: expected split-half or interleaved");
  }
  if (layout->second == "interleaved") {
    g.rope_layout = RopeLayout::kInterleaved;
  } else if (layout->second == "split-half" || layout->second == "split_half") {
    g.rope_layout = RopeLayout::kSplitHalf;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "__metadata__.rope_layout: expected split-half or interleaved, got '",
        layout->second, "'"));
  }
  auto theta = f.metadata().find("rope_theta");
  if (theta == f.metadata().end() ||
      !absl::SimpleAtod(theta->second, &g.rope_theta)) {
    return absl::InvalidArgumentError("__metadata__.rope_theta: expected a number");
  }
  if (absl::Status s = ValidateGeometry(g); !s.ok()) return s;
  for (const char* name : {"q", "k"}) {
    auto it = f.tensors().find(name);
    if (it == f.tensors().end()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is missing"));
    }
    const std::vector<int64_t>& s = it->second.shape;
    const int64_t heads = std::string(name) == "q" ? g.num_q_heads : g.num_kv_heads;
    if (s.size() != 4 || s[0] != g.num_layers || s[1] != heads || s[3] != g.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "': expected shape [", g.num_layers, ", ", heads,
          ", tokens, ", g.head_dim, "] from the metadata"));
    }
  }
  return g;
}

absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> SequenceRanges(
    const SafetensorsFile& f, int64_t num_tokens) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  if (f.tensors().count("seq_offsets") == 0) {
    ranges.emplace_back(0, num_tokens);
    return ranges;
  }
  absl::StatusOr<std::vector<int64_t>> off = f.ReadInt64("seq_offsets", {-1});
  if (!off.ok()) return off.status();
  if (off->size() < 2 || off->front() != 0 || off->back() != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "seq_offsets: expected [0, ..., ", num_tokens, "] with >= 2 entries"));
  }
  for (size_t s = 0; s + 1 < off->size(); ++s) {
    if ((*off)[s + 1] < (*off)[s]) {
      return absl::InvalidArgumentError("seq_offsets: expected ascending values");
    }
    ranges.emplace_back((*off)[s], (*off)[s + 1]);
  }
  return ranges;
}

absl::Status AccumulateCalibration(const SafetensorsFile& f, SequenceSplit split,
                                   ScoreAccumulator* scores) {
  const ModelGeometry& g = scores->geometry();
  absl::StatusOr<std::vector<float>> q =
      f.ReadFloat("q", {g.num_layers, g.num_q_heads, -1, g.head_dim});
  if (!q.ok()) return q.status();
  absl::StatusOr<std::vector<float>> k =
      f.ReadFloat("k", {g.num_layers, g.num_kv_heads, -1, g.head_dim});
  if (!k.ok()) return k.status();
  const int64_t tokens = f.tensors().at("q").shape[2];
  if (f.tensors().at("k").shape[2] != tokens) {
    return absl::InvalidArgumentError("q and k: expected the same token count");
  }
  absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> ranges =
      SequenceRanges(f, tokens);
  if (!ranges.ok()) return ranges.status();
  const int d = g.head_dim;
  for (size_t s = 0; s < ranges->size(); ++s) {
    if ((split == SequenceSplit::kEven && s % 2 != 0) ||
        (split == SequenceSplit::kOdd && s % 2 == 0)) {
      continue;
    }
    const auto [begin, end] = (*ranges)[s];
    for (int layer = 0; layer < g.num_layers; ++layer) {
      for (int h = 0; h < g.num_q_heads; ++h) {
        const float* rows = q->data() + ((static_cast<int64_t>(layer) * g.num_q_heads + h) * tokens + begin) * d;
        if (absl::Status st = scores->AddQueries(layer, h, rows, end - begin); !st.ok()) return st;
      }
      for (int h = 0; h < g.num_kv_heads; ++h) {
        const float* rows = k->data() + ((static_cast<int64_t>(layer) * g.num_kv_heads + h) * tokens + begin) * d;
        if (absl::Status st = scores->AddKeys(layer, h, rows, end - begin); !st.ok()) return st;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ropekv::planner
