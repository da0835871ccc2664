#include "planner/codebook.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "planner/half.h"

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
    EXPECT_NEAR(cb->centroids[i], q->centroids[i] / 8.0, std::abs(q->centroids[i] / 8.0) * 0x1p-11);
  }
  EXPECT_EQ(cb->num_levels(), 8);
  EXPECT_EQ(cb->boundaries.size(), 7u);
}

// Every level is an fp16 value within half an fp16 step of the exact
// scaled level, the levels stay symmetric and ascending, and each boundary
// is the exact midpoint of its two levels.
TEST(CodebookTest, LevelsAreHalfValues) {
  for (int bits = 1; bits <= 8; ++bits) {
    const GaussianQuantizer* q = *LloydMaxGaussian(bits);
    for (int dim : {1, 2, 64, 128, 512, 16384}) {
      SCOPED_TRACE(absl::StrCat("bits ", bits, " dim ", dim));
      const Codebook cb = *LloydMaxCodebook(bits, dim);
      const int n = cb.num_levels();
      const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
      for (int i = 0; i < n; ++i) {
        const float c = cb.centroids[i];
        EXPECT_EQ(HalfToFloat(FloatToHalf(c)), c);
        EXPECT_GE(std::abs(c), 0x1p-14f);  // a normal fp16 value
        EXPECT_LE(std::abs(c - q->centroids[i] * scale), std::abs(q->centroids[i] * scale) * 0x1p-11);
        EXPECT_EQ(c, -cb.centroids[n - 1 - i]);
        if (i > 0) EXPECT_LT(cb.centroids[i - 1], c);
      }
      for (int i = 0; i + 1 < n; ++i) {
        EXPECT_EQ(static_cast<double>(cb.boundaries[i]),
                  0.5 * (static_cast<double>(cb.centroids[i]) + cb.centroids[i + 1]));
      }
    }
  }
}

TEST(CodebookTest, BadInput) {
  EXPECT_EQ(LloydMaxGaussian(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LloydMaxGaussian(9).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LloydMaxCodebook(3, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ropekv::planner
