#include "controller/http/server.h"

#include <gtest/gtest.h>

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "common/check.h"
#include "controller/http/auth.h"
#include "controller/http/client.h"
#include "controller/http/json.h"
#include "controller/http/sse.h"
#include "tests/controller/http/raw_connection.h"

namespace spark::http {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::RawConnection;
using testing::RawResponse;

constexpr milliseconds kWait{5000};

// A queue of writers answered by a test thread: stands in for the controller's reconciler.
class WriterQueue {
 public:
  void Push(std::shared_ptr<ResponseWriter> writer) {
    std::lock_guard lock(mu_);
    writers_.push_back(std::move(writer));
    cv_.notify_all();
  }
  std::shared_ptr<ResponseWriter> Pop(milliseconds timeout = kWait) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !writers_.empty(); })) return nullptr;
    auto writer = std::move(writers_.front());
    writers_.pop_front();
    return writer;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<ResponseWriter>> writers_;
};

HttpClientOptions WithToken(std::string token) {
  HttpClientOptions options;
  options.bearer_token = std::move(token);
  return options;
}

HttpClient MakeClient(uint16_t port, HttpClientOptions options = {}) {
  auto client = HttpClient::Create("http://127.0.0.1:" + std::to_string(port), options);
  SPARK_CHECK(client.ok()) << client.status().ToString();
  return std::move(*client);
}

nlohmann::json ErrorOf(const ClientResponse& r) {
  auto j = r.Json();
  SPARK_CHECK(j.ok()) << r.body;
  return (*j)["error"];
}

// Serves the routes most tests use.
class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    options.io_threads = options.io_threads > 0 ? options.io_threads : 4;
    server_ = std::make_unique<HttpServer>(options);
    ASSERT_TRUE(server_
                    ->Add(Method::kGet, "/healthz",
                          [](const Request&) {
                            return JsonResponse(200, {{"status", "ok"}});
                          })
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kGet, "/api/v1/models/{name}",
                          [](const Request& r) {
                            return JsonResponse(200, {{"name", r.Param("name")},
                                                      {"path", r.path},
                                                      {"target", r.target},
                                                      {"query", r.query}});
                          })
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kPost, "/api/v1/models/{name}/restart",
                          [](const Request& r) {
                            return JsonResponse(202, {{"restarting", r.Param("name")}});
                          })
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kPost, "/echo",
                          [](const Request& r) {
                            auto body = ParseJsonObject(r);
                            if (!body.ok()) return ErrorResponseFromStatus(body.status());
                            return JsonResponse(200, {{"echo", *body}});
                          },
                          {.max_body_bytes = 1024})
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kPost, "/raw",
                          [](const Request& r) { return Response::Text(200, r.body); })
                    .ok());
    ASSERT_TRUE(
        server_
            ->Add(Method::kGet, "/throw",
                  [](const Request&) -> Response { throw std::runtime_error("handler exploded"); })
            .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/async",
                               [this](const Request&, std::shared_ptr<ResponseWriter> w) {
                                 queue_.Push(std::move(w));
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kPost, "/async",
                               [this](const Request&, std::shared_ptr<ResponseWriter> w) {
                                 queue_.Push(std::move(w));
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/async-throw",
                               [](const Request&, std::shared_ptr<ResponseWriter>) {
                                 throw std::logic_error("async handler exploded");
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/drop",
                               [](const Request&, std::shared_ptr<ResponseWriter>) {})
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kGet, "/secret",
                          [](const Request& r) {
                            if (auto denied = RequireBearerToken(r, "s3cret")) return *denied;
                            return JsonResponse(200, {{"ok", true}});
                          })
                    .ok());
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
    ASSERT_NE(port_, 0);
  }

  void TearDown() override {
    if (server_) server_->Stop();
  }

  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
  WriterQueue queue_;
};

TEST_F(HttpServerTest, RoutesWithParametersAndQuery) {
  StartServer();
  HttpClient client = MakeClient(port_);
  auto r = client.Get("/api/v1/models/glm%2F4.5?since=12&model=a+b&x=%26");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(*r->Header("content-type"), "application/json");
  EXPECT_NE(r->Header("Date"), nullptr);
  auto j = *r->Json();
  EXPECT_EQ(j["name"], "glm/4.5");
  EXPECT_EQ(j["path"], "/api/v1/models/glm/4.5");
  EXPECT_EQ(j["target"], "/api/v1/models/glm%2F4.5?since=12&model=a+b&x=%26");
  EXPECT_EQ(j["query"], nlohmann::json({{"since", "12"}, {"model", "a b"}, {"x", "&"}}));

  auto restart = client.Send(Method::kPost, "/api/v1/models/m1/restart", "");
  ASSERT_TRUE(restart.ok());
  EXPECT_EQ(restart->status, 202);
  EXPECT_EQ((*restart->Json())["restarting"], "m1");
}

TEST_F(HttpServerTest, JsonRoundTrip) {
  StartServer();
  HttpClient client = MakeClient(port_);
  nlohmann::json body = {{"name", "glm"},
                         {"tp", 2},
                         {"nodes", {"n1", "n2"}},
                         {"unicode", "\xc3\xa9\xe2\x82\xac"},
                         {"nested", {{"a", nullptr}, {"b", 1.25}}}};
  auto r = client.Post("/echo", body);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ((*r->Json())["echo"], body);

  auto bad = client.Send(Method::kPost, "/echo", "{not json");
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(ErrorOf(*bad)["type"], "invalid_request_error");
  EXPECT_EQ(ErrorOf(*bad)["code"], "invalid_argument");
}

TEST_F(HttpServerTest, NotFoundAndMethodNotAllowedAreJson) {
  StartServer();
  HttpClient client = MakeClient(port_);
  auto nf = client.Get("/api/v2/nothing");
  ASSERT_TRUE(nf.ok());
  EXPECT_EQ(nf->status, 404);
  EXPECT_EQ(ErrorOf(*nf)["type"], "not_found_error");
  EXPECT_EQ(ErrorOf(*nf)["code"], "not_found");
  EXPECT_NE(ErrorOf(*nf)["message"].get<std::string>().find("/api/v2/nothing"), std::string::npos);

  auto na = client.Delete("/healthz");
  ASSERT_TRUE(na.ok());
  EXPECT_EQ(na->status, 405);
  EXPECT_EQ(*na->Header("Allow"), "GET");
  EXPECT_EQ(ErrorOf(*na)["code"], "method_not_allowed");

  auto na2 = client.Send(Method::kPut, "/async", "");
  ASSERT_TRUE(na2.ok());
  EXPECT_EQ(na2->status, 405);
  EXPECT_EQ(*na2->Header("Allow"), "GET, POST");

  // The connection survived the errors (no body was sent): still one connection.
  auto ok = client.Get("/healthz");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(server_->stats().connections_accepted, 1u);
}

TEST_F(HttpServerTest, BodyLimitPerRouteGives413) {
  StartServer();
  HttpClient client = MakeClient(port_);
  nlohmann::json small = {{"x", std::string(900, 'a')}};
  auto fits = client.Post("/echo", small);
  ASSERT_TRUE(fits.ok());
  EXPECT_EQ(fits->status, 200);

  nlohmann::json big = {{"x", std::string(2000, 'a')}};
  auto r = client.Post("/echo", big);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(ErrorOf(*r)["type"], "invalid_request_error");
  EXPECT_EQ(ErrorOf(*r)["code"], "body_too_large");
  EXPECT_EQ(*r->Header("Connection"), "close");

  // Another route keeps the 1 MiB default.
  auto raw = client.Send(Method::kPost, "/raw", std::string(100'000, 'b'),
                         {{"Content-Type", "text/plain"}});
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->status, 200);
  EXPECT_EQ(raw->body.size(), 100'000u);

  // A chunked body over the limit is cut off while it streams in.
  RawConnection c(port_);
  std::string chunk(600, 'z');
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
  char size[16];
  std::snprintf(size, sizeof(size), "%zx\r\n", chunk.size());
  c.Send(std::string(size) + chunk + "\r\n");
  c.Send(std::string(size) + chunk + "\r\n");
  RawResponse chunked = c.ReadResponse(kWait);
  EXPECT_EQ(chunked.status, 413);
  EXPECT_TRUE(chunked.closed);
}

TEST_F(HttpServerTest, ChunkedRequestBodyIsAccepted) {
  StartServer();
  RawConnection c(port_);
  ASSERT_TRUE(
      c.Send("POST /raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello world");
  EXPECT_FALSE(r.closed);
}

TEST_F(HttpServerTest, MalformedHttpGives400) {
  StartServer();
  struct Case {
    std::string bytes;
    int status;
    bool closes;  // broken framing closes; a bad path on a bodiless request keeps the connection
  };
  const std::vector<Case> cases = {
      {"BLAH\r\n\r\n", 400, true},
      {"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n", 400, true},
      {"GET /healthz HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, true},
      {"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, true},
      {"GET http://example.com/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, true},
      {"GET /api/v1/models/a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, false},
      {"GET /healthz?a=%x HTTP/1.1\r\nHost: x\r\n\r\n", 400, false},
      {"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, true},
      {"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505, true},
  };
  for (const auto& [bytes, status, closes] : cases) {
    RawConnection c(port_);
    ASSERT_TRUE(c.Send(bytes));
    RawResponse r = c.ReadResponse(kWait);
    EXPECT_EQ(r.status, status) << bytes << " -> " << r.head;
    EXPECT_EQ(r.closed, closes) << bytes;
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << bytes;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error") << bytes;
  }
  // The server still serves.
  EXPECT_EQ(MakeClient(port_).Get("/healthz")->status, 200);
}

TEST_F(HttpServerTest, OversizedHeadersGive431) {
  HttpServerOptions options;
  options.max_header_bytes = 2048;
  StartServer(options);
  RawConnection c(port_);
  ASSERT_TRUE(
      c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n"));
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_EQ(r.status, 431);
  EXPECT_TRUE(r.closed);
}

TEST_F(HttpServerTest, HandlerExceptionsGive500AndServerLives) {
  StartServer();
  HttpClient client = MakeClient(port_);
  for (int i = 0; i < 3; ++i) {
    auto r = client.Get("/throw");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 500);
    EXPECT_EQ(ErrorOf(*r)["type"], "server_error");
    EXPECT_NE(ErrorOf(*r)["message"].get<std::string>().find("handler exploded"),
              std::string::npos);
    auto a = client.Get("/async-throw");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->status, 500);
    EXPECT_NE(ErrorOf(*a)["message"].get<std::string>().find("async handler exploded"),
              std::string::npos);
  }
  auto dropped = client.Get("/drop");
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(dropped->status, 500);
  auto ok = client.Get("/healthz");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->status, 200);
}

TEST_F(HttpServerTest, AsyncAnswerFromAnotherThread) {
  StartServer();
  std::thread answerer([&] {
    auto w = queue_.Pop();
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->request().path, "/async");
    EXPECT_EQ(w->request().body, R"({"q":1})");
    std::this_thread::sleep_for(milliseconds(50));
    EXPECT_TRUE(w->Send(JsonResponse(201, {{"answered_by", "reconciler"}})));
    EXPECT_FALSE(w->Send(JsonResponse(200, {})));  // only one response
    EXPECT_FALSE(w->StartStream(200, {}));
  });
  HttpClient client = MakeClient(port_);
  auto r = client.Post("/async", {{"q", 1}});
  answerer.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ((*r->Json())["answered_by"], "reconciler");
}

TEST_F(HttpServerTest, BearerTokenRoute) {
  StartServer();
  HttpClient anonymous = MakeClient(port_);
  auto denied = anonymous.Get("/secret");
  ASSERT_TRUE(denied.ok());
  EXPECT_EQ(denied->status, 401);
  EXPECT_EQ(*denied->Header("WWW-Authenticate"), "Bearer");
  HttpClient wrong = MakeClient(port_, WithToken("nope"));
  EXPECT_EQ(wrong.Get("/secret")->status, 401);
  HttpClient right = MakeClient(port_, WithToken("s3cret"));
  EXPECT_EQ(right.Get("/secret")->status, 200);
}

TEST_F(HttpServerTest, TwoHundredParallelClients) {
  StartServer();
  // Four "reconciler" threads answer async requests with the id the client sent.
  std::atomic<bool> done{false};
  std::vector<std::thread> answerers;
  for (int i = 0; i < 4; ++i) {
    answerers.emplace_back([&] {
      while (!done.load()) {
        auto w = queue_.Pop(milliseconds(50));
        if (!w) continue;
        w->Send(JsonResponse(200, {{"id", w->request().Query("id").value_or("")}}));
      }
    });
  }
  constexpr int kClients = 200;
  constexpr int kRequestsEach = 5;
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      HttpClient client = MakeClient(port_);
      for (int i = 0; i < kRequestsEach; ++i) {
        std::string id = std::to_string(c) + "-" + std::to_string(i);
        auto r = (i % 2 == 0) ? client.Get("/async?id=" + id) : client.Get("/api/v1/models/m" + id);
        if (!r.ok() || r->status != 200) continue;
        auto j = r->Json();
        if (!j.ok()) continue;
        if (i % 2 == 0 ? (*j)["id"] == id : (*j)["name"] == "m" + id) good.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  for (auto& t : answerers) t.join();
  EXPECT_EQ(good.load(), kClients * kRequestsEach);
  EXPECT_EQ(server_->stats().connections_accepted, static_cast<uint64_t>(kClients));
  EXPECT_EQ(server_->stats().requests, static_cast<uint64_t>(kClients * kRequestsEach));
}

TEST_F(HttpServerTest, StreamingChunksArriveInOrder) {
  StartServer();
  constexpr int kEvents = 500;
  std::thread producer([&] {
    auto w = queue_.Pop();
    ASSERT_NE(w, nullptr);
    EXPECT_FALSE(w->Write("too early"));  // no stream started yet
    ASSERT_TRUE(w->StartStream(200, SseHeaders()));
    for (int i = 0; i < kEvents; ++i) {
      ASSERT_TRUE(w->Write(SseEvent(nlohmann::json({{"i", i}}).dump())));
      if (i % 100 == 0) std::this_thread::sleep_for(milliseconds(5));
    }
    EXPECT_TRUE(w->Write(""));  // skipped, not a terminating chunk
    ASSERT_TRUE(w->Write(SseEvent("[DONE]")));
    ASSERT_TRUE(w->End());
    EXPECT_FALSE(w->Write("late"));
    EXPECT_FALSE(w->End());
  });
  HttpClient client = MakeClient(port_);
  std::vector<std::string> lines;
  auto r = client.Stream(Method::kGet, "/async", "", {}, [&](std::string_view line) {
    lines.emplace_back(line);
    return true;
  });
  producer.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(*r->Header("Content-Type"), "text/event-stream");
  EXPECT_EQ(*r->Header("Transfer-Encoding"), "chunked");
  ASSERT_EQ(lines.size(), 2u * (kEvents + 1));
  for (int i = 0; i < kEvents; ++i) {
    EXPECT_EQ(lines[2 * i], "data: {\"i\":" + std::to_string(i) + "}");
    EXPECT_EQ(lines[2 * i + 1], "");
  }
  EXPECT_EQ(lines[2 * kEvents], "data: [DONE]");

  // The connection is reusable after the stream ended.
  auto again = client.Get("/healthz");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(server_->stats().connections_accepted, 1u);
}

TEST_F(HttpServerTest, ClientDisconnectDuringStreamIsNoticedWithinASecond) {
  StartServer();
  std::promise<steady_clock::time_point> closed_at;
  std::shared_ptr<ResponseWriter> writer;
  std::thread producer([&] {
    writer = queue_.Pop();
    ASSERT_NE(writer, nullptr);
    writer->OnClose([&] { closed_at.set_value(steady_clock::now()); });
    ASSERT_TRUE(writer->StartStream(200, SseHeaders()));
    ASSERT_TRUE(writer->Write(SseEvent("first")));
  });
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("GET /async HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string got = c.ReadUntil("data: first\n\n", kWait);
  ASSERT_FALSE(got.empty());
  producer.join();
  EXPECT_FALSE(writer->IsClosed());
  auto disconnected = steady_clock::now();
  c.Close();
  auto future = closed_at.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  EXPECT_LT(future.get() - disconnected, milliseconds(1000));
  EXPECT_TRUE(writer->IsClosed());
  EXPECT_FALSE(writer->Write(SseEvent("after close")));
  EXPECT_FALSE(writer->End());
  // OnClose on an already closed writer runs at once.
  bool ran = false;
  writer->OnClose([&] { ran = true; });
  EXPECT_TRUE(ran);
}

TEST_F(HttpServerTest, ClientDisconnectBeforeAnswerIsNoticed) {
  StartServer();
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("GET /async HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto w = queue_.Pop();
  ASSERT_NE(w, nullptr);
  std::promise<void> closed;
  w->OnClose([&] { closed.set_value(); });
  auto disconnected = steady_clock::now();
  c.Close();
  ASSERT_EQ(closed.get_future().wait_for(std::chrono::seconds(1)), std::future_status::ready);
  EXPECT_LT(steady_clock::now() - disconnected, milliseconds(1000));
  EXPECT_TRUE(w->IsClosed());
  EXPECT_FALSE(w->Send(JsonResponse(200, {})));
}

TEST_F(HttpServerTest, CompletedResponseDoesNotRunOnClose) {
  StartServer();
  std::atomic<int> calls{0};
  std::thread answerer([&] {
    auto w = queue_.Pop();
    ASSERT_NE(w, nullptr);
    w->OnClose([&] { calls.fetch_add(1); });
    w->Send(JsonResponse(200, {}));
  });
  {
    HttpClient client = MakeClient(port_);
    EXPECT_EQ(client.Get("/async")->status, 200);
  }  // client closes its connection
  answerer.join();
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(calls.load(), 0);
}

TEST_F(HttpServerTest, KeepAliveAndPipelining) {
  StartServer();
  HttpClient client = MakeClient(port_);
  for (int i = 0; i < 20; ++i) {
    auto r = client.Get("/healthz");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(server_->stats().connections_accepted, 1u);

  // Three pipelined requests in one write, the second answered asynchronously later: the
  // responses come back in request order.
  RawConnection c(port_);
  std::thread answerer([&] {
    auto w = queue_.Pop();
    ASSERT_NE(w, nullptr);
    std::this_thread::sleep_for(milliseconds(100));
    w->Send(Response::Text(200, "second"));
  });
  ASSERT_TRUE(
      c.Send("GET /api/v1/models/first HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /async HTTP/1.1\r\nHost: x\r\n\r\n"
             "GET /api/v1/models/third HTTP/1.1\r\nHost: x\r\n\r\n"));
  RawResponse r1 = c.ReadResponse(kWait);
  RawResponse r2 = c.ReadResponse(kWait);
  RawResponse r3 = c.ReadResponse(kWait);
  answerer.join();
  EXPECT_EQ(nlohmann::json::parse(r1.body)["name"], "first");
  EXPECT_EQ(r2.body, "second");
  EXPECT_EQ(nlohmann::json::parse(r3.body)["name"], "third");

  // Connection: close is honoured.
  RawConnection closing(port_);
  ASSERT_TRUE(closing.Send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  RawResponse rc = closing.ReadResponse(kWait);
  EXPECT_EQ(rc.status, 200);
  EXPECT_TRUE(rc.closed);
  EXPECT_TRUE(closing.WaitClosed(kWait));
}

TEST_F(HttpServerTest, Http10) {
  StartServer();
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("GET /healthz HTTP/1.0\r\n\r\n"));
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_TRUE(r.head.starts_with("HTTP/1.0 200 OK")) << r.head;
  EXPECT_EQ(nlohmann::json::parse(r.body)["status"], "ok");
  EXPECT_TRUE(c.WaitClosed(kWait));

  // A stream to an HTTP/1.0 client is sent raw and ended by closing.
  RawConnection s(port_);
  std::thread producer([&] {
    auto w = queue_.Pop();
    ASSERT_NE(w, nullptr);
    w->StartStream(200, {{"Content-Type", "text/plain"}});
    w->Write("abc");
    w->Write("def");
    w->End();
  });
  ASSERT_TRUE(s.Send("GET /async HTTP/1.0\r\n\r\n"));
  std::string all = s.ReadAll(kWait);
  producer.join();
  EXPECT_TRUE(all.starts_with("HTTP/1.0 200 OK\r\n")) << all;
  EXPECT_EQ(all.find("chunked"), std::string::npos);
  EXPECT_TRUE(all.ends_with("\r\n\r\nabcdef")) << all;
}

TEST_F(HttpServerTest, ExpectContinue) {
  StartServer();
  RawConnection c(port_);
  ASSERT_TRUE(
      c.Send("POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  std::string interim = c.ReadUntil("\r\n\r\n", kWait);
  EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(c.Send("hello"));
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello");
}

TEST_F(HttpServerTest, SlowHeadersGet408) {
  HttpServerOptions options;
  options.header_timeout = milliseconds(400);
  StartServer(options);
  RawConnection c(port_);
  auto start = steady_clock::now();
  ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\n"));
  // Trickle header bytes: each arrives well within any per-read timeout, the whole header never.
  std::string trickle = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  bool closed = false;
  RawResponse r;
  for (char ch : trickle) {
    // Once the answer is there the server has closed: a byte sent now would draw a reset that
    // can discard the 408 before it is read.
    if (c.Readable(milliseconds(0))) break;
    if (!c.Send(std::string(1, ch))) {
      closed = true;
      break;
    }
    std::this_thread::sleep_for(milliseconds(50));
    if (steady_clock::now() - start > milliseconds(600)) break;
  }
  r = c.ReadResponse(kWait);
  auto elapsed = steady_clock::now() - start;
  (void)closed;  // sends after the 408 may fail; the answer is what counts
  EXPECT_EQ(r.status, 408) << r.head;
  EXPECT_TRUE(c.WaitClosed(kWait));
  EXPECT_LT(elapsed, milliseconds(1500));

  // A connection that never sends a byte is closed after the header timeout too.
  RawConnection idle(port_);
  start = steady_clock::now();
  EXPECT_TRUE(idle.WaitClosed(milliseconds(3000)));
  EXPECT_LT(steady_clock::now() - start, milliseconds(1500));

  HttpClient client = MakeClient(port_);
  EXPECT_EQ(client.Get("/healthz")->status, 200);
}

TEST_F(HttpServerTest, SlowBodyGets408) {
  HttpServerOptions options;
  options.body_timeout = milliseconds(300);
  StartServer(options);
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"));
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_EQ(r.status, 408);
  EXPECT_TRUE(r.closed);
}

TEST_F(HttpServerTest, IdleKeepAliveConnectionIsClosed) {
  HttpServerOptions options;
  options.keep_alive_timeout = milliseconds(200);
  StartServer(options);
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(c.ReadResponse(kWait).status, 200);
  auto start = steady_clock::now();
  EXPECT_TRUE(c.WaitClosed(kWait));
  EXPECT_GE(steady_clock::now() - start, milliseconds(150));
  EXPECT_LT(steady_clock::now() - start, milliseconds(1500));
}

TEST_F(HttpServerTest, StreamToClientThatStopsReadingIsClosed) {
  HttpServerOptions options;
  options.max_stream_buffer_bytes = 256 * 1024;
  StartServer(options);
  RawConnection c(port_);
  int rcvbuf = 4096;
  setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  ASSERT_TRUE(c.Send("GET /async HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto w = queue_.Pop();
  ASSERT_NE(w, nullptr);
  std::atomic<bool> on_close{false};
  w->OnClose([&] { on_close = true; });
  ASSERT_TRUE(w->StartStream(200, {{"Content-Type", "application/octet-stream"}}));
  std::string chunk(64 * 1024, 'x');
  int writes = 0;
  for (; writes < 4000 && w->Write(chunk); ++writes) {
    if (writes % 16 == 0) std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_LT(writes, 4000);  // the stream was cut off, never unbounded
  auto deadline = steady_clock::now() + kWait;
  while (!on_close && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  EXPECT_TRUE(on_close);
  EXPECT_TRUE(w->IsClosed());
}

TEST_F(HttpServerTest, ThousandGarbageRequestsLeaveServerServing) {
  HttpServerOptions options;
  options.header_timeout = milliseconds(300);
  options.body_timeout = milliseconds(300);
  StartServer(options);
  const std::vector<std::string> valid = {
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
      "POST /raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      "GET /api/v1/models/x?y=z HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
  };
  std::atomic<int> answered{0};
  std::atomic<int> crashed_answers{0};
  std::vector<std::thread> threads;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 125;  // 1,000 in all
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i = 0; i < kPerThread; ++i) {
        std::string bytes;
        switch (rng() % 4) {
          case 0: {  // random bytes
            size_t n = rng() % 600;
            for (size_t k = 0; k < n; ++k) bytes.push_back(static_cast<char>(rng()));
            break;
          }
          case 1: {  // a valid request with bytes flipped
            bytes = valid[rng() % valid.size()];
            int flips = 1 + static_cast<int>(rng() % 5);
            for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
            break;
          }
          case 2: {  // a valid request truncated
            bytes = valid[rng() % valid.size()];
            bytes.resize(rng() % bytes.size());
            break;
          }
          default: {  // a valid request line followed by random header lines
            bytes = "GET /healthz HTTP/1.1\r\n";
            int lines = static_cast<int>(rng() % 8);
            for (int l = 0; l < lines; ++l) {
              size_t n = rng() % 80;
              for (size_t k = 0; k < n; ++k) bytes.push_back(static_cast<char>(32 + rng() % 95));
              bytes += (rng() % 4 == 0) ? "\n" : "\r\n";
            }
            bytes += "\r\n";
            break;
          }
        }
        RawConnection c(port_);
        if (c.fd() < 0) continue;
        c.Send(bytes);
        c.ShutdownWrite();
        std::string reply = c.ReadAll(milliseconds(3000));
        if (!reply.empty()) {
          answered.fetch_add(1);
          if (!reply.starts_with("HTTP/1.")) crashed_answers.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(crashed_answers.load(), 0);
  EXPECT_GT(answered.load(), 0);
  HttpClient client = MakeClient(port_);
  auto r = client.Get("/healthz");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_GE(server_->stats().connections_accepted, 1000u);
  // Every garbage connection was closed (only the client's remains).
  auto deadline = steady_clock::now() + kWait;
  while (server_->stats().connections_open > 1 && steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(server_->stats().connections_open, 1u);
}

TEST_F(HttpServerTest, StopClosesPendingWritersWhichMayOutliveTheServer) {
  StartServer();
  RawConnection c(port_);
  ASSERT_TRUE(c.Send("GET /async HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto w = queue_.Pop();
  ASSERT_NE(w, nullptr);
  std::atomic<bool> closed{false};
  w->OnClose([&] { closed = true; });
  server_->Stop();
  EXPECT_TRUE(closed);
  EXPECT_TRUE(w->IsClosed());
  EXPECT_FALSE(w->Send(JsonResponse(200, {})));
  EXPECT_TRUE(c.WaitClosed(kWait));
  server_.reset();
  EXPECT_FALSE(w->StartStream(200, {}));
  EXPECT_EQ(w->request().path, "/async");
  w.reset();  // the last reference goes after the server: no crash, no leak
}

TEST(HttpServerLifecycleTest, RoutesAfterStartAndPortInUse) {
  HttpServer first({});
  ASSERT_TRUE(first.Add(Method::kGet, "/", [](const Request&) { return Response(); }).ok());
  EXPECT_EQ(first.Add(Method::kGet, "/bad/{", [](const Request&) { return Response(); }).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(first.Start().ok());
  EXPECT_EQ(first.Start().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(first.Add(Method::kGet, "/late", [](const Request&) { return Response(); }).code(),
            StatusCode::kFailedPrecondition);

  HttpServerOptions taken;
  taken.port = first.port();
  HttpServer second(taken);
  Status s = second.Start();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("in use"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::to_string(first.port())), std::string::npos);

  HttpServerOptions bad_threads;
  bad_threads.io_threads = 0;
  EXPECT_EQ(HttpServer(bad_threads).Start().code(), StatusCode::kInvalidArgument);

  first.Stop();
  first.Stop();  // idempotent
}

TEST(HttpServerLifecycleTest, TooManyConnectionsGet503) {
  HttpServerOptions options;
  options.max_connections = 2;
  HttpServer server(options);
  ASSERT_TRUE(
      server.Add(Method::kGet, "/", [](const Request&) { return Response::Text(200, "x"); }).ok());
  ASSERT_TRUE(server.Start().ok());
  RawConnection a(server.port());
  RawConnection b(server.port());
  ASSERT_TRUE(a.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(b.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(a.ReadResponse(kWait).status, 200);
  EXPECT_EQ(b.ReadResponse(kWait).status, 200);
  RawConnection c(server.port());
  RawResponse r = c.ReadResponse(kWait);
  EXPECT_EQ(r.status, 503);
  EXPECT_TRUE(r.closed);
}

}  // namespace
}  // namespace spark::http
