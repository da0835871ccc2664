// Dense bit packing of codes: code j of a run of `bits`-wide codes that
// starts at bit `bit_offset` of a stream occupies bits
// [bit_offset + j*bits, bit_offset + (j+1)*bits), least significant bit
// first, bit b of the stream being bit (b % 8) of byte b / 8. Exactly `bits`
// bits per code, no padding between codes (planner/packed_layout.md).
//
// Header-only and C++17-clean so device code can mirror it line by line.
#ifndef ROPEKV_KERNELS_CPU_BIT_PACKING_H_
#define ROPEKV_KERNELS_CPU_BIT_PACKING_H_

#include <cstdint>

namespace ropekv::kernels {

// Bytes needed for `count` codes of `bits` bits starting at bit 0.
inline int64_t PackedBytes(int64_t count, int bits) {
  return (count * bits + 7) / 8;
}

// Writes codes (each < 2^bits, bits in 1..8) into the stream, leaving every
// other bit of the stream unchanged.
inline void PackBits(const uint8_t* codes, int count, int bits,
                     uint8_t* stream, int64_t bit_offset) {
  const uint32_t mask = (1u << bits) - 1u;
  for (int j = 0; j < count; ++j) {
    const int64_t pos = bit_offset + static_cast<int64_t>(j) * bits;
    const int shift = static_cast<int>(pos & 7);
    uint8_t* p = stream + (pos >> 3);
    const uint32_t value = (codes[j] & mask) << shift;
    const uint32_t keep = ~(mask << shift);
    p[0] = static_cast<uint8_t>((p[0] & keep) | value);
    if (shift + bits > 8) {
      p[1] = static_cast<uint8_t>((p[1] & (keep >> 8)) | (value >> 8));
    }
  }
}

// Reads `count` codes; never touches a byte past the last code's.
inline void UnpackBits(const uint8_t* stream, int64_t bit_offset, int count,
                       int bits, uint8_t* codes) {
  const uint32_t mask = (1u << bits) - 1u;
  for (int j = 0; j < count; ++j) {
    const int64_t pos = bit_offset + static_cast<int64_t>(j) * bits;
    const int shift = static_cast<int>(pos & 7);
    const uint8_t* p = stream + (pos >> 3);
    uint32_t word = p[0];
    if (shift + bits > 8) word |= static_cast<uint32_t>(p[1]) << 8;
    codes[j] = static_cast<uint8_t>((word >> shift) & mask);
  }
}

}  // namespace ropekv::kernels

#endif  // ROPEKV_KERNELS_CPU_BIT_PACKING_H_
