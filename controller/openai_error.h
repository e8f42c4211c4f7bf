// OpenAI error objects for the inference endpoints (/v1/*):
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].role",
//              "code": "invalid_argument"}}
// `param` names the request field at fault (null when none). Request parsers put the field first
// in their messages ("temperature: expected a number ..."); ParamOf recovers it from there.
//
// Thread safety: pure functions.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "controller/http/message.h"

namespace spark::controller {

// The field a parser message starts with ("messages[2].content: ..." -> "messages[2].content"),
// or nullopt when the message does not start with a field path.
std::optional<std::string> ParamOf(std::string_view message);

// An error response: HTTP status and type from the Status code (controller/http/json.h), `param`
// from the message, code = StatusCodeName. Unavailable adds "Retry-After: 1".
http::Response OpenAiErrorResponse(const Status& status);

// An error response with every field given.
http::Response OpenAiErrorResponse(int http_status, std::string_view message, std::string_view type,
                                   std::optional<std::string> param, std::string_view code);

// The JSON of an SSE error event ({"error": {...}}, same fields) sent when a stream fails after it
// started.
std::string OpenAiErrorEventJson(const Status& status);

}  // namespace spark::controller
