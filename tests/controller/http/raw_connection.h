// Test helper: a plain blocking TCP connection to 127.0.0.1 for sending hand-made (or broken)
// HTTP bytes and reading the raw answer, with deadlines. Not thread-safe; one per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace spark::http::testing {

struct RawResponse {
  int status = 0;       // 0 when no status line arrived
  std::string head;     // status line and headers, without the blank line
  std::string body;     // de-chunked when the response was chunked
  bool closed = false;  // the server closed the connection after this response
};

class RawConnection {
 public:
  explicit RawConnection(uint16_t port);  // connects; fd() < 0 on failure
  ~RawConnection();
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  int fd() const { return fd_; }
  bool Send(std::string_view data);
  void ShutdownWrite();
  void Close();

  // Reads until `marker` is in the received data (returns everything up to and including it,
  // keeping the rest buffered), the peer closes, or the timeout passes (then returns "").
  std::string ReadUntil(std::string_view marker, std::chrono::milliseconds timeout);
  // Reads until the peer closes or the timeout passes; returns everything received.
  std::string ReadAll(std::chrono::milliseconds timeout);
  // True when bytes (or EOF) are waiting to be read, polled for at most `timeout`.
  bool Readable(std::chrono::milliseconds timeout);
  // True when the peer closed (EOF or reset) within the timeout.
  bool WaitClosed(std::chrono::milliseconds timeout);
  // Reads one response: head, then a Content-Length or chunked body, or until close.
  RawResponse ReadResponse(std::chrono::milliseconds timeout);

 private:
  // Receives more bytes into buffer_; false on EOF, error or timeout.
  bool Fill(std::chrono::steady_clock::time_point deadline);

  int fd_ = -1;
  bool eof_ = false;
  std::string buffer_;
};

}  // namespace spark::http::testing
