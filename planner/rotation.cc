// Compiled with -ffp-contract=off (see planner/CMakeLists.txt): a fused
// multiply-add rounds differently and would change the output bits.
#include "planner/rotation.h"

#include <cmath>

namespace ropekv::planner {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

DeterministicRng::DeterministicRng(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : state_) s = SplitMix64(x);
}

uint64_t DeterministicRng::NextU64() {
  const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = Rotl(state_[3], 45);
  return result;
}

double DeterministicRng::NextUniform() {
  return static_cast<double>(NextU64() >> 11) * 0x1.0p-53;
}

double DeterministicRng::NextGaussian() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u, v, s;
  do {
    u = 2.0 * NextUniform() - 1.0;
    v = 2.0 * NextUniform() - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  const double f = std::sqrt(-2.0 * PortableLog(s) / s);
  spare_ = v * f;
  has_spare_ = true;
  return u * f;
}

double PortableLog(double x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(z),
  // z = (m - 1) / (m + 1), |z| <= 0.1716, so 14 odd terms reach < 1e-18.
  int e = 0;
  double m = std::frexp(x, &e);  // exact: m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;
    --e;
  }
  const double z = (m - 1.0) / (m + 1.0);
  const double z2 = z * z;
  double series = 0.0;
  for (int k = 27; k >= 3; k -= 2) series = (series + 1.0 / k) * z2;
  const double log_m = 2.0 * z * (1.0 + series);
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // exact in 32 bits
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  return e * kLn2Hi + (e * kLn2Lo + log_m);
}

std::vector<double> HaarRotationF64(uint64_t seed, int n) {
  // a: column-major n x n Gaussian matrix, reduced in place to R.
  DeterministicRng rng(seed);
  std::vector<double> a(static_cast<size_t>(n) * n);
  for (double& x : a) x = rng.NextGaussian();
  auto at = [&](std::vector<double>& m, int row, int col) -> double& {
    return m[static_cast<size_t>(col) * n + row];
  };
  std::vector<std::vector<double>> reflectors(n);  // v_k, length n - k
  std::vector<double> r_diag(n);
  int nontrivial = 0;
  for (int k = 0; k < n; ++k) {
    double norm2 = 0;
    for (int i = k; i < n; ++i) norm2 += at(a, i, k) * at(a, i, k);
    const double norm = std::sqrt(norm2);
    const double alpha = at(a, k, k) < 0 ? norm : -norm;
    std::vector<double> v(n - k);
    for (int i = k; i < n; ++i) v[i - k] = at(a, i, k);
    v[0] -= alpha;
    double vv = 0;
    for (double x : v) vv += x * x;
    r_diag[k] = alpha;
    if (vv == 0) continue;  // column already reduced: H = I
    ++nontrivial;
    for (int j = k; j < n; ++j) {
      double dot = 0;
      for (int i = k; i < n; ++i) dot += v[i - k] * at(a, i, j);
      const double f = 2.0 * dot / vv;
      for (int i = k; i < n; ++i) at(a, i, j) -= f * v[i - k];
    }
    reflectors[k] = std::move(v);
  }
  // Q = H_0 H_1 ... H_{n-1}: apply the reflectors to I from the last.
  std::vector<double> q(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) at(q, i, i) = 1.0;
  for (int k = n - 1; k >= 0; --k) {
    const std::vector<double>& v = reflectors[k];
    if (v.empty()) continue;
    double vv = 0;
    for (double x : v) vv += x * x;
    for (int j = 0; j < n; ++j) {
      double dot = 0;
      for (int i = k; i < n; ++i) dot += v[i - k] * at(q, i, j);
      const double f = 2.0 * dot / vv;
      for (int i = k; i < n; ++i) at(q, i, j) -= f * v[i - k];
    }
  }
  // Sign fix makes Q Haar on O(n); det(Q) = (-1)^reflections * prod signs.
  int det_sign = nontrivial % 2 == 0 ? 1 : -1;
  for (int j = 0; j < n; ++j) {
    if (r_diag[j] < 0) {
      det_sign = -det_sign;
      for (int i = 0; i < n; ++i) at(q, i, j) = -at(q, i, j);
    }
  }
  // Flipping one column maps the det -1 half of O(n) onto SO(n) measure-
  // preservingly, so the result stays Haar on SO(n).
  if (det_sign < 0) {
    for (int i = 0; i < n; ++i) at(q, i, 0) = -at(q, i, 0);
  }
  std::vector<double> row_major(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) row_major[static_cast<size_t>(i) * n + j] = at(q, i, j);
  }
  return row_major;
}

std::vector<float> HaarRotation(uint64_t seed, int n) {
  const std::vector<double> m = HaarRotationF64(seed, n);
  return std::vector<float>(m.begin(), m.end());
}

std::vector<float> IdentityMatrix(int n) {
  std::vector<float> m(static_cast<size_t>(n) * n, 0.0f);
  for (int i = 0; i < n; ++i) m[static_cast<size_t>(i) * n + i] = 1.0f;
  return m;
}

uint64_t DeriveSeed(uint64_t base, uint64_t layer, uint64_t kv_head,
                    uint64_t role, uint64_t width) {
  uint64_t x = base;
  uint64_t h = SplitMix64(x);
  for (uint64_t part : {layer, kv_head, role, width}) {
    x = h ^ (part + 0x632BE59BD9B4E019ull);
    h = SplitMix64(x);
  }
  return h;
}

}  // namespace ropekv::planner
