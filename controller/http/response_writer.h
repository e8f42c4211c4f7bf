// ResponseWriter: how an asynchronous or streaming handler answers one request, later and from
// any thread.
//
// A handler registered with HttpServer::AddAsync receives a std::shared_ptr<ResponseWriter> and
// may answer at once or keep the pointer (a shared_ptr because the handler, the reconciler thread
// and an engine stream may all hold it; the last owner to drop it ends the exchange). It answers
// exactly one of two ways:
//   - Send(response): one complete response;
//   - StartStream(status, headers), then Write(chunk)... (chunked transfer encoding), then End().
// A writer dropped without Send/End answers 500 (or, mid-stream, ends the stream by closing the
// connection so the client sees a truncated body), so a request is never left hanging.
//
// Client disconnect: IsClosed() turns true and the OnClose callback runs (once, on a server I/O
// thread) within a second of the client going away, of the server stopping, or of a stream
// overflowing the server's per-connection buffer limit (a client that stopped reading). Callers
// use it to cancel the work behind the response. Writes after close are dropped and return false.
//
// Thread safety: every method may be called from any thread, concurrently. Calls are ordered:
// chunks are sent in the order the Write calls returned. Callbacks never run under the caller's
// stack except OnClose on an already closed writer, which runs the callback immediately.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "controller/http/message.h"

namespace spark::http {

class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;

  // The request being answered (valid as long as the writer lives).
  virtual const Request& request() const = 0;

  // Sends a complete response. False (and nothing sent) if a response was already started or the
  // connection is closed.
  virtual bool Send(Response response) = 0;

  // Starts a chunked response with `status` and `headers` (Content-Type etc.). False if a
  // response was already started or the connection is closed.
  virtual bool StartStream(int status, Headers headers) = 0;
  // Queues one chunk (empty chunks are skipped). False if no stream was started, it has ended, or
  // the connection is closed.
  virtual bool Write(std::string_view chunk) = 0;
  // Sends the terminating chunk; the connection then serves the next request (keep-alive).
  // False if no stream was started, it already ended, or the connection is closed.
  virtual bool End() = 0;

  // True once the client is gone (or the server stopped) before the response completed.
  virtual bool IsClosed() const = 0;
  // Sets the callback run once when the connection closes before the response completed (not
  // after a completed Send/End). Replaces an earlier callback. If already closed, runs it now.
  virtual void OnClose(std::function<void()> callback) = 0;

  // Bytes queued for the socket and not yet written (streaming backpressure signal).
  virtual size_t BufferedBytes() const = 0;
};

}  // namespace spark::http
