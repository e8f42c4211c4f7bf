// Bearer-token authentication for HTTP handlers.
//
//   if (auto denied = RequireBearerToken(request, api_key)) return *denied;
//
// Tokens are compared in constant time (the time does not depend on where the first differing
// byte is). Thread safety: free functions; safe from any thread.
#pragma once

#include <optional>
#include <string_view>

#include "controller/http/message.h"

namespace spark::http {

// Compares a and b in time that depends only on their lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// The token of an "Authorization: Bearer <token>" header (scheme case-insensitive, surrounding
// spaces trimmed), or nullopt when the header is missing or uses another scheme.
std::optional<std::string_view> BearerToken(const Request& request);

// nullopt when `expected_token` is empty (authentication off) or the request carries it;
// otherwise a 401 JSON error (type authentication_error, code invalid_api_key or missing_api_key)
// with `WWW-Authenticate: Bearer`.
std::optional<Response> RequireBearerToken(const Request& request, std::string_view expected_token);

}  // namespace spark::http
