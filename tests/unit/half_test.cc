#include "planner/half.h"

#include <cmath>

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

}  // namespace
}  // namespace ropekv::planner
