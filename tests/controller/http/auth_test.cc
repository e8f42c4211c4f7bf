#include "controller/http/auth.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace spark::http {
namespace {

Request WithAuthorization(std::string value) {
  Request r;
  r.headers.emplace_back("Authorization", std::move(value));
  return r;
}

TEST(HttpAuthTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("Secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret2"));
  EXPECT_FALSE(ConstantTimeEquals("secret2", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(HttpAuthTest, BearerTokenParsing) {
  EXPECT_EQ(BearerToken(WithAuthorization("Bearer abc")), "abc");
  EXPECT_EQ(BearerToken(WithAuthorization("bearer   abc  ")), "abc");
  EXPECT_EQ(BearerToken(WithAuthorization("Basic abc")), std::nullopt);
  EXPECT_EQ(BearerToken(WithAuthorization("Bearerabc")), std::nullopt);
  EXPECT_EQ(BearerToken(WithAuthorization("Bearer")), std::nullopt);
  EXPECT_EQ(BearerToken(Request()), std::nullopt);
}

TEST(HttpAuthTest, RequireBearerToken) {
  EXPECT_EQ(RequireBearerToken(Request(), ""), std::nullopt);  // auth off
  EXPECT_EQ(RequireBearerToken(WithAuthorization("Bearer k1"), "k1"), std::nullopt);

  auto missing = RequireBearerToken(Request(), "k1");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 401);
  EXPECT_EQ(*FindHeader(missing->headers, "WWW-Authenticate"), "Bearer");
  auto j = nlohmann::json::parse(missing->body);
  EXPECT_EQ(j["error"]["type"], "authentication_error");
  EXPECT_EQ(j["error"]["code"], "missing_api_key");

  auto wrong = RequireBearerToken(WithAuthorization("Bearer k2"), "k1");
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(nlohmann::json::parse(wrong->body)["error"]["code"], "invalid_api_key");
}

}  // namespace
}  // namespace spark::http
