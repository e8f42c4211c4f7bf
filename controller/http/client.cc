#include "controller/http/client.h"

#include <exception>
#include <optional>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace spark::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

constexpr size_t kStreamBufferBytes = 16 * 1024;

bool IsConnectionLoss(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::error::connection_aborted || ec == bhttp::error::partial_message;
}

// Splits a byte stream into lines (without \n or \r\n) and passes them to a callback.
class LineSplitter {
 public:
  explicit LineSplitter(const LineCallback& on_line) : on_line_(on_line) {}

  // False once the callback asked to stop.
  bool Feed(std::string_view data) {
    while (!data.empty()) {
      size_t newline = data.find('\n');
      if (newline == std::string_view::npos) {
        pending_.append(data);
        return true;
      }
      pending_.append(data.substr(0, newline));
      data.remove_prefix(newline + 1);
      if (!Emit()) return false;
    }
    return true;
  }

  // Passes a last unterminated line, if any.
  bool Finish() { return pending_.empty() ? true : Emit(); }

 private:
  bool Emit() {
    std::string_view line = pending_;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    bool keep_going = on_line_(line);
    pending_.clear();
    return keep_going;
  }

  const LineCallback& on_line_;
  std::string pending_;
};

}  // namespace

class HttpClient::Impl {
 public:
  Impl(std::string host, std::string port, HttpClientOptions options)
      : host_(std::move(host)),
        port_(std::move(port)),
        options_(std::move(options)),
        stream_(ioc_) {
    authority_ = (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + port_;
  }

  const std::string& authority() const { return authority_; }

  Result<ClientResponse> Send(Method method, std::string_view target, std::string_view body,
                              const Headers& headers) {
    SPARK_ASSIGN_OR_RETURN(auto request, BuildRequest(method, target, body, headers));
    for (int attempt = 0;; ++attempt) {
      bool reused = connected_;
      SPARK_RETURN_IF_ERROR(EnsureConnected());
      stream_.expires_after(options_.request_timeout);
      beast::error_code ec = Run([&](auto done) { bhttp::async_write(stream_, request, done); });
      bhttp::response_parser<bhttp::string_body> parser;
      parser.body_limit(options_.max_body_bytes);
      parser.header_limit(1024 * 1024);
      if (!ec) {
        ec = Run([&](auto done) { bhttp::async_read(stream_, buffer_, parser, done); });
      }
      if (ec) {
        Disconnect();
        if (reused && attempt == 0 && !parser.got_some() && IsConnectionLoss(ec)) continue;
        return TransportError(ec, target);
      }
      return Finish(parser.release());
    }
  }

  Result<ClientResponse> Stream(Method method, std::string_view target, std::string_view body,
                                const Headers& headers, const LineCallback& on_line) {
    SPARK_ASSIGN_OR_RETURN(auto request, BuildRequest(method, target, body, headers));
    for (int attempt = 0;; ++attempt) {
      bool reused = connected_;
      SPARK_RETURN_IF_ERROR(EnsureConnected());
      stream_.expires_after(options_.request_timeout);
      beast::error_code ec = Run([&](auto done) { bhttp::async_write(stream_, request, done); });
      bhttp::response_parser<bhttp::buffer_body> parser;
      parser.body_limit(boost::none);
      parser.header_limit(1024 * 1024);
      if (!ec) {
        stream_.expires_after(options_.request_timeout);
        ec = Run([&](auto done) { bhttp::async_read_header(stream_, buffer_, parser, done); });
      }
      if (ec) {
        Disconnect();
        if (reused && attempt == 0 && !parser.got_some() && IsConnectionLoss(ec)) continue;
        return TransportError(ec, target);
      }
      ClientResponse response;
      const auto& head = parser.get();
      response.status = static_cast<int>(head.result_int());
      for (const auto& field : head) {
        response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
      }
      bool streaming = response.status >= 200 && response.status < 300;
      LineSplitter lines(on_line);
      char chunk[kStreamBufferBytes];
      bool stopped = false;
      while (!parser.is_done()) {
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof(chunk);
        stream_.expires_after(options_.request_timeout);
        ec = Run([&](auto done) { bhttp::async_read_some(stream_, buffer_, parser, done); });
        if (ec == bhttp::error::need_buffer) ec = {};
        size_t n = sizeof(chunk) - parser.get().body().size;
        if (ec) {
          Disconnect();
          return TransportError(ec, target);
        }
        std::string_view data(chunk, n);
        if (streaming) {
          if (!lines.Feed(data)) {
            stopped = true;
            break;
          }
        } else {
          if (response.body.size() + n > options_.max_body_bytes) {
            Disconnect();
            return DataLoss("response body from " + authority_ + std::string(target) + " exceeds " +
                            std::to_string(options_.max_body_bytes) + " bytes");
          }
          response.body.append(data);
        }
      }
      if (stopped) {
        Disconnect();  // the rest of the body is unread
      } else {
        if (streaming) lines.Finish();
        if (!parser.keep_alive()) Disconnect();
      }
      return response;
    }
  }

 private:
  using Request = bhttp::request<bhttp::string_body>;

  // Runs one asynchronous operation to completion on the private io_context.
  template <typename Start>
  beast::error_code Run(Start&& start) {
    beast::error_code result;
    bool finished = false;
    start([&](beast::error_code ec, auto&&...) {
      result = ec;
      finished = true;
    });
    ioc_.restart();
    ioc_.run();
    if (!finished) return asio::error::operation_aborted;
    return result;
  }

  Result<Request> BuildRequest(Method method, std::string_view target, std::string_view body,
                               const Headers& headers) {
    if (target.empty() || target.front() != '/') {
      return InvalidArgument("HTTP request target \"" + std::string(target) +
                             "\" must start with '/'");
    }
    if (method == Method::kOther) {
      return InvalidArgument("HttpClient cannot send Method::kOther; pick a concrete method");
    }
    Request request;
    request.method(bhttp::string_to_verb(MethodName(method)));
    request.target(std::string(target));
    request.version(11);
    request.set(bhttp::field::host, authority_);
    request.set(bhttp::field::user_agent, "spark-http-client");
    if (!options_.bearer_token.empty()) {
      request.set(bhttp::field::authorization, "Bearer " + options_.bearer_token);
    }
    bool has_content_type = false;
    for (const auto& [name, value] : headers) {
      if (EqualsIgnoreCase(name, "Content-Type")) has_content_type = true;
      try {
        request.set(name, value);
      } catch (const std::exception& e) {
        return InvalidArgument("bad HTTP header \"" + name + "\": " + e.what());
      }
    }
    if (!body.empty() && !has_content_type) {
      request.set(bhttp::field::content_type, "application/json");
    }
    request.body() = std::string(body);
    request.keep_alive(true);
    if (!body.empty() || method == Method::kPost || method == Method::kPut ||
        method == Method::kPatch) {
      request.prepare_payload();
    }
    return request;
  }

  Status EnsureConnected() {
    if (connected_) return Status::Ok();
    buffer_.consume(buffer_.size());
    tcp::resolver resolver(ioc_);
    tcp::resolver::results_type endpoints;
    beast::error_code ec = Run([&](auto done) {
      resolver.async_resolve(
          host_, port_,
          [&endpoints, done](beast::error_code e, tcp::resolver::results_type r) mutable {
            endpoints = std::move(r);
            done(e);
          });
    });
    if (ec) {
      return Unavailable("cannot resolve " + authority_ + ": " + ec.message() +
                         "; check the host name in the URL");
    }
    stream_.expires_after(options_.connect_timeout);
    ec = Run([&](auto done) { stream_.async_connect(endpoints, done); });
    if (ec) {
      Disconnect();
      if (ec == beast::error::timeout) {
        return DeadlineExceeded("connecting to http://" + authority_ + " timed out after " +
                                std::to_string(options_.connect_timeout.count()) +
                                " ms; is the server reachable (firewall, address)?");
      }
      return Unavailable("cannot connect to http://" + authority_ + ": " + ec.message() +
                         "; is the server running there and listening on that port?");
    }
    beast::error_code ignored;
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    connected_ = true;
    return Status::Ok();
  }

  void Disconnect() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    buffer_.consume(buffer_.size());
    connected_ = false;
  }

  Status TransportError(const beast::error_code& ec, std::string_view target) {
    std::string where = "http://" + authority_ + std::string(target);
    if (ec == beast::error::timeout) {
      return DeadlineExceeded("no response from " + where + " within " +
                              std::to_string(options_.request_timeout.count()) +
                              " ms; the server is overloaded or stuck (raise the timeout or "
                              "check the server)");
    }
    if (ec == bhttp::error::body_limit) {
      return DataLoss("response body from " + where + " exceeds " +
                      std::to_string(options_.max_body_bytes) + " bytes");
    }
    if (IsConnectionLoss(ec)) {
      return Unavailable("connection to " + where + " lost: " + ec.message() +
                         "; the server closed it (restarting or crashed?)");
    }
    if (&ec.category() == &bhttp::make_error_code(bhttp::error::bad_target).category()) {
      return DataLoss("malformed HTTP response from " + where + ": " + ec.message());
    }
    return Unavailable("HTTP request to " + where + " failed: " + ec.message());
  }

  Result<ClientResponse> Finish(bhttp::response<bhttp::string_body> message) {
    ClientResponse response;
    response.status = static_cast<int>(message.result_int());
    for (const auto& field : message) {
      response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    response.body = std::move(message.body());
    if (!message.keep_alive()) Disconnect();
    return response;
  }

  std::string host_;
  std::string port_;
  std::string authority_;
  HttpClientOptions options_;
  asio::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  bool connected_ = false;
};

Result<nlohmann::json> ClientResponse::Json() const {
  try {
    return nlohmann::json::parse(body);
  } catch (const std::exception& e) {
    return DataLoss("HTTP response body (status " + std::to_string(status) +
                    ") is not JSON: " + e.what());
  }
}

Result<HttpClient> HttpClient::Create(std::string_view base_url, HttpClientOptions options) {
  std::string_view rest = base_url;
  if (rest.starts_with("https://")) {
    return InvalidArgument("\"" + std::string(base_url) +
                           "\": https is not supported; use http:// (put TLS in a proxy)");
  }
  if (rest.starts_with("http://")) rest.remove_prefix(7);
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) {
    return InvalidArgument("\"" + std::string(base_url) +
                           "\" has a path; give only http://HOST:PORT");
  }
  std::string host;
  std::string port = "80";
  if (rest.starts_with("[")) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      return InvalidArgument("\"" + std::string(base_url) + "\": unbalanced '[' in IPv6 host");
    }
    host = std::string(rest.substr(1, close - 1));
    rest.remove_prefix(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return InvalidArgument("\"" + std::string(base_url) + "\": expected ':' after ']'");
      }
      port = std::string(rest.substr(1));
    }
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      host = std::string(rest);
    } else {
      host = std::string(rest.substr(0, colon));
      port = std::string(rest.substr(colon + 1));
    }
  }
  if (host.empty()) {
    return InvalidArgument("\"" + std::string(base_url) + "\" has no host; use http://HOST:PORT");
  }
  bool port_ok = !port.empty() && port.size() <= 5 &&
                 port.find_first_not_of("0123456789") == std::string::npos && std::stoi(port) > 0 &&
                 std::stoi(port) <= 65535;
  if (!port_ok) {
    return InvalidArgument("\"" + std::string(base_url) + "\": bad port \"" + port +
                           "\"; use a number from 1 to 65535");
  }
  return HttpClient(std::make_unique<Impl>(std::move(host), std::move(port), std::move(options)));
}

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClient::HttpClient(HttpClient&&) noexcept = default;
HttpClient& HttpClient::operator=(HttpClient&&) noexcept = default;
HttpClient::~HttpClient() = default;

Result<ClientResponse> HttpClient::Get(std::string_view target, const Headers& headers) {
  return impl_->Send(Method::kGet, target, {}, headers);
}

Result<ClientResponse> HttpClient::Post(std::string_view target, const nlohmann::json& body,
                                        const Headers& headers) {
  return impl_->Send(Method::kPost, target,
                     body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), headers);
}

Result<ClientResponse> HttpClient::Delete(std::string_view target, const Headers& headers) {
  return impl_->Send(Method::kDelete, target, {}, headers);
}

Result<ClientResponse> HttpClient::Send(Method method, std::string_view target,
                                        std::string_view body, const Headers& headers) {
  return impl_->Send(method, target, body, headers);
}

Result<ClientResponse> HttpClient::Stream(Method method, std::string_view target,
                                          std::string_view body, const Headers& headers,
                                          const LineCallback& on_line) {
  return impl_->Stream(method, target, body, headers, on_line);
}

const std::string& HttpClient::authority() const { return impl_->authority(); }

}  // namespace spark::http
