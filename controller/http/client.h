// HttpClient: a small synchronous HTTP/1.1 client (Boost.Beast) for sparkctl and tests.
//
//   SPARK_ASSIGN_OR_RETURN(HttpClient client, HttpClient::Create("http://127.0.0.1:8080"));
//   SPARK_ASSIGN_OR_RETURN(ClientResponse r, client.Get("/api/v1/nodes"));
//   if (r.status != 200) ...;  SPARK_ASSIGN_OR_RETURN(nlohmann::json j, r.Json());
//   client.Stream(Method::kPost, "/v1/completions", body.dump(), {},
//                 [](std::string_view line) { ...; return true; });  // false stops reading
//
// Any HTTP status is a successful Result (check ClientResponse::status); errors are transport
// failures: connection refused or reset (Unavailable, naming the address and asking whether the
// server runs there), a deadline (DeadlineExceeded), a malformed response (DataLoss). The
// connection is kept alive between requests and re-opened when the server closed it (a request
// that failed on a reused connection before any response byte is retried once on a new one).
//
// Thread safety: one HttpClient is used by one thread at a time (it owns one connection); use
// one client per thread for parallel requests. Movable, not copyable.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "controller/http/message.h"

namespace spark::http {

struct HttpClientOptions {
  std::chrono::milliseconds connect_timeout{5'000};
  // Whole request for Get/Post/Delete/Send; for Stream, the longest wait for the next bytes.
  std::chrono::milliseconds request_timeout{30'000};
  std::string bearer_token;  // sent as "Authorization: Bearer <token>" when not empty
  size_t max_body_bytes = 64 * 1024 * 1024;  // larger response bodies are DataLoss
};

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;

  const std::string* Header(std::string_view name) const { return FindHeader(headers, name); }
  // Parses the body as JSON (DataLoss with the parse error when it is not JSON).
  Result<nlohmann::json> Json() const;
};

// Called with each line of a streamed body, without its line ending (\n or \r\n); an empty line
// is passed too (SSE event separator). Return false to stop reading (the connection is closed).
using LineCallback = std::function<bool(std::string_view line)>;

class HttpClient {
 public:
  // `base_url`: "http://host:port", "host:port" or "http://[::1]:port" (no path; https is
  // InvalidArgument). Does not connect yet.
  static Result<HttpClient> Create(std::string_view base_url, HttpClientOptions options = {});

  HttpClient(HttpClient&&) noexcept;
  HttpClient& operator=(HttpClient&&) noexcept;
  ~HttpClient();

  Result<ClientResponse> Get(std::string_view target, const Headers& headers = {});
  // Sends body.dump() with Content-Type application/json.
  Result<ClientResponse> Post(std::string_view target, const nlohmann::json& body,
                              const Headers& headers = {});
  Result<ClientResponse> Delete(std::string_view target, const Headers& headers = {});
  // Any method and raw body; a Content-Type in `headers` is sent as given (default
  // application/json when `body` is not empty).
  Result<ClientResponse> Send(Method method, std::string_view target, std::string_view body,
                              const Headers& headers = {});

  // Sends the request and reads the response body line by line as it arrives (chunked,
  // Content-Length or until close), calling `on_line` for each line. Returns the status and
  // headers (body empty) once the body ended or `on_line` returned false. A non-2xx response is
  // not streamed: its whole body is returned in `body` and `on_line` is not called.
  Result<ClientResponse> Stream(Method method, std::string_view target, std::string_view body,
                                const Headers& headers, const LineCallback& on_line);

  // Host and port this client talks to ("127.0.0.1:8080").
  const std::string& authority() const;

 private:
  class Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spark::http
