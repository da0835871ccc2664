#include "planner/allocator.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"

namespace ropekv::planner {

int BitBudget(int num_blocks, double avg_bits) {
  return static_cast<int>(std::floor(num_blocks * avg_bits + 1e-9));
}

absl::StatusOr<std::vector<int>> AllocateBits(absl::Span<const double> scores,
                                              const AllocationOptions& o) {
  if (scores.empty()) {
    return absl::InvalidArgumentError("scores: expected at least one block");
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i]) || scores[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scores[", i, "]: expected a finite value >= 0, got ", scores[i]));
    }
  }
  if (o.min_bits < kMinBits || o.min_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_bits: expected [", kMinBits, ", ", kMaxBits, "], got ", o.min_bits));
  }
  if (o.max_bits < o.min_bits || o.max_bits > kMaxBits) {
    return absl::InvalidArgumentError(absl::StrCat("max_bits: expected [",
                                                   o.min_bits, ", ", kMaxBits,
                                                   "], got ", o.max_bits));
  }
  if (!std::isfinite(o.avg_bits) || o.avg_bits < o.min_bits ||
      o.avg_bits > o.max_bits) {
    return absl::InvalidArgumentError(
        absl::StrCat("avg_bits: expected [", o.min_bits, ", ", o.max_bits,
                     "], got ", o.avg_bits));
  }
  const int num_blocks = static_cast<int>(scores.size());
  std::vector<int> bits(num_blocks, o.min_bits);
  int remaining = BitBudget(num_blocks, o.avg_bits) - num_blocks * o.min_bits;
  while (remaining > 0) {
    int best = -1;
    double best_priority = -1.0;
    for (int i = 0; i < num_blocks; ++i) {
      // s * 4^-b computed with ldexp is exact, so ties are real ties.
      const double priority =
          bits[i] >= o.max_bits ? -1.0 : std::ldexp(scores[i], -2 * bits[i]);
      if (priority > best_priority) {  // strict: lowest index wins ties
        best_priority = priority;
        best = i;
      }
    }
    if (best_priority <= 0) break;
    ++bits[best];
    --remaining;
  }
  return bits;
}

int KeyBytesOf(absl::Span<const int> bits) {
  int code_bits = 0;
  std::set<int> widths;
  for (int b : bits) {
    code_bits += 2 * b;
    widths.insert(b);
  }
  return (code_bits + 7) / 8 + 2 * static_cast<int>(widths.size());
}

absl::StatusOr<std::vector<int>> AllocateBitsForBytes(absl::Span<const double> scores,
                                                      const ByteBudgetOptions& o) {
  if (scores.empty()) return absl::InvalidArgumentError("scores: expected at least one block");
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i]) || scores[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("scores[", i, "]: expected a finite value >= 0, got ", scores[i]));
    }
  }
  if (o.min_bits < kMinBits || o.max_bits > kMaxBits || o.min_bits > o.max_bits) {
    return absl::InvalidArgumentError(absl::StrCat("min_bits/max_bits: expected ", kMinBits, " <= min <= max <= ",
                                                   kMaxBits, ", got ", o.min_bits, "/", o.max_bits));
  }
  if (o.max_groups < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_groups: expected >= 1, got ", o.max_groups));
  }
  if (o.group_multiple < 2 || o.group_multiple % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_multiple: expected an even number of dimensions, got ", o.group_multiple));
  }
  if (o.group_norm_bits < 2 || o.group_norm_bits > 16 || o.group_norm_bits % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_norm_bits: expected an even number of bits in [2, 16], got ", o.group_norm_bits));
  }
  const int n = static_cast<int>(scores.size());
  // Units of 2 bits: a block of width w costs w units, the first group's
  // norm 8 and every further group's group_norm_bits / 2. b bytes allow
  // units <= 4 b (with fp16 norms: code bits <= 8 (b - 2 G)).
  if (o.key_bytes < 0 || o.key_bytes > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("key_bytes: expected [0, 2^20], got ", o.key_bytes));
  }
  const int budget = 4 * o.key_bytes;
  const int norm_units = o.group_norm_bits / 2;  // a further group's norm
  if (budget < n * o.min_bits + 8) {
    return absl::InvalidArgumentError(absl::StrCat("key_bytes: expected at least ", (n * o.min_bits * 2 + 7) / 8 + 2,
                                                   " (min_bits everywhere, one group), got ", o.key_bytes));
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  const int step = o.group_multiple / 2;  // blocks per size unit of a group
  const int widths = o.max_bits - o.min_bits + 1;
  // The cap matters only below the number of widths there are.
  const int groups = std::min(o.max_groups, widths);
  const bool capped = groups < widths;
  const int gdim = capped ? groups : 1;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // f[at(w, g, u)] after i blocks (in score order): the least error with
  // block i - 1 at width index w, g + 1 groups so far (tracked only under
  // a binding cap), u units spent, norms included.
  const size_t layer = static_cast<size_t>(widths) * gdim * (budget + 1);
  auto at = [&](int w, int g, int u) { return (static_cast<size_t>(w) * gdim + g) * (budget + 1) + u; };
  std::vector<double> f(layer, kInf), next(layer);
  std::vector<int8_t> choice(static_cast<size_t>(n) * layer, -1);  // width index of block i - 1
  auto error = [&](int i, int w) { return scores[order[i]] * std::ldexp(1.0, -2 * (o.min_bits + w)); };
  // Block 0 opens the first group.
  for (int w = 0; w < widths; ++w) {
    const int u = o.min_bits + w + 8;
    if (u <= budget) f[at(w, 0, u)] = error(0, w);
  }
  for (int i = 1; i < n; ++i) {
    std::fill(next.begin(), next.end(), kInf);
    int8_t* ch = choice.data() + static_cast<size_t>(i) * layer;
    const bool may_change = i % step == 0;  // earlier groups stay whole multiples
    for (int w = 0; w < widths; ++w) {
      const int bits = o.min_bits + w;
      const double e = error(i, w);
      for (int g = 0; g < gdim; ++g) {
        for (int u = bits; u <= budget; ++u) {
          double best = f[at(w, g, u - bits)];  // the width of block i - 1
          int best_w = w;
          // Or a new, narrower group after a wider width, with its norm.
          const int gp = capped ? g - 1 : g;
          if (may_change && gp >= 0 && u >= bits + norm_units) {
            for (int wp = w + 1; wp < widths; ++wp) {
              const double v = f[at(wp, gp, u - bits - norm_units)];
              if (v < best) {
                best = v;
                best_w = wp;
              }
            }
          }
          if (best < kInf) {
            next[at(w, g, u)] = best + e;
            ch[at(w, g, u)] = static_cast<int8_t>(best_w);
          }
        }
      }
    }
    f.swap(next);
  }
  // The best end state, then back through the choices.
  double best = kInf;
  int bw = -1, bg = -1, bu = -1;
  for (int w = 0; w < widths; ++w) {
    for (int g = 0; g < gdim; ++g) {
      for (int u = 0; u <= budget; ++u) {
        if (f[at(w, g, u)] < best) {
          best = f[at(w, g, u)];
          bw = w;
          bg = g;
          bu = u;
        }
      }
    }
  }
  if (bw < 0) {
    return absl::InvalidArgumentError(absl::StrCat("key_bytes: ", o.key_bytes, " bytes fit no allocation"));
  }
  std::vector<int> bits(n);
  for (int i = n - 1; i >= 0; --i) {
    bits[order[i]] = o.min_bits + bw;
    if (i == 0) break;
    const int prev = choice[static_cast<size_t>(i) * layer + at(bw, bg, bu)];
    bu -= o.min_bits + bw;
    if (prev != bw) {
      bu -= norm_units;
      if (capped) --bg;
    }
    bw = prev;
  }
  return bits;
}

}  // namespace ropekv::planner
