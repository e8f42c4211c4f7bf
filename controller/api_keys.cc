#include "controller/api_keys.h"

#include <sodium.h>

#include <fstream>
#include <sstream>

#include "common/check.h"
#include "controller/http/auth.h"
#include "controller/openai_error.h"

namespace spark::controller {
namespace {

std::array<unsigned char, 32> Digest(std::string_view key) {
  std::array<unsigned char, 32> out{};
  crypto_hash_sha256(out.data(), reinterpret_cast<const unsigned char*>(key.data()), key.size());
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

http::Response Denied(int status, std::string_view message, std::string_view code) {
  http::Response r = OpenAiErrorResponse(
      status, message, status == 401 ? "authentication_error" : "permission_error", std::nullopt,
      code);
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

std::optional<http::Response> Check(const http::Request& request, const ApiKeySet& allowed,
                                    const ApiKeySet* other, const char* what) {
  std::optional<std::string_view> token = http::BearerToken(request);
  if (!token.has_value()) {
    return Denied(
        401,
        std::string("missing API key: send the header \"Authorization: Bearer <") + what + ">\"",
        "missing_api_key");
  }
  if (allowed.Contains(*token)) return std::nullopt;
  if (other != nullptr && other->Contains(*token)) {
    return Denied(403, std::string("this API key may not use this endpoint: it needs the ") + what,
                  "permission_denied");
  }
  return Denied(401, std::string("invalid API key: the bearer token is not a configured ") + what,
                "invalid_api_key");
}

}  // namespace

Result<ApiKeySet> ApiKeySet::LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read the key file " + path);
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    std::string_view key = Trim(line);
    if (key.empty() || key.front() == '#') continue;
    keys.emplace_back(key);
  }
  if (keys.empty()) {
    return InvalidArgument("the key file " + path +
                           " holds no key; write one key per line (# starts a comment)");
  }
  return FromKeys(keys);
}

ApiKeySet ApiKeySet::FromKeys(const std::vector<std::string>& keys) {
  SPARK_CHECK(sodium_init() >= 0) << "libsodium failed to initialise";
  ApiKeySet set;
  for (const std::string& key : keys) {
    if (!key.empty()) set.digests_.push_back(Digest(key));
  }
  return set;
}

bool ApiKeySet::Contains(std::string_view key) const {
  const std::array<unsigned char, 32> digest = Digest(key);
  int matches = 0;
  for (const auto& d : digests_) {
    matches |= sodium_memcmp(d.data(), digest.data(), d.size()) == 0 ? 1 : 0;
  }
  return matches != 0;
}

std::optional<http::Response> ApiAuth::CheckInference(const http::Request& request) const {
  if (inference_keys.empty()) return std::nullopt;
  std::optional<std::string_view> token = http::BearerToken(request);
  if (token && admin_keys.Contains(*token)) return std::nullopt;
  return Check(request, inference_keys, nullptr, "API key");
}

std::optional<http::Response> ApiAuth::CheckAdmin(const http::Request& request) const {
  if (admin_keys.empty()) return std::nullopt;
  return Check(request, admin_keys, &inference_keys, "admin key");
}

}  // namespace spark::controller
