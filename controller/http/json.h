// JSON bodies and OpenAI-style JSON errors for the HTTP API.
//
// Error body (every non-2xx response the server or a handler produces):
//   {"error": {"message": "model \"glm\" not found; list models with GET /api/v1/models",
//              "type": "not_found_error", "param": null, "code": "not_found"}}
// `type` follows the OpenAI families (invalid_request_error, authentication_error,
// permission_error, not_found_error, conflict_error, rate_limit_error, server_error,
// unavailable_error); `code` is a stable machine-readable string (a StatusCodeName for errors made
// from a Status).
//
// Thread safety: free functions over values; safe from any thread.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "controller/http/message.h"

namespace spark::http {

// A response with Content-Type application/json and body json.dump() (UTF-8; invalid UTF-8 in
// strings is replaced, never thrown).
Response JsonResponse(int status, const nlohmann::json& body);

// {"error": {"message", "type", "param": null, "code"}} with Content-Type application/json.
Response ErrorResponse(int status, std::string_view message, std::string_view type,
                       std::string_view code);

// The HTTP status for a Status code: invalid_argument/out_of_range 400, permission_denied 403,
// not_found 404, already_exists/failed_precondition 409, resource_exhausted 429, cancelled 499,
// unimplemented 501, unavailable 503, deadline_exceeded 504, data_loss/internal 500.
int HttpStatusFor(StatusCode code);
// The OpenAI error type for an HTTP status ("invalid_request_error" for most 4xx, ...).
std::string_view ErrorTypeFor(int http_status);
// ErrorResponse(HttpStatusFor(code), message, ErrorTypeFor(...), StatusCodeName(code)).
// `status` must not be OK (an OK status yields a 500 "internal" error).
Response ErrorResponseFromStatus(const Status& status);

// Parses the request body as JSON. An empty or malformed body is InvalidArgument with a message
// that says what was wrong and where ("request body is not valid JSON: ... at byte 12; send a JSON
// object"). Does not check Content-Type.
Result<nlohmann::json> ParseJsonBody(const Request& request);
// Like ParseJsonBody but also requires the top-level value to be an object.
Result<nlohmann::json> ParseJsonObject(const Request& request);

}  // namespace spark::http
