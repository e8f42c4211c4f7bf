#include "controller/openai_error.h"

#include <cctype>

#include <nlohmann/json.hpp>

#include "controller/http/json.h"

namespace spark::controller {
namespace {

nlohmann::json ErrorObject(std::string_view message, std::string_view type,
                           const std::optional<std::string>& param, std::string_view code) {
  return {{"error",
           {{"message", std::string(message)},
            {"type", std::string(type)},
            {"param", param ? nlohmann::json(*param) : nlohmann::json(nullptr)},
            {"code", std::string(code)}}}};
}

}  // namespace

std::optional<std::string> ParamOf(std::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view field = message.substr(0, colon);
  if (field.front() == '"' && field.back() == '"' && field.size() > 2) {
    field = field.substr(1, field.size() - 2);
  }
  if (!std::isalpha(static_cast<unsigned char>(field.front())) && field.front() != '_') {
    return std::nullopt;
  }
  for (char c : field) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (!std::isalnum(u) && c != '_' && c != '.' && c != '[' && c != ']') return std::nullopt;
  }
  return std::string(field);
}

http::Response OpenAiErrorResponse(int http_status, std::string_view message, std::string_view type,
                                   std::optional<std::string> param, std::string_view code) {
  http::Response response =
      http::JsonResponse(http_status, ErrorObject(message, type, param, code));
  if (http_status == 503) response.headers.push_back({"Retry-After", "1"});
  return response;
}

http::Response OpenAiErrorResponse(const Status& status) {
  const int http_status = status.ok() ? 500 : http::HttpStatusFor(status.code());
  std::string_view message = status.ok() ? "internal error" : std::string_view(status.message());
  return OpenAiErrorResponse(http_status, message, http::ErrorTypeFor(http_status),
                             ParamOf(message), StatusCodeName(status.code()));
}

std::string OpenAiErrorEventJson(const Status& status) {
  const int http_status = http::HttpStatusFor(status.code());
  return ErrorObject(status.message(), http::ErrorTypeFor(http_status), ParamOf(status.message()),
                     StatusCodeName(status.code()))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace spark::controller
