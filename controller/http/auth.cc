#include "controller/http/auth.h"

#include "controller/http/json.h"

namespace spark::http {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Every byte of `b` is visited whatever the content; volatile keeps the compiler from
  // turning the loop into an early-exit comparison.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

std::optional<std::string_view> BearerToken(const Request& request) {
  const std::string* header = request.Header("Authorization");
  if (header == nullptr) return std::nullopt;
  std::string_view value = *header;
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  value = trim(value);
  constexpr std::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() ||
      !EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme) ||
      (value[kScheme.size()] != ' ' && value[kScheme.size()] != '\t')) {
    return std::nullopt;
  }
  return trim(value.substr(kScheme.size()));
}

std::optional<Response> RequireBearerToken(const Request& request,
                                           std::string_view expected_token) {
  if (expected_token.empty()) return std::nullopt;
  std::optional<std::string_view> token = BearerToken(request);
  Response denied;
  if (!token.has_value()) {
    denied = ErrorResponse(401,
                           "missing API key; send the header \"Authorization: Bearer <key>\" "
                           "with the key the server was configured with",
                           "authentication_error", "missing_api_key");
  } else if (!ConstantTimeEquals(*token, expected_token)) {
    denied = ErrorResponse(401,
                           "invalid API key; check the key in the Authorization header against "
                           "the server's configured key",
                           "authentication_error", "invalid_api_key");
  } else {
    return std::nullopt;
  }
  denied.headers.emplace_back("WWW-Authenticate", "Bearer");
  return denied;
}

}  // namespace spark::http
