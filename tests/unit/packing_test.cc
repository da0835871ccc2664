#include "kernels/cpu/bit_packing.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ropekv::kernels {
namespace {

TEST(PackingTest, EveryWidthAndOddLengthsRoundTrip) {
  std::mt19937 gen(5);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int count : {1, 2, 3, 5, 7, 9, 17, 31, 33, 127, 128}) {
      for (int offset : {0, 1, 3, 7, 8, 13}) {
        std::vector<uint8_t> codes(count);
        for (uint8_t& c : codes) c = static_cast<uint8_t>(gen() & ((1u << bits) - 1));
        const int64_t bytes = PackedBytes(offset + static_cast<int64_t>(count) * bits, 1);
        std::vector<uint8_t> stream(bytes + 2, 0xFF);  // guard bytes stay 0xFF
        std::vector<uint8_t> before = stream;
        PackBits(codes.data(), count, bits, stream.data(), offset);
        std::vector<uint8_t> back(count);
        UnpackBits(stream.data(), offset, count, bits, back.data());
        EXPECT_EQ(back, codes) << bits << " bits, " << count << " codes at " << offset;
        // Bits outside [offset, offset + count*bits) are untouched.
        for (int64_t b = 0; b < static_cast<int64_t>(stream.size()) * 8; ++b) {
          if (b >= offset && b < offset + static_cast<int64_t>(count) * bits) continue;
          EXPECT_EQ((stream[b / 8] >> (b % 8)) & 1, (before[b / 8] >> (b % 8)) & 1);
        }
      }
    }
  }
}

TEST(PackingTest, LsbFirstLayout) {
  // Three 3-bit codes 5, 2, 7 = bits 101 010 111 (LSB first):
  // byte 0 = 0b11010101 (code0 in bits 0-2, code1 in 3-5, code2 low 2 bits),
  // byte 1 = 0b00000001.
  const uint8_t codes[] = {5, 2, 7};
  uint8_t stream[2] = {0, 0};
  PackBits(codes, 3, 3, stream, 0);
  EXPECT_EQ(stream[0], 0b11010101);
  EXPECT_EQ(stream[1], 0b00000001);
}

TEST(PackingTest, ExactlyWBitsPerCode) {
  for (int bits = 1; bits <= 8; ++bits) {
    EXPECT_EQ(PackedBytes(128, bits), 16 * bits);
    EXPECT_EQ(PackedBytes(36, bits), (36 * bits + 7) / 8);
  }
}

}  // namespace
}  // namespace ropekv::kernels
