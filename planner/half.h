// IEEE 754 binary16 conversions (round to nearest even), header-only and
// C++17-clean so host code of every layer can share them.
#ifndef ROPEKV_PLANNER_HALF_H_
#define ROPEKV_PLANNER_HALF_H_

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define ROPEKV_HALF_X86 1
#endif

namespace ropekv::planner {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return BitsToFloat(sign | 0x7F800000u | (mant << 13));
  if (exp != 0) return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsToFloat(sign);
  // Subnormal: value = mant * 2^-24, exact in fp32.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return (h & 0x8000u) ? -v : v;
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // Inf or NaN (keep NaN quiet and non-zero)
    return sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u);
  }
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds past 65504
  if (abs < 0x38800000u) {                        // below 2^-14: subnormal
    // Shift the implicit-one mantissa into a 2^-24 grid with RNE.
    if (abs < 0x33000000u) return sign;  // < 2^-25 rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t half = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

// The fp32 value an fp32 becomes after a round trip through fp16.
inline float RoundToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }

// Bulk conversions for tensors on the wire. With F16C (x86, checked at run
// time) eight values per instruction; the results equal the scalar
// functions' for every non-NaN value (NaN stays NaN, its payload may
// differ). `halves` need not be aligned.
inline void HalvesToFloatsScalar(const unsigned char* src, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = HalfToFloat(h);
  }
}
inline void FloatsToHalvesScalar(const float* in, unsigned char* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = FloatToHalf(in[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}
#ifdef ROPEKV_HALF_X86
__attribute__((target("avx,f16c"))) inline void HalvesToFloatsF16c(const unsigned char* src, float* out,
                                                                   int64_t n) {
  const int64_t vec = n / 8 * 8;
  for (int64_t i = 0; i < vec; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  HalvesToFloatsScalar(src + 2 * vec, out + vec, n - vec);
}
__attribute__((target("avx,f16c"))) inline void FloatsToHalvesF16c(const float* in, unsigned char* dst,
                                                                   int64_t n) {
  const int64_t vec = n / 8 * 8;
  for (int64_t i = 0; i < vec; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
  FloatsToHalvesScalar(in + vec, dst + 2 * vec, n - vec);
}
// CPUID leaf 1: F16C, AVX and OSXSAVE, and the OS saving YMM state (XCR0
// bits 1-2). Read directly: not every compiler's __builtin_cpu_supports
// knows "f16c".
inline bool CpuHasF16c() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
    constexpr unsigned kOsxsave = 1u << 27, kAvx = 1u << 28, kF16c = 1u << 29;
    if ((c & (kOsxsave | kAvx | kF16c)) != (kOsxsave | kAvx | kF16c)) return false;
    unsigned lo = 0, hi = 0;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
  }();
  return has;
}
#endif

inline void HalvesToFloats(const void* halves, float* out, int64_t n) {
  const auto* src = static_cast<const unsigned char*>(halves);
#ifdef ROPEKV_HALF_X86
  if (CpuHasF16c()) return HalvesToFloatsF16c(src, out, n);
#endif
  HalvesToFloatsScalar(src, out, n);
}

inline void FloatsToHalves(const float* in, void* halves, int64_t n) {
  auto* dst = static_cast<unsigned char*>(halves);
#ifdef ROPEKV_HALF_X86
  if (CpuHasF16c()) return FloatsToHalvesF16c(in, dst, n);
#endif
  FloatsToHalvesScalar(in, dst, n);
}

// Index of the first Inf or NaN in data[0, n), -1 when all are finite. The
// scan keeps the largest exponent field per block of fixed length (which
// the compiler vectorises); only a block that reaches all ones is searched
// element by element.
inline int64_t FirstNonFinite(const float* data, int64_t n) {
  constexpr int64_t kBlock = 1024;
  constexpr uint32_t kExp = 0x7F800000u;
  auto search = [&](int64_t b, int64_t e) -> int64_t {
    for (int64_t i = b; i < e; ++i) {
      if ((FloatBits(data[i]) & kExp) == kExp) return i;
    }
    return -1;
  };
  int64_t b = 0;
  for (; b + kBlock <= n; b += kBlock) {
    uint32_t top = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      uint32_t u;
      std::memcpy(&u, data + b + i, 4);
      const uint32_t e = u & kExp;
      top = e > top ? e : top;
    }
    if (top == kExp) return search(b, b + kBlock);
  }
  return search(b, n);
}

}  // namespace ropekv::planner

#endif  // ROPEKV_PLANNER_HALF_H_
