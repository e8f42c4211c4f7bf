// HTTP request and response values shared by the server, the router, the handlers and the client.
//
//   Request:  what a handler sees: method, decoded path, path parameters ({name} in the route
//             pattern), decoded query parameters, headers (case-insensitive lookup), body.
//   Response: a complete response (status, headers, body); Content-Length, Connection and Date
//             are written by the server, never taken from `headers`.
//
// Helpers: percent-decoding, query-string parsing, reason phrases. JSON bodies and JSON error
// responses live in controller/http/json.h.
//
// Thread safety: plain values; safe to copy and move between threads, not synchronised.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace spark::http {

enum class Method { kGet, kHead, kPost, kPut, kDelete, kPatch, kOptions, kOther };

// "GET", "POST", ...; "OTHER" for kOther.
std::string_view MethodName(Method method);
// Exact, case-sensitive (RFC 9110): "GET" -> kGet; anything unknown -> kOther.
Method ParseMethod(std::string_view name);

// Header fields in arrival order; names keep their spelling, lookups ignore case.
using Headers = std::vector<std::pair<std::string, std::string>>;

// The value of the first header named `name` (ASCII case-insensitive), or nullptr.
const std::string* FindHeader(const Headers& headers, std::string_view name);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

struct Request {
  Method method = Method::kGet;
  std::string method_name;   // as received ("GET", "PROPFIND")
  std::string target;        // raw request target: "/api/v1/runs?model=a%20b"
  std::string path;          // percent-decoded path without the query: "/api/v1/runs"
  std::string query_string;  // raw text after '?', empty when none
  // Decoded query parameters ('+' is a space); for a repeated key the first value wins.
  std::map<std::string, std::string> query;
  // Route parameters: pattern "/api/v1/models/{name}" on "/api/v1/models/glm" -> {"name","glm"}.
  // Values are percent-decoded per segment ("a%2Fb" -> "a/b").
  std::map<std::string, std::string> params;
  Headers headers;
  std::string body;
  std::string remote_address;  // "127.0.0.1:53412", "[::1]:53412"
  int version = 11;            // 10 for HTTP/1.0, 11 for HTTP/1.1
  bool keep_alive = true;      // what the client asked for (Connection header and version)

  const std::string* Header(std::string_view name) const { return FindHeader(headers, name); }
  // The route parameter or "" when the route has no such parameter.
  const std::string& Param(const std::string& name) const;
  // The query parameter, or nullopt when absent.
  std::optional<std::string> Query(const std::string& name) const;
};

struct Response {
  int status = 200;
  Headers headers;  // Content-Type, Retry-After, ...; never Content-Length/Transfer-Encoding
  std::string body;

  // Convenience: a text/plain response.
  static Response Text(int status, std::string body);
};

// "OK", "Not Found", ...; "Unknown" for codes without a standard phrase.
std::string_view ReasonPhrase(int status);

// Percent-decodes `text`; with `plus_is_space` ('application/x-www-form-urlencoded' query rules)
// '+' becomes ' '. Fails (InvalidArgument) on a truncated or non-hex escape.
Result<std::string> PercentDecode(std::string_view text, bool plus_is_space);
// Encodes everything except unreserved characters (A-Z a-z 0-9 - . _ ~).
std::string PercentEncode(std::string_view text);

// "a=1&b=x%20y&flag" -> {a:1, b:"x y", flag:""}; the first value of a repeated key wins.
// Fails (InvalidArgument) on a bad escape.
Result<std::map<std::string, std::string>> ParseQuery(std::string_view query_string);

}  // namespace spark::http
