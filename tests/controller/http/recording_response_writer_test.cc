#include "controller/http/recording_response_writer.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>

#include "controller/http/json.h"

namespace spark::http {
namespace {

using std::chrono::milliseconds;

TEST(RecordingResponseWriterTest, RecordsAResponseSentFromAnotherThread) {
  Request request;
  request.path = "/api/v1/models";
  auto writer = std::make_shared<RecordingResponseWriter>(request);
  EXPECT_EQ(writer->request().path, "/api/v1/models");
  EXPECT_EQ(writer->WaitForResponse(milliseconds(10)), std::nullopt);
  std::thread answer([writer] { writer->Send(JsonResponse(202, {{"name", "glm"}})); });
  auto recorded = writer->WaitForResponse(milliseconds(5000));
  answer.join();
  ASSERT_TRUE(recorded.has_value());
  EXPECT_EQ(recorded->status, 202);
  EXPECT_EQ(nlohmann::json::parse(recorded->body)["name"], "glm");
  EXPECT_FALSE(recorded->streamed);
  EXPECT_FALSE(writer->Send(JsonResponse(200, {})));
  EXPECT_FALSE(writer->StartStream(200, {}));
}

TEST(RecordingResponseWriterTest, RecordsStreams) {
  RecordingResponseWriter writer;
  EXPECT_FALSE(writer.Write("x"));
  EXPECT_FALSE(writer.End());
  ASSERT_TRUE(writer.StartStream(200, {{"Content-Type", "text/event-stream"}}));
  EXPECT_TRUE(writer.Write("a"));
  EXPECT_TRUE(writer.Write(""));
  EXPECT_TRUE(writer.Write("b"));
  EXPECT_FALSE(writer.Snapshot().complete);
  EXPECT_TRUE(writer.End());
  EXPECT_FALSE(writer.Write("c"));
  auto recorded = writer.Snapshot();
  EXPECT_TRUE(recorded.streamed);
  EXPECT_TRUE(recorded.complete);
  EXPECT_EQ(recorded.chunks, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(recorded.body, "ab");
}

TEST(RecordingResponseWriterTest, DisconnectRunsOnCloseOnlyBeforeCompletion) {
  RecordingResponseWriter pending;
  int calls = 0;
  pending.OnClose([&] { ++calls; });
  ASSERT_TRUE(pending.StartStream(200, {}));
  pending.SimulateClientDisconnect();
  pending.SimulateClientDisconnect();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(pending.IsClosed());
  EXPECT_FALSE(pending.Write("late"));
  pending.OnClose([&] { ++calls; });  // already closed: runs now
  EXPECT_EQ(calls, 2);

  RecordingResponseWriter done;
  int done_calls = 0;
  done.OnClose([&] { ++done_calls; });
  ASSERT_TRUE(done.Send(Response::Text(200, "ok")));
  done.SimulateClientDisconnect();
  EXPECT_EQ(done_calls, 0);

  done.SetBufferedBytesForTest(123);
  EXPECT_EQ(done.BufferedBytes(), 123u);
}

}  // namespace
}  // namespace spark::http
