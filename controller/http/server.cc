#include "controller/http/server.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/check.h"
#include "common/log.h"
#include "controller/http/json.h"
#include "controller/http/router.h"

namespace spark::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;

// Bytes read ahead while a response is pending (pipelined requests, disconnect detection).
constexpr size_t kMaxReadAheadBytes = 64 * 1024;
// After a response that closes the connection, unread request bytes are drained for this long
// (and up to kLingerMaxBytes) so the client reads the response instead of a reset.
constexpr std::chrono::milliseconds kLingerTime{1000};
constexpr size_t kLingerMaxBytes = 1024 * 1024;
constexpr size_t kReadChunkBytes = 16 * 1024;

std::string HttpDate() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

bool HeaderIsSafe(const std::string& name, const std::string& value) {
  if (name.empty()) return false;
  for (char c : name) {
    if (c <= ' ' || c == ':' || c == 127) return false;
  }
  for (char c : value) {
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

bool IsFramingHeader(std::string_view name) {
  return EqualsIgnoreCase(name, "Content-Length") || EqualsIgnoreCase(name, "Transfer-Encoding") ||
         EqualsIgnoreCase(name, "Connection") || EqualsIgnoreCase(name, "Date") ||
         EqualsIgnoreCase(name, "Server");
}

// Status line and headers, ending with the blank line. `content_length` < 0: none written.
std::string SerializeHead(int status, const Headers& headers, const std::string& server_name,
                          long long content_length, bool chunked, bool close, int version) {
  std::string out;
  out.reserve(256);
  out.append(version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  out.append(std::to_string(status)).append(" ").append(ReasonPhrase(status)).append("\r\n");
  out.append("Server: ").append(server_name).append("\r\n");
  out.append("Date: ").append(HttpDate()).append("\r\n");
  for (const auto& [name, value] : headers) {
    if (IsFramingHeader(name) || !HeaderIsSafe(name, value)) continue;
    out.append(name).append(": ").append(value).append("\r\n");
  }
  if (content_length >= 0) {
    out.append("Content-Length: ").append(std::to_string(content_length)).append("\r\n");
  }
  if (chunked) out.append("Transfer-Encoding: chunked\r\n");
  if (close) {
    out.append("Connection: close\r\n");
  } else if (version == 10) {
    out.append("Connection: keep-alive\r\n");
  }
  out.append("\r\n");
  return out;
}

struct RouteEntry {
  SyncHandler sync;
  AsyncHandler async;
  size_t max_body_bytes = 0;
};

class Connection;

}  // namespace

namespace internal {

// Shared by the HttpServer facade, every connection and every writer: the io_context must outlive
// all sockets and all posts, so whoever is last keeps it alive.
class HttpServerCore : public std::enable_shared_from_this<HttpServerCore> {
 public:
  explicit HttpServerCore(HttpServerOptions options)
      : options(std::move(options)), accept_strand(asio::make_strand(ioc)) {}

  // Posts `fn` to `strand` unless the server stopped. Returns false (nothing posted) after Stop.
  template <typename Fn>
  bool PostIfRunning(Strand& strand, Fn&& fn) {
    std::lock_guard lock(mu);
    if (stopped) return false;
    asio::post(strand, std::forward<Fn>(fn));
    return true;
  }

  Status Add(Method method, std::string_view pattern, RouteEntry entry);
  Status Start();
  void Stop();
  void Accept();
  void OnAccept(beast::error_code ec, tcp::socket socket);
  void Unregister(Connection* connection);

  const HttpServerOptions options;
  Router router;
  std::vector<RouteEntry> routes;

  asio::io_context ioc;
  Strand accept_strand;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::steady_timer> accept_retry_timer;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;

  std::mutex mu;
  bool started = false;                                                    // guarded by mu
  bool stopped = false;                                                    // guarded by mu
  std::unordered_map<Connection*, std::weak_ptr<Connection>> connections;  // guarded by mu

  std::atomic<uint16_t> port{0};
  std::atomic<uint64_t> connections_accepted{0};
  std::atomic<uint64_t> connections_open{0};
  std::atomic<uint64_t> requests{0};
};

}  // namespace internal

namespace {

class WriterImpl;

// One TCP connection. Every member is used on the connection's strand only, except those marked.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(std::shared_ptr<internal::HttpServerCore> server, tcp::socket socket)
      : server_(std::move(server)),
        strand_(asio::make_strand(server_->ioc)),
        socket_(std::move(socket)),
        read_timer_(strand_),
        write_timer_(strand_) {
    server_->connections_open.fetch_add(1);
    beast::error_code ec;
    tcp::endpoint remote = socket_.remote_endpoint(ec);
    if (!ec) {
      std::string address = remote.address().to_string();
      remote_address_ = remote.address().is_v6() ? "[" + address + "]" : address;
      remote_address_ += ":" + std::to_string(remote.port());
    }
  }

  ~Connection() {
    if (!closed_) server_->connections_open.fetch_sub(1);
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Strand& strand() { return strand_; }
  internal::HttpServerCore& server() { return *server_; }

  // On the strand, first call.
  void Start(bool overloaded) {
    if (overloaded) {
      phase_ = Phase::kHandling;
      SendServerError(503, "the server has too many open connections; retry later",
                      "unavailable_error", "too_many_connections", /*close=*/true);
      return;
    }
    ReadNextRequest();
  }

  // Closes the socket now; a pending response's writer is told (OnClose).
  void Close();

  // Called through WriterImpl (posted to the strand). `seq` names the request the writer
  // answers; calls for an older request are ignored.
  void SendResponse(uint64_t seq, Response response);
  void StartStream(uint64_t seq, int status, Headers headers);
  void WriteChunk(uint64_t seq, std::string encoded);
  void EndStream(uint64_t seq);
  void AbortStream(uint64_t seq);

  // Bytes queued for the socket (any thread).
  size_t queued_bytes() const { return queued_bytes_.load(); }

 private:
  enum class Phase {
    kIdle,      // waiting for the first byte of the next request
    kHeader,    // reading the request line and headers
    kBody,      // reading the body
    kHandling,  // a handler or its response is in progress
    kLinger,    // response sent, draining input before closing
    kClosed,
  };
  enum class TimerOwner { kRead, kWrite };

  void ReadNextRequest();
  void ReadMore();
  void OnReadMore(beast::error_code ec, size_t bytes);
  void ReadHeader();
  void OnHeader(beast::error_code ec);
  void ReadBody();
  void OnBody(beast::error_code ec);
  void Dispatch(Request request, const RouteEntry& route);
  void FailRead(beast::error_code ec);

  void SendServerError(int status, std::string_view message, std::string_view type,
                       std::string_view code, bool close, Headers extra = {});
  void QueueCompleteResponse(Response response, bool close);
  void Enqueue(std::string data);
  void WriteNext();
  void OnWrite(beast::error_code ec, size_t bytes);
  void ResponseComplete();
  void LingeringClose();

  void ArmTimer(TimerOwner owner, std::chrono::milliseconds timeout);
  void CancelTimer(TimerOwner owner);
  void OnTimeout(TimerOwner owner);

  std::shared_ptr<internal::HttpServerCore> server_;
  Strand strand_;
  tcp::socket socket_;
  asio::steady_timer read_timer_;
  asio::steady_timer write_timer_;
  uint64_t read_timer_gen_ = 0;
  uint64_t write_timer_gen_ = 0;
  bool read_timed_out_ = false;
  std::string remote_address_;

  Phase phase_ = Phase::kIdle;
  bool first_request_ = true;
  bool closed_ = false;
  bool reading_ = false;              // a ReadMore operation is in flight
  bool header_after_cancel_ = false;  // the read-ahead was cancelled to parse a buffered request
  size_t lingered_bytes_ = 0;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request pending_request_;  // headers parsed, body being read
  const RouteEntry* pending_route_ = nullptr;

  // The request being answered.
  uint64_t seq_ = 0;
  std::weak_ptr<WriterImpl> writer_;
  int request_version_ = 11;
  bool head_request_ = false;
  bool close_after_response_ = false;
  bool response_queued_ = false;  // the last byte of the response is queued
  bool stream_started_ = false;

  // Output queue.
  std::deque<std::string> out_;
  std::vector<std::string> in_flight_;
  bool writing_ = false;
  std::atomic<size_t> queued_bytes_{0};  // any thread reads
};

// The ResponseWriter handed to handlers. State transitions happen under mu_ so that concurrent
// callers get consistent answers; the socket work is posted to the connection's strand in the
// order the calls took the lock.
class WriterImpl final : public ResponseWriter {
 public:
  WriterImpl(std::shared_ptr<Connection> connection, uint64_t seq, Request request,
             size_t max_stream_buffer_bytes)
      : connection_(std::move(connection)),
        seq_(seq),
        request_(std::move(request)),
        max_stream_buffer_bytes_(max_stream_buffer_bytes) {}

  ~WriterImpl() override {
    std::lock_guard lock(mu_);
    if (closed_) return;
    if (state_ == State::kNew) {
      SPARK_LOG(ERROR) << "HTTP handler for " << request_.method_name << " " << request_.path
                       << " dropped its ResponseWriter without answering";
      Response response =
          ErrorResponse(500, "internal error: the handler finished without answering the request",
                        "server_error", "internal");
      PostLocked([c = connection_, seq = seq_, r = std::move(response)]() mutable {
        c->SendResponse(seq, std::move(r));
      });
    } else if (state_ == State::kStreaming) {
      PostLocked([c = connection_, seq = seq_] { c->AbortStream(seq); });
    }
  }

  const Request& request() const override { return request_; }

  bool Send(Response response) override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kNew) return false;
    state_ = State::kDone;
    return PostLocked([c = connection_, seq = seq_, r = std::move(response)]() mutable {
      c->SendResponse(seq, std::move(r));
    });
  }

  bool StartStream(int status, Headers headers) override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kNew) return false;
    state_ = State::kStreaming;
    return PostLocked([c = connection_, seq = seq_, status, h = std::move(headers)]() mutable {
      c->StartStream(seq, status, std::move(h));
    });
  }

  bool Write(std::string_view chunk) override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kStreaming) return false;
    if (chunk.empty()) return true;
    std::string encoded;
    if (request_.version == 10) {
      encoded.assign(chunk);  // HTTP/1.0: raw body, ended by closing the connection
    } else {
      char size[32];
      int n = std::snprintf(size, sizeof(size), "%zx\r\n", chunk.size());
      encoded.reserve(chunk.size() + static_cast<size_t>(n) + 2);
      encoded.append(size, static_cast<size_t>(n)).append(chunk).append("\r\n");
    }
    return PostLocked([c = connection_, seq = seq_, e = std::move(encoded)]() mutable {
      c->WriteChunk(seq, std::move(e));
    });
  }

  bool End() override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kStreaming) return false;
    state_ = State::kDone;
    return PostLocked([c = connection_, seq = seq_] { c->EndStream(seq); });
  }

  bool IsClosed() const override {
    std::lock_guard lock(mu_);
    return closed_;
  }

  void OnClose(std::function<void()> callback) override {
    {
      std::lock_guard lock(mu_);
      if (!closed_) {
        on_close_ = std::move(callback);
        return;
      }
    }
    if (callback) callback();
  }

  size_t BufferedBytes() const override { return connection_->queued_bytes(); }

  // From the connection's strand: the connection is gone. Runs the callback when the response
  // was not complete.
  void MarkClosed() {
    std::function<void()> callback;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      if (state_ != State::kDone) callback = std::move(on_close_);
      on_close_ = nullptr;
    }
    if (callback) {
      try {
        callback();
      } catch (const std::exception& e) {
        SPARK_LOG(ERROR) << "HTTP OnClose callback threw: " << e.what();
      } catch (...) {
        SPARK_LOG(ERROR) << "HTTP OnClose callback threw a non-standard exception";
      }
    }
  }

  // From the connection's strand: the response completed; later calls return false.
  void MarkFinished() {
    std::lock_guard lock(mu_);
    closed_ = true;
    on_close_ = nullptr;
  }

  size_t max_stream_buffer_bytes() const { return max_stream_buffer_bytes_; }

 private:
  enum class State { kNew, kStreaming, kDone };

  template <typename Fn>
  bool PostLocked(Fn&& fn) {
    if (!connection_->server().PostIfRunning(connection_->strand(), std::forward<Fn>(fn))) {
      closed_ = true;
      on_close_ = nullptr;
      return false;
    }
    return true;
  }

  std::shared_ptr<Connection> connection_;
  const uint64_t seq_;
  const Request request_;
  const size_t max_stream_buffer_bytes_;

  mutable std::mutex mu_;
  State state_ = State::kNew;       // guarded by mu_
  bool closed_ = false;             // guarded by mu_
  std::function<void()> on_close_;  // guarded by mu_
};

void Connection::ArmTimer(TimerOwner owner, std::chrono::milliseconds timeout) {
  asio::steady_timer& timer = owner == TimerOwner::kRead ? read_timer_ : write_timer_;
  uint64_t& gen = owner == TimerOwner::kRead ? read_timer_gen_ : write_timer_gen_;
  uint64_t my_gen = ++gen;
  timer.expires_after(timeout);
  timer.async_wait([self = shared_from_this(), owner, my_gen](beast::error_code ec) {
    uint64_t current = owner == TimerOwner::kRead ? self->read_timer_gen_ : self->write_timer_gen_;
    if (ec || current != my_gen || self->closed_) return;
    self->OnTimeout(owner);
  });
}

void Connection::CancelTimer(TimerOwner owner) {
  if (owner == TimerOwner::kRead) {
    ++read_timer_gen_;
    read_timer_.cancel();
  } else {
    ++write_timer_gen_;
    write_timer_.cancel();
  }
}

void Connection::OnTimeout(TimerOwner owner) {
  if (owner == TimerOwner::kWrite) {
    Close();  // the client stopped reading
    return;
  }
  read_timed_out_ = true;
  beast::error_code ignored;
  socket_.cancel(ignored);  // the pending read completes with operation_aborted
}

void Connection::Close() {
  if (closed_) return;
  closed_ = true;
  Phase phase = phase_;
  phase_ = Phase::kClosed;
  CancelTimer(TimerOwner::kRead);
  CancelTimer(TimerOwner::kWrite);
  beast::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  out_.clear();
  queued_bytes_.store(0);
  server_->connections_open.fetch_sub(1);
  server_->Unregister(this);
  if (phase == Phase::kHandling) {
    if (auto writer = writer_.lock()) writer->MarkClosed();
  }
}

void Connection::ReadNextRequest() {
  if (closed_) return;
  phase_ = Phase::kIdle;
  parser_.reset();
  response_queued_ = false;
  stream_started_ = false;
  close_after_response_ = false;
  head_request_ = false;
  read_timed_out_ = false;
  writer_.reset();
  if (buffer_.size() > 0 && !reading_) {
    ReadHeader();
    return;
  }
  ArmTimer(TimerOwner::kRead,
           first_request_ ? server_->options.header_timeout : server_->options.keep_alive_timeout);
  if (!reading_) {
    ReadMore();
  } else if (buffer_.size() > 0) {
    // A read-ahead is still waiting for bytes while a pipelined request is already buffered:
    // stop it (no data is lost) and parse the buffered request when it returns.
    header_after_cancel_ = true;
    beast::error_code ignored;
    socket_.cancel(ignored);
  }
}

void Connection::ReadMore() {
  if (closed_ || reading_) return;
  size_t room = kReadChunkBytes;
  if (phase_ != Phase::kLinger) {
    if (buffer_.size() >= kMaxReadAheadBytes) return;  // enough buffered; stop reading ahead
    room = std::min(room, kMaxReadAheadBytes - buffer_.size());
  }
  reading_ = true;
  socket_.async_read_some(
      buffer_.prepare(room),
      asio::bind_executor(strand_, [self = shared_from_this()](beast::error_code ec, size_t n) {
        self->OnReadMore(ec, n);
      }));
}

void Connection::OnReadMore(beast::error_code ec, size_t bytes) {
  reading_ = false;
  if (closed_) return;
  buffer_.commit(bytes);
  if (header_after_cancel_) {
    header_after_cancel_ = false;
    if (phase_ == Phase::kIdle && !read_timed_out_ &&
        (!ec || ec == asio::error::operation_aborted)) {
      CancelTimer(TimerOwner::kRead);
      ReadHeader();
      return;
    }
  }
  if (ec) {
    // Client gone (EOF, reset), idle deadline, or server stop.
    Close();
    return;
  }
  switch (phase_) {
    case Phase::kIdle:
      CancelTimer(TimerOwner::kRead);
      ReadHeader();
      return;
    case Phase::kHandling:
      ReadMore();
      return;
    case Phase::kLinger:
      lingered_bytes_ += bytes;
      buffer_.consume(buffer_.size());
      if (lingered_bytes_ > kLingerMaxBytes) {
        Close();
      } else {
        ReadMore();
      }
      return;
    case Phase::kHeader:
    case Phase::kBody:
    case Phase::kClosed:
      return;  // not reachable: ReadMore is not issued in these phases
  }
}

void Connection::ReadHeader() {
  phase_ = Phase::kHeader;
  first_request_ = false;
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(server_->options.max_header_bytes));
  parser_->body_limit(boost::none);  // checked against the route's limit once routed
  ArmTimer(TimerOwner::kRead, server_->options.header_timeout);
  bhttp::async_read_header(
      socket_, buffer_, *parser_,
      asio::bind_executor(strand_, [self = shared_from_this()](beast::error_code ec, size_t) {
        self->OnHeader(ec);
      }));
}

void Connection::FailRead(beast::error_code ec) {
  if (read_timed_out_) {
    SendServerError(408,
                    phase_ == Phase::kHeader
                        ? "request headers did not arrive in time; send the whole request at once"
                        : "request body did not arrive in time; send the whole body at once",
                    "invalid_request_error", "request_timeout", /*close=*/true);
    return;
  }
  if (ec == bhttp::error::header_limit) {
    SendServerError(431,
                    "request headers exceed " + std::to_string(server_->options.max_header_bytes) +
                        " bytes; send fewer or shorter headers",
                    "invalid_request_error", "headers_too_large", /*close=*/true);
    return;
  }
  if (ec == bhttp::error::bad_version) {
    SendServerError(505, "only HTTP/1.0 and HTTP/1.1 are supported; send HTTP/1.1",
                    "invalid_request_error", "http_version_not_supported", /*close=*/true);
    return;
  }
  if (ec == bhttp::error::body_limit) {
    SendServerError(413, "request body too large for this endpoint; send a smaller body",
                    "invalid_request_error", "body_too_large", /*close=*/true);
    return;
  }
  if (&ec.category() == &bhttp::make_error_code(bhttp::error::bad_target).category() &&
      ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
    SendServerError(400, "malformed HTTP request: " + ec.message(), "invalid_request_error",
                    "bad_request", /*close=*/true);
    return;
  }
  Close();  // EOF, reset, cancelled
}

void Connection::OnHeader(beast::error_code ec) {
  CancelTimer(TimerOwner::kRead);
  if (closed_) return;
  if (ec) {
    FailRead(ec);
    return;
  }
  server_->requests.fetch_add(1);
  const auto& msg = parser_->get();
  request_version_ = msg.version() == 10 ? 10 : 11;
  head_request_ = msg.method() == bhttp::verb::head;

  Request request;
  request.method_name = std::string(msg.method_string());
  request.method = ParseMethod(request.method_name);
  request.target = std::string(msg.target());
  request.version = request_version_;
  request.keep_alive = msg.keep_alive();
  request.remote_address = remote_address_;
  for (const auto& field : msg) {
    request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  bool has_body = parser_->chunked() || parser_->content_length().value_or(0) > 0;
  // Errors answered before the body is read close the connection when a body follows.
  bool close_on_error = has_body || !request.keep_alive;

  std::string_view target = request.target;
  if (target.empty() || target.front() != '/') {
    SendServerError(400,
                    "request target \"" + request.target +
                        "\" is not an absolute path; send a path such as /api/v1/models",
                    "invalid_request_error", "bad_request", /*close=*/true);
    return;
  }
  size_t question = target.find('?');
  std::string_view raw_path = target.substr(0, question);
  if (question != std::string_view::npos) request.query_string = target.substr(question + 1);
  Result<std::string> path = PercentDecode(raw_path, /*plus_is_space=*/false);
  if (!path.ok()) {
    SendServerError(400, "bad request path: " + path.status().message(), "invalid_request_error",
                    "bad_request", close_on_error);
    return;
  }
  request.path = std::move(*path);
  auto query = ParseQuery(request.query_string);
  if (!query.ok()) {
    SendServerError(400, "bad query string: " + query.status().message(), "invalid_request_error",
                    "bad_request", close_on_error);
    return;
  }
  request.query = std::move(*query);

  Router::Match match = server_->router.Find(request.method, raw_path);
  switch (match.kind) {
    case Router::MatchKind::kNotFound:
      SendServerError(404,
                      "no endpoint " + request.method_name + " " + request.path +
                          " on this server; check the URL and the API version",
                      "not_found_error", "not_found", close_on_error);
      return;
    case Router::MatchKind::kMethodNotAllowed: {
      std::string allow;
      for (Method m : match.allowed) {
        if (!allow.empty()) allow += ", ";
        allow += MethodName(m);
      }
      SendServerError(405,
                      "method " + request.method_name + " is not allowed on " + request.path +
                          "; allowed: " + allow,
                      "invalid_request_error", "method_not_allowed", close_on_error,
                      {{"Allow", allow}});
      return;
    }
    case Router::MatchKind::kBadPath:
      SendServerError(400, "bad request path: " + match.error, "invalid_request_error",
                      "bad_request", close_on_error);
      return;
    case Router::MatchKind::kFound:
      break;
  }
  request.params = std::move(match.params);
  const RouteEntry& route = server_->routes[match.route_id];
  size_t limit = route.max_body_bytes;
  if (auto length = parser_->content_length(); length.has_value() && *length > limit) {
    SendServerError(413,
                    "request body of " + std::to_string(*length) + " bytes exceeds the limit of " +
                        std::to_string(limit) + " bytes for " + request.path +
                        "; send a smaller body",
                    "invalid_request_error", "body_too_large", /*close=*/true);
    return;
  }
  if (parser_->is_done()) {
    Dispatch(std::move(request), route);
    return;
  }
  parser_->body_limit(limit);
  const std::string* expect = request.Header("Expect");
  if (expect != nullptr) {
    if (!EqualsIgnoreCase(*expect, "100-continue")) {
      SendServerError(417, "unsupported Expect header \"" + *expect + "\"; only 100-continue",
                      "invalid_request_error", "expectation_failed", /*close=*/true);
      return;
    }
    if (request_version_ == 11) Enqueue("HTTP/1.1 100 Continue\r\n\r\n");
  }
  pending_request_ = std::move(request);
  pending_route_ = &route;
  ReadBody();
}

void Connection::ReadBody() {
  phase_ = Phase::kBody;
  ArmTimer(TimerOwner::kRead, server_->options.body_timeout);
  bhttp::async_read(
      socket_, buffer_, *parser_,
      asio::bind_executor(strand_, [self = shared_from_this()](beast::error_code ec, size_t) {
        self->OnBody(ec);
      }));
}

void Connection::OnBody(beast::error_code ec) {
  CancelTimer(TimerOwner::kRead);
  if (closed_) return;
  if (ec) {
    FailRead(ec);
    return;
  }
  Request request = std::move(pending_request_);
  pending_request_ = Request();
  request.body = std::move(parser_->get().body());
  Dispatch(std::move(request), *pending_route_);
}

void Connection::Dispatch(Request request, const RouteEntry& route) {
  phase_ = Phase::kHandling;
  ++seq_;
  close_after_response_ = !request.keep_alive;
  auto writer = std::make_shared<WriterImpl>(shared_from_this(), seq_, std::move(request),
                                             server_->options.max_stream_buffer_bytes);
  writer_ = writer;
  ReadMore();  // notices a client disconnect while the handler works; buffers pipelined requests
  const Request& req = writer->request();
  std::string failure;
  try {
    if (route.async) {
      route.async(req, writer);
    } else {
      writer->Send(route.sync(req));
    }
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "a non-standard exception";
  }
  if (!failure.empty()) {
    SPARK_LOG(ERROR).With("method", req.method_name).With("path", req.path)
        << "HTTP handler threw: " << failure;
    writer->Send(ErrorResponse(500, "internal error while handling the request: " + failure,
                               "server_error", "internal"));
  }
}

void Connection::SendServerError(int status, std::string_view message, std::string_view type,
                                 std::string_view code, bool close, Headers extra) {
  phase_ = Phase::kHandling;
  ++seq_;
  writer_.reset();
  stream_started_ = false;
  response_queued_ = false;
  if (parser_.has_value() && parser_->is_header_done()) {
    request_version_ = parser_->get().version() == 10 ? 10 : 11;
    if (!parser_->get().keep_alive()) close = true;
  }
  Response response = ErrorResponse(status, message, type, code);
  for (auto& header : extra) response.headers.push_back(std::move(header));
  QueueCompleteResponse(std::move(response), close);
}

void Connection::QueueCompleteResponse(Response response, bool close) {
  close_after_response_ = close_after_response_ || close;
  int status = response.status;
  bool bodyless_status = (status >= 100 && status < 200) || status == 204 || status == 304;
  long long length = bodyless_status ? -1 : static_cast<long long>(response.body.size());
  std::string data = SerializeHead(status, response.headers, server_->options.server_name, length,
                                   /*chunked=*/false, close_after_response_, request_version_);
  if (!bodyless_status && !head_request_) data += response.body;
  response_queued_ = true;
  Enqueue(std::move(data));
}

void Connection::SendResponse(uint64_t seq, Response response) {
  if (closed_ || seq != seq_ || phase_ != Phase::kHandling || response_queued_ || stream_started_) {
    return;
  }
  if (response.status < 100 || response.status > 999) {
    SPARK_LOG(ERROR) << "HTTP handler returned status " << response.status << "; sending 500";
    response = ErrorResponse(500, "internal error: the handler produced an invalid status",
                             "server_error", "internal");
  }
  QueueCompleteResponse(std::move(response), /*close=*/false);
}

void Connection::StartStream(uint64_t seq, int status, Headers headers) {
  if (closed_ || seq != seq_ || phase_ != Phase::kHandling || response_queued_ || stream_started_) {
    return;
  }
  stream_started_ = true;
  bool chunked = request_version_ == 11;
  if (!chunked) close_after_response_ = true;  // HTTP/1.0: the body ends with the connection
  Enqueue(SerializeHead(status, headers, server_->options.server_name, -1, chunked,
                        close_after_response_, request_version_));
}

void Connection::WriteChunk(uint64_t seq, std::string encoded) {
  if (closed_ || seq != seq_ || !stream_started_ || response_queued_) return;
  Enqueue(std::move(encoded));
  if (queued_bytes_.load() > server_->options.max_stream_buffer_bytes) {
    SPARK_LOG(WARN).With("remote", remote_address_)
        << "HTTP client is not reading its stream (" << queued_bytes_.load()
        << " bytes queued); closing the connection";
    Close();
  }
}

void Connection::EndStream(uint64_t seq) {
  if (closed_ || seq != seq_ || !stream_started_ || response_queued_) return;
  response_queued_ = true;
  if (request_version_ == 11) {
    Enqueue("0\r\n\r\n");
  } else if (!writing_) {
    WriteNext();  // nothing left to send: completes the response
  }
}

void Connection::AbortStream(uint64_t seq) {
  if (closed_ || seq != seq_ || response_queued_) return;
  Close();  // the client sees a truncated body
}

void Connection::Enqueue(std::string data) {
  if (closed_) return;
  queued_bytes_.fetch_add(data.size());
  out_.push_back(std::move(data));
  if (!writing_) WriteNext();
}

void Connection::WriteNext() {
  if (closed_) return;
  if (out_.empty()) {
    writing_ = false;
    if (response_queued_ && phase_ == Phase::kHandling) ResponseComplete();
    return;
  }
  writing_ = true;
  in_flight_.clear();
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(out_.size());
  while (!out_.empty()) {
    in_flight_.push_back(std::move(out_.front()));
    out_.pop_front();
  }
  // Built after the moves: a short string's bytes live inside the string object itself.
  for (const std::string& piece : in_flight_) buffers.emplace_back(asio::buffer(piece));
  ArmTimer(TimerOwner::kWrite, server_->options.write_timeout);
  asio::async_write(
      socket_, buffers,
      asio::bind_executor(strand_, [self = shared_from_this()](beast::error_code ec, size_t n) {
        self->OnWrite(ec, n);
      }));
}

void Connection::OnWrite(beast::error_code ec, size_t bytes) {
  CancelTimer(TimerOwner::kWrite);
  writing_ = false;
  if (closed_) return;
  if (ec) {
    Close();
    return;
  }
  queued_bytes_.fetch_sub(bytes);
  in_flight_.clear();
  WriteNext();
}

void Connection::ResponseComplete() {
  if (auto writer = writer_.lock()) writer->MarkFinished();
  writer_.reset();
  if (close_after_response_) {
    LingeringClose();
  } else {
    ReadNextRequest();
  }
}

void Connection::LingeringClose() {
  phase_ = Phase::kLinger;
  beast::error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  lingered_bytes_ = 0;  // unread input is discarded as it arrives (OnReadMore)
  ArmTimer(TimerOwner::kRead, kLingerTime);
  ReadMore();
}

}  // namespace

Status internal::HttpServerCore::Add(Method method, std::string_view pattern, RouteEntry entry) {
  {
    std::lock_guard lock(mu);
    if (started || stopped) {
      return FailedPrecondition("HTTP route " + std::string(pattern) +
                                " added after Start; register every route before Start");
    }
  }
  if (!entry.sync && !entry.async) {
    return InvalidArgument("HTTP route " + std::string(pattern) + " has no handler");
  }
  SPARK_ASSIGN_OR_RETURN(size_t id, router.Add(method, pattern));
  SPARK_CHECK_EQ(id, routes.size());
  if (entry.max_body_bytes == 0) entry.max_body_bytes = options.max_body_bytes;
  routes.push_back(std::move(entry));
  return Status::Ok();
}

Status internal::HttpServerCore::Start() {
  {
    std::lock_guard lock(mu);
    if (started || stopped) {
      return FailedPrecondition("HTTP server already started (or stopped); create a new one");
    }
  }
  if (options.io_threads < 1) {
    return InvalidArgument("HTTP server io_threads must be >= 1, got " +
                           std::to_string(options.io_threads));
  }
  const std::string where = options.host + ":" + std::to_string(options.port);
  beast::error_code ec;
  tcp::resolver resolver(ioc);
  auto endpoints = resolver.resolve(options.host, std::to_string(options.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    return InvalidArgument("cannot resolve HTTP listen address " + where + ": " +
                           (ec ? ec.message() : std::string("no addresses")) +
                           "; use an IP address such as 0.0.0.0 or 127.0.0.1");
  }
  tcp::endpoint endpoint = endpoints.begin()->endpoint();
  acceptor.emplace(accept_strand);
  auto fail = [&](std::string_view step) {
    std::string message =
        "cannot listen for HTTP on " + where + " (" + std::string(step) + "): " + ec.message();
    if (ec == asio::error::address_in_use) {
      message += "; another process uses this port: stop it or pick another --http-listen port";
    } else if (ec == asio::error::access_denied) {
      message += "; ports below 1024 need privileges: pick a port >= 1024";
    } else if (ec == boost::system::errc::address_not_available) {
      message += "; the address is not on this machine: use 0.0.0.0 or a local address";
    }
    acceptor.reset();
    return Unavailable(message);
  };
  acceptor->open(endpoint.protocol(), ec);
  if (ec) return fail("open");
  acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (ec) return fail("SO_REUSEADDR");
  acceptor->bind(endpoint, ec);
  if (ec) return fail("bind");
  acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  port.store(acceptor->local_endpoint(ec).port());
  accept_retry_timer.emplace(accept_strand);
  work.emplace(asio::make_work_guard(ioc));
  {
    std::lock_guard lock(mu);
    started = true;
  }
  asio::post(accept_strand, [self = shared_from_this()] { self->Accept(); });
  threads.reserve(static_cast<size_t>(options.io_threads));
  for (int i = 0; i < options.io_threads; ++i) {
    threads.emplace_back([this] { ioc.run(); });
  }
  return Status::Ok();
}

void internal::HttpServerCore::Accept() {
  if (!acceptor.has_value() || !acceptor->is_open()) return;
  acceptor->async_accept(
      ioc, asio::bind_executor(accept_strand, [self = shared_from_this()](beast::error_code ec,
                                                                          tcp::socket socket) {
        self->OnAccept(ec, std::move(socket));
      }));
}

void internal::HttpServerCore::OnAccept(beast::error_code ec, tcp::socket socket) {
  if (ec) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    // EMFILE and friends: wait a little instead of spinning.
    SPARK_LOG(WARN) << "HTTP accept failed: " << ec.message() << "; retrying in 100 ms";
    accept_retry_timer->expires_after(std::chrono::milliseconds(100));
    accept_retry_timer->async_wait([self = shared_from_this()](beast::error_code wait_ec) {
      if (!wait_ec) self->Accept();
    });
    return;
  }
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  connections_accepted.fetch_add(1);
  auto connection = std::make_shared<Connection>(shared_from_this(), std::move(socket));
  bool overloaded = false;
  bool stopping = false;
  {
    std::lock_guard lock(mu);
    if (stopped) {
      stopping = true;
    } else {
      connections.emplace(connection.get(), connection);
      overloaded = connections.size() > options.max_connections;
    }
  }
  if (stopping) {
    asio::post(connection->strand(), [connection] { connection->Close(); });
    return;
  }
  asio::post(connection->strand(), [connection, overloaded] { connection->Start(overloaded); });
  Accept();
}

void internal::HttpServerCore::Unregister(Connection* connection) {
  std::lock_guard lock(mu);
  connections.erase(connection);
}

void internal::HttpServerCore::Stop() {
  std::vector<std::shared_ptr<Connection>> open;
  {
    std::lock_guard lock(mu);
    bool was_running = started && !stopped;
    stopped = true;
    if (!was_running) return;
    for (auto& [ptr, weak] : connections) {
      if (auto connection = weak.lock()) open.push_back(std::move(connection));
    }
  }
  for (const std::thread& thread : threads) {
    SPARK_CHECK(thread.get_id() != std::this_thread::get_id())
        << "HttpServer::Stop called from one of its own I/O threads (a handler); call it from "
           "the thread that owns the server";
  }
  asio::post(accept_strand, [self = shared_from_this()] {
    beast::error_code ignored;
    if (self->acceptor.has_value()) self->acceptor->close(ignored);
    if (self->accept_retry_timer.has_value()) self->accept_retry_timer->cancel();
  });
  for (auto& connection : open) {
    asio::post(connection->strand(), [connection] { connection->Close(); });
  }
  open.clear();
  work.reset();
  for (std::thread& thread : threads) thread.join();
  threads.clear();
}

HttpServer::HttpServer(HttpServerOptions options)
    : impl_(std::make_shared<internal::HttpServerCore>(std::move(options))) {}

HttpServer::~HttpServer() { Stop(); }

Status HttpServer::Add(Method method, std::string_view pattern, SyncHandler handler,
                       RouteOptions route_options) {
  RouteEntry entry;
  entry.sync = std::move(handler);
  entry.max_body_bytes = route_options.max_body_bytes;
  return impl_->Add(method, pattern, std::move(entry));
}

Status HttpServer::AddAsync(Method method, std::string_view pattern, AsyncHandler handler,
                            RouteOptions route_options) {
  RouteEntry entry;
  entry.async = std::move(handler);
  entry.max_body_bytes = route_options.max_body_bytes;
  return impl_->Add(method, pattern, std::move(entry));
}

Status HttpServer::Start() { return impl_->Start(); }

void HttpServer::Stop() { impl_->Stop(); }

uint16_t HttpServer::port() const { return impl_->port.load(); }

HttpServer::Stats HttpServer::stats() const {
  Stats stats;
  stats.connections_accepted = impl_->connections_accepted.load();
  stats.connections_open = impl_->connections_open.load();
  stats.requests = impl_->requests.load();
  return stats;
}

}  // namespace spark::http
