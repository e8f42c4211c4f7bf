#include "tests/load/sse_load.h"

#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <limits>
#include <memory>
#include <string_view>

namespace spark::load {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);

bool HasText(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

// Splits complete events off `pending` and records them in `trace`; true once [DONE] arrived.
bool ConsumeEvents(std::string& pending, StreamTrace& trace, const TokenCounter& count) {
  bool done = false;
  size_t start = 0;
  for (;;) {
    const size_t end = pending.find("\n\n", start);
    if (end == std::string::npos) break;
    std::string_view event(pending.data() + start, end - start);
    start = end + 2;
    // One "data: " line per event (the controller never splits JSON over lines).
    const size_t data_at = event.find("data: ");
    if (data_at == std::string_view::npos) continue;  // a comment or keep-alive
    std::string_view data = event.substr(data_at + 6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    nlohmann::json chunk = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (chunk.is_discarded()) {
      if (trace.error.empty()) trace.error = "undecodable SSE event: " + std::string(data);
      continue;
    }
    if (chunk.contains("error")) {
      if (trace.error.empty()) trace.error = "error event: " + chunk["error"].dump();
      continue;
    }
    const int tokens = count(chunk);
    const Clock::time_point now = Clock::now();
    for (int i = 0; i < tokens; ++i) trace.token_times.push_back(now);
    auto usage = chunk.find("usage");
    if (usage != chunk.end() && usage->is_object() && usage->contains("completion_tokens")) {
      trace.usage_completion_tokens = (*usage)["completion_tokens"].get<int64_t>();
    }
  }
  pending.erase(0, start);
  return done;
}

struct Shared {
  const SseLoadOptions* options;
  tcp::endpoint endpoint;
  const std::function<std::optional<SseRequest>()>* next;
  const TokenCounter* count;
  std::vector<StreamTrace>* traces;
};

asio::awaitable<void> Client(Shared shared) {
  auto executor = co_await asio::this_coro::executor;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;
  const std::string host = shared.options->host + ":" + std::to_string(shared.options->port);
  while (std::optional<SseRequest> request = (*shared.next)()) {
    StreamTrace trace;
    if (!stream) {
      stream.emplace(executor);
      buffer.clear();
      stream->expires_after(shared.options->idle_timeout);
      auto [ec] = co_await stream->async_connect(shared.endpoint, kAwait);
      if (ec) {
        trace.error = "connect: " + ec.message();
        shared.traces->push_back(std::move(trace));
        stream.reset();
        continue;
      }
      stream->socket().set_option(tcp::no_delay(true));
    }
    bhttp::request<bhttp::string_body> req{bhttp::verb::post, request->target, 11};
    req.set(bhttp::field::host, host);
    req.set(bhttp::field::content_type, "application/json");
    req.set(bhttp::field::accept, "text/event-stream");
    if (!shared.options->bearer_token.empty()) {
      req.set(bhttp::field::authorization, "Bearer " + shared.options->bearer_token);
    }
    req.keep_alive(true);
    req.body() = std::move(request->body);
    req.prepare_payload();

    trace.sent = Clock::now();
    stream->expires_after(shared.options->idle_timeout);
    auto [write_ec, written] = co_await bhttp::async_write(*stream, req, kAwait);
    std::string pending;
    bool done = false;
    // Beast keeps a reference to the callback: it must outlive the parser.
    auto on_chunk = [&](std::uint64_t, beast::string_view body, beast::error_code&) {
      pending.append(body.data(), body.size());
      done = ConsumeEvents(pending, trace, *shared.count) || done;
      return body.size();
    };
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.on_chunk_body(on_chunk);
    beast::error_code ec = write_ec;
    if (!ec) {
      stream->expires_after(shared.options->idle_timeout);
      auto [header_ec, n] = co_await bhttp::async_read_header(*stream, buffer, parser, kAwait);
      ec = header_ec;
    }
    while (!ec && !parser.is_done()) {
      stream->expires_after(shared.options->idle_timeout);
      auto [read_ec, n] = co_await bhttp::async_read_some(*stream, buffer, parser, kAwait);
      ec = read_ec;
    }
    if (ec) {
      if (trace.error.empty()) trace.error = "transport: " + ec.message();
    } else if (parser.get().result_int() != 200) {
      trace.error = "HTTP " + std::to_string(parser.get().result_int()) + ": " +
                    parser.get().body().substr(0, 300);
    } else if (!done && trace.error.empty()) {
      trace.error = "the stream ended without data: [DONE]";
    }
    if (ec || !parser.is_done() || !parser.get().keep_alive()) {
      beast::error_code ignored;
      stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream.reset();
    }
    shared.traces->push_back(std::move(trace));
  }
  if (stream) {
    beast::error_code ignored;
    stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
  }
}

}  // namespace

int CountChatTokens(const nlohmann::json& event) {
  auto choices = event.find("choices");
  if (choices == event.end() || !choices->is_array()) return 0;
  int tokens = 0;
  for (const nlohmann::json& choice : *choices) {
    auto delta = choice.find("delta");
    if (delta == choice.end() || !delta->is_object()) continue;
    if (HasText(*delta, "content") || HasText(*delta, "reasoning_content") ||
        (delta->contains("tool_calls") && !(*delta)["tool_calls"].is_null())) {
      ++tokens;
    }
  }
  return tokens;
}

int CountCompletionTokens(const nlohmann::json& event) {
  auto choices = event.find("choices");
  if (choices == event.end() || !choices->is_array()) return 0;
  int tokens = 0;
  for (const nlohmann::json& choice : *choices) {
    auto ids = choice.find("token_ids");
    if (ids != choice.end() && ids->is_array()) {
      tokens += static_cast<int>(ids->size());
    } else if (HasText(choice, "text")) {
      ++tokens;
    }
  }
  return tokens;
}

std::vector<StreamTrace> SseLoad::Run(const std::function<std::optional<SseRequest>()>& next,
                                      const TokenCounter& count) {
  asio::io_context io(1);
  std::vector<StreamTrace> traces;
  Shared shared{&options_, tcp::endpoint(asio::ip::make_address(options_.host), options_.port),
                &next, &count, &traces};
  for (int i = 0; i < options_.clients; ++i) asio::co_spawn(io, Client(shared), asio::detached);
  io.run();
  return traces;
}

}  // namespace spark::load
