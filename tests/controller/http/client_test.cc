#include "controller/http/client.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <optional>
#include <thread>

#include "controller/http/json.h"
#include "controller/http/server.h"

namespace spark::http {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// A port with nothing listening on it: bound, never listened, then closed.
uint16_t UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(HttpClientTest, ParsesBaseUrls) {
  EXPECT_EQ(HttpClient::Create("http://127.0.0.1:8080")->authority(), "127.0.0.1:8080");
  EXPECT_EQ(HttpClient::Create("127.0.0.1:8080/")->authority(), "127.0.0.1:8080");
  EXPECT_EQ(HttpClient::Create("http://controller")->authority(), "controller:80");
  EXPECT_EQ(HttpClient::Create("http://[::1]:9000")->authority(), "[::1]:9000");
  EXPECT_EQ(HttpClient::Create("https://x:1").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create("http://x:1/api").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create("http://x:99999").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create("http://x:abc").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create("http://:80").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpClient::Create("http://[::1:80").status().code(), StatusCode::kInvalidArgument);
}

TEST(HttpClientTest, ConnectionRefusedIsUnavailable) {
  auto client = HttpClient::Create("http://127.0.0.1:" + std::to_string(UnusedPort()));
  ASSERT_TRUE(client.ok());
  auto r = client->Get("/healthz");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("is the server running"), std::string::npos)
      << r.status().message();
  auto bad_target = client->Get("healthz");
  EXPECT_EQ(bad_target.status().code(), StatusCode::kInvalidArgument);
}

class HttpClientServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpServerOptions options;
    options.keep_alive_timeout = milliseconds(200);
    server_ = std::make_unique<HttpServer>(options);
    ASSERT_TRUE(server_
                    ->Add(Method::kGet, "/ok",
                          [](const Request& r) {
                            return JsonResponse(200, {{"auth", r.Header("Authorization")
                                                                   ? *r.Header("Authorization")
                                                                   : ""}});
                          })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/slow",
                               [this](const Request&, std::shared_ptr<ResponseWriter> w) {
                                 std::lock_guard lock(mu_);
                                 held_.push_back(std::move(w));  // never answered in time
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/lines",
                               [](const Request&, std::shared_ptr<ResponseWriter> w) {
                                 w->StartStream(200, {{"Content-Type", "text/plain"}});
                                 w->Write("one\r\ntw");
                                 w->Write("o\n\nthr");
                                 w->Write("ee\nfour");
                                 w->End();
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->AddAsync(Method::kGet, "/endless",
                               [this](const Request&, std::shared_ptr<ResponseWriter> w) {
                                 w->StartStream(200, {{"Content-Type", "text/plain"}});
                                 w->Write("line\n");
                                 std::lock_guard lock(mu_);
                                 held_.push_back(std::move(w));
                               })
                    .ok());
    ASSERT_TRUE(server_
                    ->Add(Method::kGet, "/missing",
                          [](const Request&) {
                            return ErrorResponse(404, "nope", "not_found_error", "not_found");
                          })
                    .ok());
    ASSERT_TRUE(server_->Start().ok());
    HttpClientOptions options_300ms;
    options_300ms.request_timeout = milliseconds(300);
    auto client =
        HttpClient::Create("http://127.0.0.1:" + std::to_string(server_->port()), options_300ms);
    ASSERT_TRUE(client.ok());
    client_.emplace(std::move(*client));
  }

  void TearDown() override {
    server_->Stop();
    std::lock_guard lock(mu_);
    held_.clear();
  }

  std::unique_ptr<HttpServer> server_;
  std::optional<HttpClient> client_;
  std::mutex mu_;
  std::vector<std::shared_ptr<ResponseWriter>> held_;
};

TEST_F(HttpClientServerTest, RequestTimeoutIsDeadlineExceeded) {
  auto start = steady_clock::now();
  auto r = client_->Get("/slow");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(steady_clock::now() - start, milliseconds(2000));
  // The client recovers with a fresh connection.
  auto ok = client_->Get("/ok");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->status, 200);
}

TEST_F(HttpClientServerTest, ReconnectsAfterServerClosedIdleConnection) {
  ASSERT_EQ(client_->Get("/ok")->status, 200);
  std::this_thread::sleep_for(milliseconds(500));  // server's keep-alive timeout is 200 ms
  auto r = client_->Get("/ok");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(server_->stats().connections_accepted, 2u);
}

TEST_F(HttpClientServerTest, SendsBearerToken) {
  HttpClientOptions with_token;
  with_token.bearer_token = "tok";
  auto client = HttpClient::Create("127.0.0.1:" + std::to_string(server_->port()), with_token);
  auto r = client->Get("/ok");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r->Json())["auth"], "Bearer tok");
  EXPECT_EQ((*client_->Get("/ok")->Json())["auth"], "");
}

TEST_F(HttpClientServerTest, StreamsLines) {
  std::vector<std::string> lines;
  auto r = client_->Stream(Method::kGet, "/lines", "", {}, [&](std::string_view line) {
    lines.emplace_back(line);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->body.empty());
  EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "", "three", "four"}));
}

TEST_F(HttpClientServerTest, StreamStopsWhenCallbackSaysSo) {
  int calls = 0;
  auto start = steady_clock::now();
  auto r = client_->Stream(Method::kGet, "/endless", "", {}, [&](std::string_view line) {
    ++calls;
    EXPECT_EQ(line, "line");
    return false;
  });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(calls, 1);
  EXPECT_LT(steady_clock::now() - start, milliseconds(1000));
  // The held writer sees the disconnect.
  auto deadline = steady_clock::now() + milliseconds(2000);
  bool closed = false;
  while (!closed && steady_clock::now() < deadline) {
    {
      std::lock_guard lock(mu_);
      closed = !held_.empty() && held_.back()->IsClosed();
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_TRUE(closed);
  EXPECT_EQ(client_->Get("/ok")->status, 200);
}

TEST_F(HttpClientServerTest, StreamIdleTimeout) {
  int calls = 0;
  auto r = client_->Stream(Method::kGet, "/endless", "", {}, [&](std::string_view) {
    ++calls;
    return true;
  });
  EXPECT_EQ(calls, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
}

TEST_F(HttpClientServerTest, NonSuccessStreamReturnsBody) {
  bool called = false;
  auto r = client_->Stream(Method::kGet, "/missing", "", {}, [&](std::string_view) {
    called = true;
    return true;
  });
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(called);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ((*r->Json())["error"]["message"], "nope");
}

TEST_F(HttpClientServerTest, NonJsonBodyIsDataLoss) {
  ClientResponse response;
  response.status = 200;
  response.body = "<html>";
  EXPECT_EQ(response.Json().status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace spark::http
