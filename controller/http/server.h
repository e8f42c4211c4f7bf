// HttpServer: an asynchronous HTTP/1.1 server (Boost.Beast over Asio) for the controller's REST
// API and the OpenAI-compatible endpoints.
//
//   HttpServerOptions options;
//   options.host = "0.0.0.0";
//   options.port = 8080;                      // 0 picks an ephemeral port, see port()
//   HttpServer server(options);
//   SPARK_RETURN_IF_ERROR(server.Add(Method::kGet, "/healthz",
//       [](const Request&) { return JsonResponse(200, {{"status", "ok"}}); }));
//   SPARK_RETURN_IF_ERROR(server.AddAsync(Method::kPost, "/api/v1/models",
//       [&](const Request& r, std::shared_ptr<ResponseWriter> w) { queue.Push(std::move(w)); },
//       {.max_body_bytes = 64 * 1024}));
//   SPARK_RETURN_IF_ERROR(server.Start());
//   ...
//   server.Stop();                            // or let the destructor do it
//
// Behaviour:
//   - Routing (controller/http/router.h): unknown path 404, known path with another method 405
//     with an Allow header, bad percent escape 400; all errors are JSON ({"error": {...}}).
//   - Bodies: a per-route limit (RouteOptions::max_body_bytes, default
//     HttpServerOptions::max_body_bytes); a larger declared Content-Length or chunked body is
//     answered 413 and the connection closed. `Expect: 100-continue` is honoured.
//   - Malformed HTTP is answered 400 and the connection closed; headers over max_header_bytes 431.
//   - Deadlines: a new connection must start its first request within header_timeout; every
//     request's headers must arrive within header_timeout of their first byte (slowloris),
//     the body within body_timeout; an idle keep-alive connection is closed after
//     keep_alive_timeout; queued output not written within write_timeout (a client that stopped
//     reading) closes the connection. A request cut off by its deadline is answered 408.
//   - HEAD is routed like any method (register it to serve it); a HEAD response carries no body.
//   - Keep-alive and pipelining (requests are answered in order, one at a time per connection).
//   - A sync handler that throws, or an async handler that throws before answering, gives 500 JSON;
//     the server never crashes on a handler exception.
//   - While an async or streaming response is pending the connection keeps reading, so a client
//     disconnect is seen at once (ResponseWriter::IsClosed / OnClose).
//
// Threads: `io_threads` Asio threads run every socket operation and every handler. Handlers must
// not block for long: a sync handler occupies an I/O thread until it returns; long work belongs in
// an async handler that hands the ResponseWriter to another thread.
// Thread safety: Add before Start (single thread); Start/Stop from one owner thread; port(),
// stats() from any thread. Ownership: the server owns its threads and sockets; ResponseWriters
// may outlive the server (after Stop they are closed and their calls return false).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "controller/http/message.h"
#include "controller/http/response_writer.h"

namespace spark::http {

namespace internal {
class HttpServerCore;
}  // namespace internal

struct HttpServerOptions {
  std::string host = "127.0.0.1";  // IPv4/IPv6 literal or a resolvable name; "0.0.0.0" = all
  uint16_t port = 0;               // 0: ephemeral port chosen by the kernel, read it with port()
  int io_threads = 2;              // >= 1
  std::chrono::milliseconds header_timeout{10'000};      // (first) byte to end of headers
  std::chrono::milliseconds body_timeout{60'000};        // end of headers to end of body
  std::chrono::milliseconds keep_alive_timeout{60'000};  // idle connection between requests
  std::chrono::milliseconds write_timeout{30'000};       // one batch of queued output
  size_t max_header_bytes = 16 * 1024;                   // request line + headers; more is 431
  size_t max_body_bytes = 1024 * 1024;  // default per-route body limit; more is 413
  // A stream whose unsent chunks exceed this (client not reading) is closed.
  size_t max_stream_buffer_bytes = 16 * 1024 * 1024;
  size_t max_connections = 4096;      // further connections get 503 and are closed
  std::string server_name = "spark";  // the Server header
};

struct RouteOptions {
  size_t max_body_bytes = 0;  // 0: HttpServerOptions::max_body_bytes
};

// Runs on an I/O thread; returns the complete response.
using SyncHandler = std::function<Response(const Request&)>;
// Runs on an I/O thread; answers through `writer` now or later from any thread.
using AsyncHandler = std::function<void(const Request&, std::shared_ptr<ResponseWriter> writer)>;

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers a route (see Router::Add for patterns). FailedPrecondition after Start;
  // InvalidArgument for a bad or duplicate pattern.
  Status Add(Method method, std::string_view pattern, SyncHandler handler,
             RouteOptions route_options = {});
  Status AddAsync(Method method, std::string_view pattern, AsyncHandler handler,
                  RouteOptions route_options = {});

  // Binds, listens and starts the I/O threads. Fails (Unavailable, with the address and the OS
  // error, e.g. "address already in use; pick another --http-listen port") if the address cannot
  // be bound; InvalidArgument for bad options. FailedPrecondition if already started.
  Status Start();
  // Stops accepting, closes every connection (pending writers see IsClosed and their OnClose
  // runs), waits for running handlers to return and joins the I/O threads. Idempotent.
  void Stop();

  // The bound port (the ephemeral one when options.port was 0); 0 before Start.
  uint16_t port() const;

  struct Stats {
    uint64_t connections_accepted = 0;
    uint64_t connections_open = 0;
    uint64_t requests = 0;  // requests whose headers were parsed
  };
  Stats stats() const;

 private:
  // Shared with connections and writers, which may outlive Stop and the server object.
  std::shared_ptr<internal::HttpServerCore> impl_;
};

}  // namespace spark::http
