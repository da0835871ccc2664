#include "planner/half.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ropekv::planner {
namespace {

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // ties to even -> inf
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(5.9604644775390625e-8f), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(2.98023223876953125e-8f), 0x0000); // half of it: tie -> 0
  EXPECT_EQ(FloatToHalf(6.103515625e-5f), 0x0400);         // smallest normal
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(INFINITY), 0x7C00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(NAN))));
  // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: to even (1).
  EXPECT_EQ(FloatToHalf(1.0f + 0.00048828125f), 0x3C00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0.00048828125f), 0x3C02);
}

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
}

TEST(HalfTest, RoundsToNearest) {
  // Between consecutive halves, values go to the nearer one.
  for (uint32_t h = 0x0001; h < 0x7BFF; h += 97) {
    const float lo = HalfToFloat(static_cast<uint16_t>(h));
    const float hi = HalfToFloat(static_cast<uint16_t>(h + 1));
    EXPECT_EQ(FloatToHalf(lo + (hi - lo) * 0.25f), h);
    EXPECT_EQ(FloatToHalf(lo + (hi - lo) * 0.75f), h + 1);
  }
}

TEST(HalfTest, BulkFromHalvesEqualsScalarForEveryHalf) {
  // At an odd byte offset too: wire data need not be aligned.
  std::vector<unsigned char> bytes(2 * 0x10000 + 1);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    std::memcpy(bytes.data() + 1 + 2 * h, &v, 2);
  }
  std::vector<float> out(0x10000);
  HalvesToFloats(bytes.data() + 1, out.data(), 0x10000);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float want = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[h])) << std::hex << h;
    } else {
      EXPECT_EQ(FloatBits(out[h]), FloatBits(want)) << std::hex << h;
    }
  }
}

TEST(HalfTest, BulkToHalvesEqualsScalar) {
  std::vector<float> in;
  // Every half value, the midpoints between neighbours (ties go to even)
  // and points just off them, over the whole range including subnormals.
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    const float a = HalfToFloat(static_cast<uint16_t>(h)), b = HalfToFloat(static_cast<uint16_t>(h + 1));
    const float mid = a + (b - a) / 2;
    for (float x : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      in.push_back(x);
      in.push_back(-x);
    }
  }
  std::mt19937 gen(5);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 1000000; ++i) {
    const float f = BitsToFloat(bits(gen));
    if (!std::isnan(f)) in.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 1e-45f, -1e-45f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    in.push_back(f);
  }
  in.push_back(1.0f);  // an odd count: the scalar tail runs too
  std::vector<uint16_t> out(in.size());
  FloatsToHalves(in.data(), out.data(), static_cast<int64_t>(in.size()));
  int64_t differ = 0;
  for (size_t i = 0; i < in.size(); ++i) differ += out[i] != FloatToHalf(in[i]);
  EXPECT_EQ(differ, 0) << "of " << in.size();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint16_t h = 0;
  FloatsToHalves(&nan, &h, 1);
  EXPECT_TRUE(std::isnan(HalfToFloat(h)));
}

TEST(HalfTest, FirstNonFiniteFindsTheFirst) {
  std::vector<float> v(5000, 1.5f);
  EXPECT_EQ(FirstNonFinite(v.data(), 0), -1);
  EXPECT_EQ(FirstNonFinite(v.data(), 5000), -1);
  v[4999] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FirstNonFinite(v.data(), 5000), 4999);
  EXPECT_EQ(FirstNonFinite(v.data(), 4999), -1);
  v[1024] = -std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(FirstNonFinite(v.data(), 5000), 1024);
  v[3] = std::numeric_limits<float>::max();  // finite
  v[2] = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(FirstNonFinite(v.data(), 5000), 1024);
}

}  // namespace
}  // namespace ropekv::planner
