// RecordingResponseWriter: a ResponseWriter that records what a handler answers instead of
// writing to a socket, for unit tests of HTTP handlers (no server, no sockets).
//
//   auto writer = std::make_shared<RecordingResponseWriter>(request);
//   handler(writer->request(), writer);
//   auto answer = writer->WaitForResponse(std::chrono::seconds(1));  // from any thread
//   EXPECT_EQ(answer->status, 202);
//
// SimulateClientDisconnect() plays a client that went away (IsClosed, OnClose), and
// SetBufferedBytesForTest() a slow reader for backpressure logic.
//
// Thread safety: every method may be called from any thread. OnClose callbacks run on the thread
// that calls SimulateClientDisconnect (or on the caller of OnClose when already closed).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "controller/http/response_writer.h"

namespace spark::http {

class RecordingResponseWriter final : public ResponseWriter {
 public:
  struct Recorded {
    int status = 0;
    Headers headers;
    std::string body;                 // Send's body, or the streamed chunks concatenated
    std::vector<std::string> chunks;  // Write calls in order (streams only)
    bool streamed = false;            // StartStream was called
    bool complete = false;            // Send or End was called
  };

  explicit RecordingResponseWriter(Request request = {});

  const Request& request() const override { return request_; }
  bool Send(Response response) override;
  bool StartStream(int status, Headers headers) override;
  bool Write(std::string_view chunk) override;
  bool End() override;
  bool IsClosed() const override;
  void OnClose(std::function<void()> callback) override;
  size_t BufferedBytes() const override;

  // Closes the writer as a vanished client would; runs the OnClose callback unless the response
  // was complete.
  void SimulateClientDisconnect();
  void SetBufferedBytesForTest(size_t bytes);

  // Waits until Send or End was called; nullopt when the timeout passes first.
  std::optional<Recorded> WaitForResponse(std::chrono::milliseconds timeout) const;
  // What was recorded so far.
  Recorded Snapshot() const;

 private:
  const Request request_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  Recorded recorded_;               // guarded by mu_
  bool closed_ = false;             // guarded by mu_
  size_t buffered_bytes_ = 0;       // guarded by mu_
  std::function<void()> on_close_;  // guarded by mu_
};

}  // namespace spark::http
