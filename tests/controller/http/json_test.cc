#include "controller/http/json.h"

#include <gtest/gtest.h>

namespace spark::http {
namespace {

TEST(HttpJsonTest, JsonResponseRoundTrip) {
  nlohmann::json body = {{"name", "glm"}, {"tp", 2}, {"nodes", {"a", "b"}}, {"ratio", 0.5}};
  Response r = JsonResponse(202, body);
  EXPECT_EQ(r.status, 202);
  EXPECT_EQ(*FindHeader(r.headers, "Content-Type"), "application/json");
  EXPECT_EQ(nlohmann::json::parse(r.body), body);
}

TEST(HttpJsonTest, InvalidUtf8IsReplacedNotThrown) {
  Response r = JsonResponse(200, {{"text", std::string("ok\xff")}});
  nlohmann::json parsed = nlohmann::json::parse(r.body);
  EXPECT_EQ(parsed["text"], "ok\xef\xbf\xbd");  // U+FFFD
}

TEST(HttpJsonTest, ErrorResponseShape) {
  Response r = ErrorResponse(404, "model \"x\" not found", "not_found_error", "not_found");
  EXPECT_EQ(r.status, 404);
  nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j, nlohmann::json::parse(
                   R"({"error":{"message":"model \"x\" not found","type":"not_found_error",)"
                   R"("param":null,"code":"not_found"}})"));
}

TEST(HttpJsonTest, StatusMapping) {
  EXPECT_EQ(HttpStatusFor(StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusFor(StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(StatusCode::kInternal), 500);
  EXPECT_EQ(ErrorTypeFor(400), "invalid_request_error");
  EXPECT_EQ(ErrorTypeFor(413), "invalid_request_error");
  EXPECT_EQ(ErrorTypeFor(401), "authentication_error");
  EXPECT_EQ(ErrorTypeFor(404), "not_found_error");
  EXPECT_EQ(ErrorTypeFor(500), "server_error");

  Response r = ErrorResponseFromStatus(NotFound("model glm not found"));
  EXPECT_EQ(r.status, 404);
  nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["error"]["message"], "model glm not found");
  EXPECT_EQ(j["error"]["type"], "not_found_error");
  EXPECT_EQ(j["error"]["code"], "not_found");

  Response from_ok = ErrorResponseFromStatus(Status::Ok());
  EXPECT_EQ(from_ok.status, 500);
}

TEST(HttpJsonTest, ParseJsonBody) {
  Request r;
  r.body = R"({"a": [1, 2]})";
  auto parsed = ParseJsonObject(r);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ((*parsed)["a"][1], 2);

  r.body = "[1]";
  EXPECT_TRUE(ParseJsonBody(r).ok());
  auto not_object = ParseJsonObject(r);
  EXPECT_EQ(not_object.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(not_object.status().message().find("array"), std::string::npos);

  r.body = R"({"a": )";
  auto bad = ParseJsonBody(r);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("not valid JSON"), std::string::npos);

  r.body.clear();
  EXPECT_NE(ParseJsonBody(r).status().message().find("empty"), std::string::npos);
}

}  // namespace
}  // namespace spark::http
