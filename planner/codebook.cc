#include "planner/codebook.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "planner/allocator.h"
#include "planner/half.h"

namespace ropekv::planner {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

double Pdf(double x) { return std::isinf(x) ? 0.0 : kInvSqrt2Pi * std::exp(-0.5 * x * x); }

// P(X > x), accurate in the upper tail.
double UpperTail(double x) { return 0.5 * std::erfc(x * kInvSqrt2); }

// P(a < X < b) without cancellation in either tail.
double Mass(double a, double b) {
  if (a >= 0) return UpperTail(a) - UpperTail(b);
  if (b <= 0) return UpperTail(-b) - UpperTail(-a);
  return 1.0 - UpperTail(-a) - UpperTail(b);
}

// x with P(X < x) = p, by bisection (used only to seed the iteration).
double InverseCdf(double p) {
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (1.0 - UpperTail(mid) < p) lo = mid; else hi = mid;
  }
  return 0.5 * (lo + hi);
}

GaussianQuantizer Solve(int bits) {
  const int n = 1 << bits;
  GaussianQuantizer q;
  q.bits = bits;
  // High-resolution optimum: point density proportional to pdf^(1/3), i.e.
  // the quantiles of N(0, 3). A good start shortens the iteration a lot.
  q.centroids.resize(n);
  for (int i = 0; i < n; ++i) {
    q.centroids[i] = std::sqrt(3.0) * InverseCdf((i + 0.5) / n);
  }
  q.boundaries.resize(n - 1);
  // Converged when no level moves by more than a few ulp of its magnitude.
  constexpr double kTolerance = 1e-13;
  constexpr int kMaxIterations = 1000000;
  for (q.iterations = 1; q.iterations <= kMaxIterations; ++q.iterations) {
    for (int i = 0; i + 1 < n; ++i) {
      q.boundaries[i] = 0.5 * (q.centroids[i] + q.centroids[i + 1]);
    }
    double change = 0;
    for (int i = 0; i < n; ++i) {
      const double a = i == 0 ? -kInf : q.boundaries[i - 1];
      const double b = i == n - 1 ? kInf : q.boundaries[i];
      const double c = (Pdf(a) - Pdf(b)) / Mass(a, b);
      change = std::max(change, std::abs(c - q.centroids[i]));
      q.centroids[i] = c;
    }
    // Keep exact symmetry (the Gaussian is symmetric; rounding is not).
    for (int i = 0; i < n / 2; ++i) {
      const double c = 0.5 * (q.centroids[n - 1 - i] - q.centroids[i]);
      q.centroids[i] = -c;
      q.centroids[n - 1 - i] = c;
    }
    if (change < kTolerance) break;
  }
  for (int i = 0; i + 1 < n; ++i) {
    q.boundaries[i] = 0.5 * (q.centroids[i] + q.centroids[i + 1]);
  }
  // D = sum over cells of E[(X - c)^2; cell], with
  // E[X^2; a<X<b] = P + a pdf(a) - b pdf(b) and E[X; a<X<b] = pdf(a) - pdf(b).
  double d = 0;
  for (int i = 0; i < n; ++i) {
    const double a = i == 0 ? -kInf : q.boundaries[i - 1];
    const double b = i == n - 1 ? kInf : q.boundaries[i];
    const double p = Mass(a, b);
    const double m1 = Pdf(a) - Pdf(b);
    const double m2 = p + (std::isinf(a) ? 0 : a * Pdf(a)) -
                      (std::isinf(b) ? 0 : b * Pdf(b));
    const double c = q.centroids[i];
    d += m2 - 2 * c * m1 + c * c * p;
  }
  q.distortion = d;
  return q;
}

}  // namespace

absl::StatusOr<const GaussianQuantizer*> LloydMaxGaussian(int bits) {
  if (bits < kMinBits || bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bits: expected [", kMinBits, ", ", kMaxBits, "], got ", bits));
  }
  static std::array<std::once_flag, kMaxBits + 1> once;
  static std::array<GaussianQuantizer, kMaxBits + 1> cache;
  std::call_once(once[bits], [bits] { cache[bits] = Solve(bits); });
  return &cache[bits];
}

absl::StatusOr<Codebook> LloydMaxCodebook(int bits, int dim) {
  if (dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim: expected >= 1, got ", dim));
  }
  absl::StatusOr<const GaussianQuantizer*> q = LloydMaxGaussian(bits);
  if (!q.ok()) return q.status();
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  Codebook cb;
  cb.bits = bits;
  cb.dim = dim;
  // Levels are rounded to fp16 (see codebook.h); the boundaries are the
  // exact midpoints of the rounded levels (a midpoint of two fp16 values is
  // exact in fp32), so the search still returns the nearest level.
  for (double c : (*q)->centroids) cb.centroids.push_back(RoundToHalf(static_cast<float>(c * scale)));
  for (size_t i = 0; i + 1 < cb.centroids.size(); ++i) {
    cb.boundaries.push_back(static_cast<float>(
        0.5 * (static_cast<double>(cb.centroids[i]) + static_cast<double>(cb.centroids[i + 1]))));
  }
  return cb;
}

}  // namespace ropekv::planner
