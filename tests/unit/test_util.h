// Helpers shared by the unit tests: host pages for a packed layer, random
// data, and dense fp64 reference attention.
#ifndef ROPEKV_TESTS_UNIT_TEST_UTIL_H_
#define ROPEKV_TESTS_UNIT_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "planner/plan.h"

namespace ropekv::testing {

// Pages in host memory for one (session, layer).
class HostPagedLayer {
 public:
  HostPagedLayer(const planner::LayerPlan& plan, int page_tokens,
                 int64_t capacity_tokens, uint8_t fill = 0xA5)
      : page_tokens_(page_tokens) {
    const int64_t page_bytes = planner::MakePageLayout(plan, page_tokens).page_bytes;
    const int64_t pages = (capacity_tokens + page_tokens - 1) / page_tokens;
    for (int64_t i = 0; i < pages; ++i) {
      storage_.emplace_back(page_bytes, fill);
    }
    for (auto& p : storage_) pointers_.push_back(p.data());
  }
  kernels::PagedLayerView view(int64_t num_tokens) const {
    kernels::PagedLayerView v;
    v.pages = pointers_.data();
    v.num_pages = static_cast<int64_t>(pointers_.size());
    v.page_tokens = page_tokens_;
    v.num_tokens = num_tokens;
    return v;
  }
  std::vector<std::vector<uint8_t>>& storage() { return storage_; }

 private:
  int page_tokens_;
  std::vector<std::vector<uint8_t>> storage_;
  std::vector<uint8_t*> pointers_;
};

inline std::vector<float> RandomNormal(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// Dense attention in double: queries [num_q, q_len, d], keys/values
// [num_kv, tokens, d] over tokens [begin, end), GQA group = num_q / num_kv.
inline void ReferenceAttention(const std::vector<float>& q, int num_q, int q_len,
                               const std::vector<float>& k,
                               const std::vector<float>& v, int num_kv,
                               int64_t tokens, int d, double scale, bool causal,
                               int64_t causal_offset, int64_t begin, int64_t end,
                               std::vector<double>* out, std::vector<double>* lse) {
  const int group = num_q / num_kv;
  out->assign(static_cast<size_t>(num_q) * q_len * d, 0.0);
  lse->assign(static_cast<size_t>(num_q) * q_len, -std::numeric_limits<double>::infinity());
  for (int qh = 0; qh < num_q; ++qh) {
    const int h = qh / group;
    for (int i = 0; i < q_len; ++i) {
      const float* qr = q.data() + (static_cast<int64_t>(qh) * q_len + i) * d;
      std::vector<double> logits;
      std::vector<int64_t> idx;
      for (int64_t t = begin; t < end; ++t) {
        if (causal && t > causal_offset + i) continue;
        const float* kr = k.data() + (static_cast<int64_t>(h) * tokens + t) * d;
        double s = 0;
        for (int j = 0; j < d; ++j) s += static_cast<double>(qr[j]) * kr[j];
        logits.push_back(s * scale);
        idx.push_back(t);
      }
      if (logits.empty()) continue;
      double m = -std::numeric_limits<double>::infinity();
      for (double x : logits) m = std::max(m, x);
      double total = 0;
      for (double& x : logits) total += (x = std::exp(x - m));
      double* o = out->data() + (static_cast<int64_t>(qh) * q_len + i) * d;
      for (size_t n = 0; n < logits.size(); ++n) {
        const float* vr = v.data() + (static_cast<int64_t>(h) * tokens + idx[n]) * d;
        for (int j = 0; j < d; ++j) o[j] += logits[n] / total * vr[j];
      }
      (*lse)[static_cast<size_t>(qh) * q_len + i] = m + std::log(total);
    }
  }
}

// ||a - b|| / ||b||.
template <typename A, typename B>
double RelativeError(const A& a, const B& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// The backend integration tests run the server on: $ROPEKV_TEST_BACKEND
// (cpu, cuda or auto), default cpu. Comparisons that are bit-exact on the
// CPU allow for float reordering on other backends.
inline std::string TestBackend() {
  const char* env = std::getenv("ROPEKV_TEST_BACKEND");
  return env != nullptr ? env : "cpu";
}
inline bool TestOnCpu() { return TestBackend() == "cpu"; }

// Relative error allowed between a backend's attention output and the fp64
// reference over the same decoded cache: fp32 arithmetic on the CPU; on
// the GPU the tensor-core kernel multiplies fp16 probabilities by fp16
// value levels (keys stay fp32-accurate, so lse keeps its 1e-4).
inline double AttentionOutputTolerance() { return TestOnCpu() ? 1e-5 : 2e-3; }

// The shipped real activations, or "" when absent.
inline std::string RealDataPath() {
  const char* env = std::getenv("ROPEKV_DATA_DIR");
  const std::string dir = env != nullptr ? env : ROPEKV_DATA_DIR;
  return dir + "/moonshine-tiny-qkv.safetensors";
}

}  // namespace ropekv::testing

#endif  // ROPEKV_TESTS_UNIT_TEST_UTIL_H_
