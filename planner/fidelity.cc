#include "planner/fidelity.h"

#include <cmath>

namespace ropekv::planner {

std::vector<double> LogitOffsets(int count, double lo, double hi) {
  std::vector<double> out(count);
  for (int i = 0; i < count; ++i) {
    out[i] = count == 1 ? lo : lo + (hi - lo) * i / (count - 1);
  }
  return out;
}

double RopeLogitMae(absl::Span<const RopeBlock> blocks, const float* q,
                    int group, const float* k, const float* k_hat,
                    int64_t tokens, absl::Span<const double> offsets) {
  if (tokens == 0 || group == 0 || offsets.empty()) return 0.0;
  const int d = static_cast<int>(blocks.size()) * 2;
  const size_t nb = blocks.size();
  std::vector<double> cos_t(nb), sin_t(nb), err(d);
  double total = 0;
  for (double delta : offsets) {
    for (size_t i = 0; i < nb; ++i) {
      cos_t[i] = std::cos(delta * blocks[i].frequency);
      sin_t[i] = std::sin(delta * blocks[i].frequency);
    }
    double sum = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      // The logit is linear in k, so logit(k) - logit(k_hat) = logit(k - k_hat).
      for (int j = 0; j < d; ++j) {
        err[j] = static_cast<double>(k[t * d + j]) - k_hat[t * d + j];
      }
      for (int g = 0; g < group; ++g) {
        const float* row = q + (static_cast<int64_t>(g) * tokens + t) * d;
        double logit = 0;
        for (size_t i = 0; i < nb; ++i) {
          const int a = blocks[i].dim_a, b = blocks[i].dim_b;
          const double ra = cos_t[i] * err[a] - sin_t[i] * err[b];
          const double rb = sin_t[i] * err[a] + cos_t[i] * err[b];
          logit += row[a] * ra + row[b] * rb;
        }
        sum += std::abs(logit);
      }
    }
    total += sum / (static_cast<double>(tokens) * group);
  }
  return total / offsets.size();
}

}  // namespace ropekv::planner
