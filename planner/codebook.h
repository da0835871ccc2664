// Lloyd-Max scalar quantizers for the coordinates of a rotated unit vector.
//
// After a Haar rotation each coordinate of a unit vector in R^d is close to
// N(0, 1/d), so one optimal quantizer per (bits, d) serves every token. The
// unit-Gaussian quantizer is iterated to convergence in double precision
// once per width and cached; a codebook for dimension d scales it by
// 1/sqrt(d).
//
// Thread safety: all functions may be called concurrently.
#ifndef ROPEKV_PLANNER_CODEBOOK_H_
#define ROPEKV_PLANNER_CODEBOOK_H_

#include <vector>

#include "absl/status/statusor.h"

namespace ropekv::planner {

// The Lloyd-Max quantizer of N(0, 1) at some width, in double precision.
struct GaussianQuantizer {
  int bits = 0;
  std::vector<double> centroids;   // 2^bits levels, ascending, symmetric
  std::vector<double> boundaries;  // 2^bits - 1 midpoints, ascending
  double distortion = 0.0;         // E[(X - Q(X))^2] for X ~ N(0, 1)
  int iterations = 0;              // Lloyd iterations until convergence
};

// The converged quantizer for `bits` in [1, 8] (INVALID_ARGUMENT otherwise).
// The returned reference lives for the whole program.
absl::StatusOr<const GaussianQuantizer*> LloydMaxGaussian(int bits);

// A quantizer for N(0, 1/dim), in the form kernels use: every level is an
// fp16 value (held as a float), the boundaries are the midpoints of those
// levels. Levels of N(0, 1/dim) lie in [2^-14, 65504] for every width and
// any dim up to 16384, so rounding moves a level by at most 2^-11 of itself
// (its effect on the distortion is below 1e-6 relative); in exchange a
// tensor-core decoder reads each level exactly as one fp16 MMA input
// instead of an fp16 hi + lo pair (kernels/cuda/attention_mma.cu).
struct Codebook {
  int bits = 0;
  int dim = 0;
  std::vector<float> centroids;   // 2^bits levels, ascending
  std::vector<float> boundaries;  // 2^bits - 1 midpoints, ascending

  int num_levels() const { return 1 << bits; }
  bool operator==(const Codebook&) const = default;
};

// INVALID_ARGUMENT for bits outside [1, 8] or dim < 1.
absl::StatusOr<Codebook> LloydMaxCodebook(int bits, int dim);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_CODEBOOK_H_
