#include "planner/codebook.h"

#include <cmath>

#include "gtest/gtest.h"

namespace ropekv::planner {
namespace {

TEST(CodebookTest, DistortionMatchesMaxTable) {
  // Max (1960): MSE of the optimal quantizer of a unit Gaussian.
  const double kMax[] = {0.3634, 0.1175, 0.03454, 0.009497};
  for (int bits = 1; bits <= 4; ++bits) {
    absl::StatusOr<const GaussianQuantizer*> q = LloydMaxGaussian(bits);
    ASSERT_TRUE(q.ok());
    EXPECT_NEAR((*q)->distortion, kMax[bits - 1], 1e-3 * kMax[bits - 1])
        << bits << " bits";
  }
}

TEST(CodebookTest, KnownLevels) {
  const GaussianQuantizer* q1 = *LloydMaxGaussian(1);
  EXPECT_NEAR(q1->centroids[1], std::sqrt(2.0 / M_PI), 1e-12);
  const GaussianQuantizer* q2 = *LloydMaxGaussian(2);
  EXPECT_NEAR(q2->centroids[2], 0.4528, 1e-4);
  EXPECT_NEAR(q2->centroids[3], 1.5104, 1e-4);
}

TEST(CodebookTest, DistortionFallsAboutFourfoldPerBitAtHighRate) {
  // Panter-Dite: D ~ (sqrt(3) pi / 2) 4^-b for the Gaussian at high rate.
  for (int bits = 6; bits <= 8; ++bits) {
    const double d = (*LloydMaxGaussian(bits))->distortion;
    const double panter_dite = std::sqrt(3.0) * M_PI / 2 * std::pow(4.0, -bits);
    EXPECT_NEAR(d / panter_dite, 1.0, 0.05) << bits << " bits";
  }
}

TEST(CodebookTest, ConvergedLevelsAreCentroidsOfTheirCells) {
  // Fixed point of Lloyd's iteration, checked by numerical integration.
  for (int bits = 1; bits <= 8; ++bits) {
    const GaussianQuantizer* q = *LloydMaxGaussian(bits);
    const int n = 1 << bits;
    for (int i = 0; i < n; i += std::max(1, n / 8)) {
      const double a = i == 0 ? -12.0 : q->boundaries[i - 1];
      const double b = i == n - 1 ? 12.0 : q->boundaries[i];
      double m0 = 0, m1 = 0;
      const int steps = 20000;
      for (int s = 0; s < steps; ++s) {
        const double x = a + (b - a) * (s + 0.5) / steps;
        const double p = std::exp(-0.5 * x * x);
        m0 += p;
        m1 += x * p;
      }
      EXPECT_NEAR(m1 / m0, q->centroids[i], 1e-6) << bits << " bits, level " << i;
    }
  }
}

TEST(CodebookTest, SymmetricAndMonotone) {
  for (int bits = 1; bits <= 8; ++bits) {
    const GaussianQuantizer* q = *LloydMaxGaussian(bits);
    const int n = 1 << bits;
    ASSERT_EQ(q->centroids.size(), static_cast<size_t>(n));
    ASSERT_EQ(q->boundaries.size(), static_cast<size_t>(n - 1));
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(q->centroids[i], -q->centroids[n - 1 - i]);
    }
    for (int i = 0; i + 1 < n; ++i) {
      EXPECT_LT(q->centroids[i], q->boundaries[i]);
      EXPECT_LT(q->boundaries[i], q->centroids[i + 1]);
      if (i + 2 < n) {
        EXPECT_LT(q->boundaries[i], q->boundaries[i + 1]);
      }
    }
  }
}

TEST(CodebookTest, ScaledForDimension) {
  absl::StatusOr<Codebook> cb = LloydMaxCodebook(3, 64);
  ASSERT_TRUE(cb.ok());
  const GaussianQuantizer* q = *LloydMaxGaussian(3);
  for (int i = 0; i < 8; ++i) {
    EXPECT_FLOAT_EQ(cb->centroids[i], static_cast<float>(q->centroids[i] / 8.0));
  }
  EXPECT_EQ(cb->num_levels(), 8);
  EXPECT_EQ(cb->boundaries.size(), 7u);
}

TEST(CodebookTest, BadInput) {
  EXPECT_EQ(LloydMaxGaussian(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LloydMaxGaussian(9).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LloydMaxCodebook(3, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner
