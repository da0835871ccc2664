// Deterministic Haar-random rotations.
//
// Client, server, CPU and GPU must agree bit for bit on every rotation, so
// nothing here depends on the standard library's distributions or maths
// functions: a xoshiro256** generator seeded by SplitMix64, Gaussians by
// Marsaglia's polar method with the project's own logarithm, then a
// Householder QR in plain double loops and the sign fix (column j times
// sign(R_jj)). Only +, -, *, / and sqrt are used, which IEEE 754 rounds
// exactly, and the file is compiled without FMA contraction, so the output
// is identical on every conforming platform and compiler.
//
// Thread safety: pure functions; DeterministicRng is a value type.
#ifndef ROPEKV_PLANNER_ROTATION_H_
#define ROPEKV_PLANNER_ROTATION_H_

#include <cstdint>
#include <vector>

namespace ropekv::planner {

class DeterministicRng {
 public:
  explicit DeterministicRng(uint64_t seed);
  uint64_t NextU64();
  // Uniform in [0, 1) with 53 random bits.
  double NextUniform();
  // Standard normal (polar method).
  double NextGaussian();

 private:
  uint64_t state_[4];
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// Natural logarithm of x > 0 from basic arithmetic only (frexp reduction and
// an atanh series); within a few ulp of std::log and identical everywhere.
double PortableLog(double x);

// A size x size orthogonal matrix with det +1, Haar-distributed over SO(n),
// row-major. The same (seed, size) always gives the same bits.
// REQUIRES: size >= 1.
std::vector<double> HaarRotationF64(uint64_t seed, int size);
std::vector<float> HaarRotation(uint64_t seed, int size);

// The identity, for groups below the rotation threshold.
std::vector<float> IdentityMatrix(int size);

// Mixes a base seed with the coordinates of a rotation so that every
// (layer, KV head, role, width) gets an independent stream.
uint64_t DeriveSeed(uint64_t base, uint64_t layer, uint64_t kv_head,
                    uint64_t role, uint64_t width);

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_ROTATION_H_
