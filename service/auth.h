// Bearer-token authentication: a token file maps tokens to tenants.
//
// File format: one "<token> <tenant>" pair per line; blank lines and lines
// starting with '#' are ignored. Tenants are 1-128 characters of
// [A-Za-z0-9._-] (they name folders). Without a token file every caller is
// the tenant "default".
//
// Thread safety: immutable after Load; Authenticate may run concurrently.
#ifndef ROPEKV_SERVICE_AUTH_H_
#define ROPEKV_SERVICE_AUTH_H_

#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ropekv::service {

inline constexpr char kDefaultTenant[] = "default";

class Authenticator {
 public:
  // Every caller is the default tenant.
  Authenticator() = default;
  // INVALID_ARGUMENT naming the line for a malformed file; NOT_FOUND when
  // it cannot be read.
  static absl::StatusOr<Authenticator> LoadTokenFile(const std::string& path);

  bool enabled() const { return !tokens_.empty(); }

  // The tenant of an "authorization" metadata value ("Bearer <token>").
  // UNAUTHENTICATED when a token is required and missing or unknown. The
  // comparison takes the same time whichever token matches, if any.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization) const;

 private:
  std::vector<std::pair<std::string, std::string>> tokens_;  // token, tenant
};

}  // namespace ropekv::service

#endif  // ROPEKV_SERVICE_AUTH_H_
