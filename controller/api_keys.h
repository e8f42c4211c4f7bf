// API keys of the HTTP API: bearer tokens for the inference endpoints (/v1/*, /metrics) and a
// separate admin key for the lifecycle REST API (/api/v1/*).
//
// Key files: one key per line; blank lines and lines starting with '#' are ignored, surrounding
// whitespace is trimmed. A key is compared in constant time (sodium_memcmp over equal-length
// SHA-256 digests, so neither content nor length leaks through timing), and every configured
// key is compared on each request.
//
// ApiAuth decides a request:
//   - inference routes: open when no inference key is configured; else the bearer token must be
//     an inference key or an admin key (admins may call everything);
//   - admin routes: open when no admin key is configured; else the token must be an admin key;
//     a valid inference key gets 403 (permission_error), anything else 401.
// Errors are OpenAI error objects with `WWW-Authenticate: Bearer` on 401.
//
// Thread safety: immutable after construction; safe from any thread.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "controller/http/message.h"

namespace spark::controller {

class ApiKeySet {
 public:
  ApiKeySet() = default;
  // Reads a key file. NotFound when unreadable; InvalidArgument when it holds no key.
  static Result<ApiKeySet> LoadFile(const std::string& path);
  static ApiKeySet FromKeys(const std::vector<std::string>& keys);

  bool empty() const { return digests_.empty(); }
  size_t size() const { return digests_.size(); }
  // Constant-time membership test.
  bool Contains(std::string_view key) const;

 private:
  std::vector<std::array<unsigned char, 32>> digests_;
};

struct ApiAuth {
  ApiKeySet inference_keys;
  ApiKeySet admin_keys;

  // nullopt when the request may proceed, else the 401/403 response.
  std::optional<http::Response> CheckInference(const http::Request& request) const;
  std::optional<http::Response> CheckAdmin(const http::Request& request) const;
};

}  // namespace spark::controller
