#include "proto/routing.h"

#include <algorithm>
#include <numeric>

namespace ropekv::routing {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t Fnv1a(uint64_t h, absl::string_view bytes) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

// splitmix64's finalizer: FNV alone mixes the last bytes poorly.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Higher score first, then the smaller name.
bool Before(absl::Span<const std::string> members, absl::string_view id, size_t a, size_t b) {
  const uint64_t sa = Score(members[a], id), sb = Score(members[b], id);
  if (sa != sb) return sa > sb;
  return members[a] < members[b];
}

}  // namespace

uint64_t Score(absl::string_view member, absl::string_view session_id) {
  uint64_t h = Fnv1a(kFnvOffset, member);
  h = Fnv1a(h, absl::string_view("\0", 1));
  return Mix(Fnv1a(h, session_id));
}

size_t Owner(absl::Span<const std::string> members, absl::string_view session_id) {
  size_t best = 0;
  for (size_t i = 1; i < members.size(); ++i) {
    if (Before(members, session_id, i, best)) best = i;
  }
  return best;
}

std::vector<size_t> Ranking(absl::Span<const std::string> members, absl::string_view session_id) {
  std::vector<size_t> order(members.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return Before(members, session_id, a, b); });
  return order;
}

}  // namespace ropekv::routing
