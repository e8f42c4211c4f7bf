#include "controller/http/recording_response_writer.h"

#include <utility>

namespace spark::http {

RecordingResponseWriter::RecordingResponseWriter(Request request) : request_(std::move(request)) {}

bool RecordingResponseWriter::Send(Response response) {
  std::lock_guard lock(mu_);
  if (closed_ || recorded_.streamed || recorded_.complete) return false;
  recorded_.status = response.status;
  recorded_.headers = std::move(response.headers);
  recorded_.body = std::move(response.body);
  recorded_.complete = true;
  cv_.notify_all();
  return true;
}

bool RecordingResponseWriter::StartStream(int status, Headers headers) {
  std::lock_guard lock(mu_);
  if (closed_ || recorded_.streamed || recorded_.complete) return false;
  recorded_.status = status;
  recorded_.headers = std::move(headers);
  recorded_.streamed = true;
  cv_.notify_all();
  return true;
}

bool RecordingResponseWriter::Write(std::string_view chunk) {
  std::lock_guard lock(mu_);
  if (closed_ || !recorded_.streamed || recorded_.complete) return false;
  if (chunk.empty()) return true;
  recorded_.chunks.emplace_back(chunk);
  recorded_.body.append(chunk);
  cv_.notify_all();
  return true;
}

bool RecordingResponseWriter::End() {
  std::lock_guard lock(mu_);
  if (closed_ || !recorded_.streamed || recorded_.complete) return false;
  recorded_.complete = true;
  cv_.notify_all();
  return true;
}

bool RecordingResponseWriter::IsClosed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

void RecordingResponseWriter::OnClose(std::function<void()> callback) {
  {
    std::lock_guard lock(mu_);
    if (!closed_) {
      on_close_ = std::move(callback);
      return;
    }
  }
  if (callback) callback();
}

size_t RecordingResponseWriter::BufferedBytes() const {
  std::lock_guard lock(mu_);
  return buffered_bytes_;
}

void RecordingResponseWriter::SimulateClientDisconnect() {
  std::function<void()> callback;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    if (!recorded_.complete) callback = std::move(on_close_);
    on_close_ = nullptr;
    cv_.notify_all();
  }
  if (callback) callback();
}

void RecordingResponseWriter::SetBufferedBytesForTest(size_t bytes) {
  std::lock_guard lock(mu_);
  buffered_bytes_ = bytes;
}

std::optional<RecordingResponseWriter::Recorded> RecordingResponseWriter::WaitForResponse(
    std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return recorded_.complete; })) return std::nullopt;
  return recorded_;
}

RecordingResponseWriter::Recorded RecordingResponseWriter::Snapshot() const {
  std::lock_guard lock(mu_);
  return recorded_;
}

}  // namespace spark::http
