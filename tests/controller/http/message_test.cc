#include "controller/http/message.h"

#include <gtest/gtest.h>

#include <cctype>

namespace spark::http {
namespace {

TEST(HttpMessageTest, MethodNamesRoundTrip) {
  for (Method m : {Method::kGet, Method::kHead, Method::kPost, Method::kPut, Method::kDelete,
                   Method::kPatch, Method::kOptions}) {
    EXPECT_EQ(ParseMethod(MethodName(m)), m) << MethodName(m);
  }
  EXPECT_EQ(ParseMethod("get"), Method::kOther);  // methods are case-sensitive
  EXPECT_EQ(ParseMethod("PROPFIND"), Method::kOther);
  EXPECT_EQ(MethodName(Method::kOther), "OTHER");
}

TEST(HttpMessageTest, HeaderLookupIgnoresCase) {
  Headers headers = {{"Content-Type", "application/json"}, {"X-A", "1"}, {"x-a", "2"}};
  ASSERT_NE(FindHeader(headers, "content-type"), nullptr);
  EXPECT_EQ(*FindHeader(headers, "CONTENT-TYPE"), "application/json");
  EXPECT_EQ(*FindHeader(headers, "X-a"), "1");  // first wins
  EXPECT_EQ(FindHeader(headers, "Content-Length"), nullptr);
  EXPECT_FALSE(EqualsIgnoreCase("abc", "abcd"));
  EXPECT_TRUE(EqualsIgnoreCase("Keep-Alive", "keep-alive"));
}

TEST(HttpMessageTest, PercentDecode) {
  EXPECT_EQ(*PercentDecode("a%20b%2Fc", false), "a b/c");
  EXPECT_EQ(*PercentDecode("a+b", false), "a+b");
  EXPECT_EQ(*PercentDecode("a+b", true), "a b");
  EXPECT_EQ(*PercentDecode("%e2%82%ac", false), "\xe2\x82\xac");
  EXPECT_EQ(*PercentDecode("", false), "");
  EXPECT_EQ(PercentDecode("abc%", false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PercentDecode("abc%4", false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PercentDecode("%zz", false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(PercentDecode("%zz", false).status().message().find("%25"), std::string::npos);
}

TEST(HttpMessageTest, PercentEncodeRoundTrip) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  std::string encoded = PercentEncode(all);
  for (size_t i = 0; i < encoded.size(); ++i) {
    char c = encoded[i];
    bool unreserved =
        std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' || c == '~';
    ASSERT_TRUE(unreserved || c == '%' || (i >= 1 && encoded[i - 1] == '%') ||
                (i >= 2 && encoded[i - 2] == '%'))
        << "byte " << i << " of " << encoded;
  }
  EXPECT_EQ(encoded.size(), 66u + 3u * (256u - 66u));  // 66 unreserved characters
  EXPECT_EQ(*PercentDecode(encoded, false), all);
  EXPECT_EQ(PercentEncode("a b/c~"), "a%20b%2Fc~");
}

TEST(HttpMessageTest, ParseQuery) {
  auto q = ParseQuery("model=glm%204&since=12&flag&empty=&model=second&&x=a+b");
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_EQ(q->at("model"), "glm 4");  // first value wins
  EXPECT_EQ(q->at("since"), "12");
  EXPECT_EQ(q->at("flag"), "");
  EXPECT_EQ(q->at("empty"), "");
  EXPECT_EQ(q->at("x"), "a b");
  EXPECT_EQ(q->size(), 5u);
  EXPECT_TRUE(ParseQuery("")->empty());
  EXPECT_FALSE(ParseQuery("a=%G0").ok());
}

TEST(HttpMessageTest, RequestAccessors) {
  Request r;
  r.params["name"] = "glm";
  r.query["since"] = "3";
  r.headers = {{"Authorization", "Bearer x"}};
  EXPECT_EQ(r.Param("name"), "glm");
  EXPECT_EQ(r.Param("missing"), "");
  EXPECT_EQ(r.Query("since"), "3");
  EXPECT_EQ(r.Query("nope"), std::nullopt);
  ASSERT_NE(r.Header("authorization"), nullptr);
  EXPECT_EQ(*r.Header("authorization"), "Bearer x");
}

TEST(HttpMessageTest, ReasonPhrases) {
  EXPECT_EQ(ReasonPhrase(200), "OK");
  EXPECT_EQ(ReasonPhrase(413), "Content Too Large");
  EXPECT_EQ(ReasonPhrase(503), "Service Unavailable");
  EXPECT_EQ(ReasonPhrase(299), "Unknown");
  Response text = Response::Text(418, "teapot");
  EXPECT_EQ(text.status, 418);
  EXPECT_EQ(*FindHeader(text.headers, "content-type"), "text/plain; charset=utf-8");
}

}  // namespace
}  // namespace spark::http
