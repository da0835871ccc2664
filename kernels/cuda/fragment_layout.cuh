// The fragment page layout: packed codes arranged at store time so that the
// tensor-core attention turns each 32-bit word straight into MMA fragments
// with register lookup tables (prmt), instead of extracting every code from
// a record at a run-time bit offset and looking it up in shared memory.
//
// It holds exactly the bits of the canonical records (planner/packed_layout.md),
// re-arranged per block of 64 tokens of one KV head; a block takes
// 64 x record_bytes bytes at the place the canonical records of the same
// tokens would take, so page sizes and head offsets are the canonical ones.
//
// Units. A block's codes are cut into units of 32 codes per lane: one unit
// per (key group, k-step of 16 slots) in group order, then one per value
// dim-tile of 16 dimensions. A unit of width w is w words per lane; word i
// of unit u (unit base b_u = sum of the earlier units' widths) of lane l
// sits at byte 4 ((b_u + i) 32 + l) of the block: every lane's loads hit
// their own bank.
//
// Inside a unit, the lane's 32 codes are 4 "nibble words" m = 0..3 (one per
// m-tile of 16 tokens) of 8 codes p = 0..7, each code in the low w bits of
// nibble p; NibbleWord below recovers them with a mask or two shifts, and
// code p of nibble word m is stored at these bits (word, bit) of the unit:
//   w = 1: bit 4p + m of word 0
//   w = 2: bits 4p + 2(m & 1) + {0, 1} of word m / 2
//   w = 3: m < 3: bits 4p + {0, 1, 2} of word m; m = 3: code bit b is bit
//          4p + 3 of word b (the spare top bit of the other three's nibbles)
//   w = 4: bits 4p + {0..3} of word m
// Nibble word m is the A fragment of one m16n8k16 MMA: code p is element
// (p & 1) of register p / 2 (a0..a3 of the PTX fragment), lane l = 4 r + c:
//   keys, group k-step s (slots f + 16 s ..):  token 16 m + r + 8 ((p/2) & 1),
//          slot f + 16 s + 2 c + (p & 1) + 8 (p / 4);
//   values, dim-tile j: dimension 16 j + r + 8 ((p/2) & 1),
//          token 16 m + 2 c + (p & 1) + 8 (p / 4).
//
// Norms follow the codes: G + 1 arrays (the key groups', then the value
// norm) of 64 fp16 each, token 16 m + r + 8 i at index 8 r + 2 m + i, so
// that one 16-byte load gives a lane the 8 norms of its tokens.
//
// Supported plans: key groups of a multiple of 16 slots, widths 1-4, head_dim
// a multiple of 16, pages of a multiple of 64 tokens.
#ifndef ROPEKV_KERNELS_CUDA_FRAGMENT_LAYOUT_CUH_
#define ROPEKV_KERNELS_CUDA_FRAGMENT_LAYOUT_CUH_

#include <cstdint>

namespace ropekv::kernels::cuda {

inline constexpr int kFragmentBlockTokens = 64;
inline constexpr int kFragmentMaxWidth = 4;

// Where bit b of code p of nibble word m of a unit of width w is stored:
// the unit's word index and the bit in that word.
struct FragmentBit {
  int word;
  int bit;
};
__host__ __device__ constexpr FragmentBit FragmentCodeBit(int w, int m, int p, int b) {
  return w == 1   ? FragmentBit{0, 4 * p + m}
         : w == 2 ? FragmentBit{m / 2, 4 * p + 2 * (m & 1) + b}
         : w == 3 ? (m < 3 ? FragmentBit{m, 4 * p + b} : FragmentBit{b, 4 * p + 3})
                  : FragmentBit{m, 4 * p + b};
}

// Byte offset in a block of word i of the unit whose words start at
// unit_base, for one lane.
__host__ __device__ constexpr int FragmentWordOffset(int unit_base, int i, int lane) {
  return 4 * ((unit_base + i) * 32 + lane);
}

// Code p of nibble word m, for key slot or value dimension coordinates:
// which token (0..63 in the block) and which slot (0..15 within the
// k-step) or dimension (0..15 within the dim-tile) it is.
struct FragmentElement {
  int token;
  int index;  // slot within the k-step (keys), dimension within the dim-tile (values)
};
__host__ __device__ constexpr FragmentElement KeyFragmentElement(int lane, int m, int p) {
  return {16 * m + lane / 4 + 8 * ((p / 2) & 1), 2 * (lane % 4) + (p & 1) + 8 * (p / 4)};
}
__host__ __device__ constexpr FragmentElement ValueFragmentElement(int lane, int m, int p) {
  return {16 * m + 2 * (lane % 4) + (p & 1) + 8 * (p / 4), lane / 4 + 8 * ((p / 2) & 1)};
}

// Byte offset in a block of the norm of token t (0..63) in norm array n
// (key group n, or the value norm at n = G), after code_words words of codes
// per lane.
__host__ __device__ constexpr int FragmentNormOffset(int code_words, int n, int t) {
  return 128 * code_words + 128 * n + 2 * (8 * ((t % 16) % 8) + 2 * (t / 16) + (t % 16) / 8);
}

// The 8 codes of nibble word m of a unit of width w, given the unit's
// words u[0..w-1], each in the low bits of its nibble (top bit 0).
template <int W>
__host__ __device__ __forceinline__ uint32_t NibbleWord(const uint32_t* u, int m) {
  if constexpr (W == 1) {
    return (u[0] >> m) & 0x11111111u;
  } else if constexpr (W == 2) {
    return (u[m >> 1] >> (2 * (m & 1))) & 0x33333333u;
  } else if constexpr (W == 3) {
    if (m < 3) return u[m] & 0x77777777u;
    return ((u[0] >> 3) & 0x11111111u) | ((u[1] >> 2) & 0x22222222u) | ((u[2] >> 1) & 0x44444444u);
  } else {
    return u[m];
  }
}

}  // namespace ropekv::kernels::cuda

#endif  // ROPEKV_KERNELS_CUDA_FRAGMENT_LAYOUT_CUH_
