#include "service/auth.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "service/profiles.h"

namespace ropekv::service {
namespace {

// Constant-time equality: looks at every byte of the longer input.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() ^ b.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<Authenticator> Authenticator::LoadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  Authenticator auth;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> parts =
        absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", n, ": expected '<token> <tenant>'"));
    }
    if (parts[0].size() < 8) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": tokens must have at least 8 characters"));
    }
    if (absl::Status s = ValidateId(parts[1], absl::StrCat(path, ":", n, ": tenant"));
        !s.ok()) {
      return s;
    }
    auth.tokens_.emplace_back(parts[0], parts[1]);
  }
  if (auth.tokens_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no tokens"));
  }
  return auth;
}

absl::StatusOr<std::string> Authenticator::Authenticate(
    absl::string_view authorization) const {
  if (tokens_.empty()) return std::string(kDefaultTenant);
  // The scheme name is case-insensitive (RFC 6750 after RFC 7235).
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError(
        "authorization: expected metadata 'authorization: Bearer <token>'");
  }
  const absl::string_view token = authorization.substr(kBearer.size());
  const std::string* tenant = nullptr;
  for (const auto& [known, t] : tokens_) {  // no early exit
    if (ConstantTimeEquals(known, token)) tenant = &t;
  }
  if (tenant == nullptr) return absl::UnauthenticatedError("authorization: unknown token");
  return *tenant;
}

}  // namespace ropekv::service
