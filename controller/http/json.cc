#include "controller/http/json.h"

#include <exception>

namespace spark::http {

Response JsonResponse(int status, const nlohmann::json& body) {
  Response response;
  response.status = status;
  response.headers.emplace_back("Content-Type", "application/json");
  response.body =
      body.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  return response;
}

Response ErrorResponse(int status, std::string_view message, std::string_view type,
                       std::string_view code) {
  nlohmann::json error = {{"message", std::string(message)},
                          {"type", std::string(type)},
                          {"param", nullptr},
                          {"code", std::string(code)}};
  return JsonResponse(status, {{"error", std::move(error)}});
}

int HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
      return 409;
    case StatusCode::kFailedPrecondition:
      return 409;
    case StatusCode::kResourceExhausted:
      return 429;
    case StatusCode::kCancelled:
      return 499;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kDeadlineExceeded:
      return 504;
    case StatusCode::kDataLoss:
      return 500;
    case StatusCode::kInternal:
      return 500;
  }
  return 500;
}

std::string_view ErrorTypeFor(int http_status) {
  switch (http_status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 409:
      return "conflict_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "unavailable_error";
    default:
      break;
  }
  if (http_status >= 400 && http_status < 500) return "invalid_request_error";
  return "server_error";
}

Response ErrorResponseFromStatus(const Status& status) {
  if (status.ok()) {
    return ErrorResponse(500, "internal error: an error response was built from an OK status",
                         "server_error", "internal");
  }
  int http_status = HttpStatusFor(status.code());
  return ErrorResponse(http_status, status.message(), ErrorTypeFor(http_status),
                       StatusCodeName(status.code()));
}

Result<nlohmann::json> ParseJsonBody(const Request& request) {
  if (request.body.empty()) {
    return InvalidArgument("request body is empty; send a JSON document");
  }
  try {
    return nlohmann::json::parse(request.body);
  } catch (const nlohmann::json::parse_error& e) {
    return InvalidArgument("request body is not valid JSON: " + std::string(e.what()) +
                           "; send a JSON document");
  } catch (const std::exception& e) {
    return InvalidArgument("request body is not valid JSON: " + std::string(e.what()));
  }
}

Result<nlohmann::json> ParseJsonObject(const Request& request) {
  SPARK_ASSIGN_OR_RETURN(nlohmann::json body, ParseJsonBody(request));
  if (!body.is_object()) {
    return InvalidArgument(std::string("request body must be a JSON object, got ") +
                           body.type_name());
  }
  return body;
}

}  // namespace spark::http
