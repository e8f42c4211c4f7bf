#include "controller/http/sse.h"

#include <gtest/gtest.h>

namespace spark::http {
namespace {

TEST(HttpSseTest, SingleLine) {
  EXPECT_EQ(SseEvent(R"({"a":1})"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(SseEvent("[DONE]"), "data: [DONE]\n\n");
  EXPECT_EQ(SseEvent(""), "data: \n\n");
}

TEST(HttpSseTest, NamedEventAndMultipleLines) {
  EXPECT_EQ(SseEvent("a\nb\r\nc\rd", "update"),
            "event: update\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
  EXPECT_EQ(SseEvent("a\n"), "data: a\ndata: \n\n");
}

TEST(HttpSseTest, CommentAndHeaders) {
  EXPECT_EQ(SseComment("ping"), ": ping\n\n");
  Headers h = SseHeaders();
  EXPECT_EQ(*FindHeader(h, "content-type"), "text/event-stream");
  EXPECT_EQ(*FindHeader(h, "cache-control"), "no-cache");
}

}  // namespace
}  // namespace spark::http
