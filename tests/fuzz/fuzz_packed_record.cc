// libFuzzer target: the packed-layout decoder on arbitrary record bytes,
// for plans with narrow, wide and mixed widths, odd head_dims and partial
// RoPE. Any bytes are a record (codes are always in range; norms may be
// NaN or Inf): decoding must stay inside the record and the plan.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/codec.h"
#include "planner/plan.h"

namespace {

using namespace ropekv::planner;

std::vector<ModelProfile> Profiles() {
  std::vector<ModelProfile> out;
  struct Shape {
    int head_dim, rotary_dim;
    double key_bits;
    int value_bits;
  };
  for (Shape s : {Shape{36, 32, 3.0, 3}, Shape{64, 64, 2.5, 1}, Shape{128, 128, 5.0, 6}, Shape{16, 8, 1.0, 2}}) {
    ModelGeometry g;
    g.num_layers = 1;
    g.num_q_heads = 2;
    g.num_kv_heads = 1;
    g.head_dim = s.head_dim;
    g.rotary_dim = s.rotary_dim;
    PerHead scores(1, std::vector<std::vector<double>>(1, std::vector<double>(s.head_dim / 2)));
    for (int b = 0; b < s.head_dim / 2; ++b) scores[0][0][b] = 1.0 + (b * 7919 % 13);
    Budget budget;
    budget.key_avg_bits = s.key_bits;
    budget.value_bits = s.value_bits;
    out.push_back(*BuildProfileFromScores(g, budget, scores));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<ModelProfile> profiles = Profiles();
  if (size == 0) return 0;
  const HeadPlan& plan = profiles[data[0] % profiles.size()].layers[0].heads[0];
  const size_t rb = static_cast<size_t>(plan.layout.record_bytes);
  std::vector<uint8_t> record(rb, 0);
  for (size_t i = 0; i < rb && i + 1 < size; ++i) record[i] = data[i + 1];
  std::vector<float> k(plan.head_dim), v(plan.head_dim), q(plan.head_dim, 0.5f), rq(plan.head_dim);
  ropekv::kernels::DecodeKey(plan, record.data(), k.data());
  ropekv::kernels::DecodeValue(plan, record.data(), v.data());
  ropekv::kernels::RotateQuery(plan, q.data(), rq.data());
  // Re-encoding what was decoded must work or fail cleanly (NaN/Inf norms).
  (void)ropekv::kernels::EncodeKey(plan, k.data(), record.data());
  (void)ropekv::kernels::EncodeValue(plan, v.data(), record.data());
  return 0;
}
