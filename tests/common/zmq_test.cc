#include "common/zmq.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/fd.h"
#include "common/log.h"
#include "common/process.h"

namespace spark {
namespace {

using std::chrono::milliseconds;

// Waits (bounded) until `condition` holds; for counters updated by background threads.
template <typename F>
bool Eventually(F condition, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

ZmqSocket MakeSocket(ZmqContext& context, ZmqSocketType type) {
  Result<ZmqSocket> socket = ZmqSocket::Create(context, type);
  EXPECT_TRUE(socket.ok()) << socket.status().ToString();
  return std::move(socket).value();
}

std::string BindEphemeral(ZmqSocket& socket) {
  EXPECT_TRUE(socket.Bind("tcp://127.0.0.1:*").ok());
  Result<std::string> endpoint = socket.LastEndpoint();
  EXPECT_TRUE(endpoint.ok());
  EXPECT_EQ(endpoint->rfind("tcp://127.0.0.1:", 0), 0u) << *endpoint;
  EXPECT_NE(*endpoint, "tcp://127.0.0.1:*");
  return *endpoint;
}

TEST(ZmqTest, RouterDealerRoundTripWithRoutingId) {
  ZmqContext context;
  ZmqSocket router = MakeSocket(context, ZmqSocketType::kRouter);
  const std::string endpoint = BindEphemeral(router);
  ZmqSocket dealer = MakeSocket(context, ZmqSocketType::kDealer);
  ASSERT_TRUE(dealer.SetRoutingId("agent-7").ok());
  ASSERT_TRUE(dealer.Connect(endpoint).ok());

  const std::string binary("\x00\x01\xff payload", 11);
  ASSERT_TRUE(dealer.Send({"hello", binary}, milliseconds(2000)).ok());
  Result<ZmqMessage> got = router.Recv(milliseconds(5000));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, (ZmqMessage{"agent-7", "hello", binary}));
  EXPECT_EQ(router.last_peer_user_id(), "");

  ASSERT_TRUE(router.Send({"agent-7", "reply"}).ok());
  Result<ZmqMessage> reply = dealer.Recv(milliseconds(5000));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(*reply, ZmqMessage{"reply"});
}

TEST(ZmqTest, RouterSendToUnknownPeerIsUnavailable) {
  ZmqContext context;
  ZmqSocket router = MakeSocket(context, ZmqSocketType::kRouter);
  BindEphemeral(router);
  Status s = router.Send({"nobody", "x"});
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("\"nobody\""), std::string::npos) << s.message();
}

TEST(ZmqTest, RecvTimesOutAndTryRecvIsEmpty) {
  ZmqContext context;
  ZmqSocket router = MakeSocket(context, ZmqSocketType::kRouter);
  BindEphemeral(router);
  const auto start = std::chrono::steady_clock::now();
  Result<ZmqMessage> got = router.Recv(milliseconds(50));
  EXPECT_EQ(got.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
  Result<std::optional<ZmqMessage>> none = router.TryRecv();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(ZmqTest, ErrorsAreStatusesNotExceptions) {
  ZmqContext context;
  ZmqSocket socket = MakeSocket(context, ZmqSocketType::kDealer);
  EXPECT_EQ(socket.Bind("nonsense://x").code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(socket.Connect("tcp://").ok());
  EXPECT_EQ(socket.SetRoutingId("").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(socket.Send({}).code(), StatusCode::kInvalidArgument);
  ZmqSocket a = MakeSocket(context, ZmqSocketType::kRouter);
  const std::string endpoint = BindEphemeral(a);
  ZmqSocket b = MakeSocket(context, ZmqSocketType::kRouter);
  Status in_use = b.Bind(endpoint);
  EXPECT_EQ(in_use.code(), StatusCode::kUnavailable);
  EXPECT_NE(in_use.message().find(endpoint), std::string::npos);
}

TEST(CurveTest, KeyPairsAndDerivation) {
  Result<CurveKeyPair> keys = GenerateCurveKeyPair();
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(keys->public_key.size(), 40u);
  EXPECT_TRUE(IsValidCurveKey(keys->public_key));
  EXPECT_TRUE(IsValidCurveKey(keys->secret_key));
  EXPECT_NE(keys->public_key, keys->secret_key);
  Result<CurveKeyPair> derived = CurveKeyPairFromSecret(keys->secret_key);
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(derived->public_key, keys->public_key);
  EXPECT_FALSE(IsValidCurveKey("short"));
  EXPECT_FALSE(IsValidCurveKey(std::string(40, '"')));  // not in the Z85 alphabet
  EXPECT_FALSE(CurveKeyPairFromSecret("x").ok());
  // Known vector from the ZMTP CURVE RFC (rfc.zeromq.org/spec/26) test keys.
  Result<CurveKeyPair> rfc = CurveKeyPairFromSecret("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs");
  ASSERT_TRUE(rfc.ok());
  EXPECT_EQ(rfc->public_key, "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID");
}

class KeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("zmq_keys_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(KeyFileTest, SecretFileRoundTripWithMode0600) {
  const CurveKeyPair keys = *GenerateCurveKeyPair();
  const auto secret = dir_ / "agent.key_secret";
  const auto pub = dir_ / "agent.key";
  ASSERT_TRUE(WriteCurveSecretKeyFile(secret, keys).ok());
  ASSERT_TRUE(WriteCurvePublicKeyFile(pub, keys.public_key).ok());
  struct stat st {};
  ASSERT_EQ(::stat(secret.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(pub.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);

  Result<CurveKeyPair> read = ReadCurveSecretKeyFile(secret);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->public_key, keys.public_key);
  EXPECT_EQ(read->secret_key, keys.secret_key);
  EXPECT_EQ(*ReadCurvePublicKeyFile(pub), keys.public_key);
  EXPECT_EQ(*ReadCurvePublicKeyFile(secret), keys.public_key);
  // No temporary files left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 2);
}

TEST_F(KeyFileTest, ReadableSecretFileIsRefused) {
  const CurveKeyPair keys = *GenerateCurveKeyPair();
  const auto secret = dir_ / "agent.key_secret";
  ASSERT_TRUE(WriteCurveSecretKeyFile(secret, keys).ok());
  ASSERT_EQ(::chmod(secret.c_str(), 0644), 0);
  Result<CurveKeyPair> read = ReadCurveSecretKeyFile(secret);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(read.status().message().find("chmod 600 " + secret.string()), std::string::npos);
}

TEST_F(KeyFileTest, MismatchedAndMissingKeys) {
  const CurveKeyPair a = *GenerateCurveKeyPair();
  const CurveKeyPair b = *GenerateCurveKeyPair();
  const auto mixed = dir_ / "mixed";
  ASSERT_TRUE(WriteCurveSecretKeyFile(mixed, CurveKeyPair{b.public_key, a.secret_key}).ok());
  EXPECT_EQ(ReadCurveSecretKeyFile(mixed).status().code(), StatusCode::kDataLoss);
  const auto empty = dir_ / "empty";
  { std::ofstream(empty) << "# nothing\n"; }
  ::chmod(empty.c_str(), 0600);
  EXPECT_EQ(ReadCurveSecretKeyFile(empty).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ReadCurvePublicKeyFile(empty).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ReadCurvePublicKeyFile(dir_ / "missing").status().code(), StatusCode::kNotFound);
}

struct CurveSetup {
  ZmqContext context;
  std::unique_ptr<ZapAuthenticator> zap;
  CurveKeyPair server_keys = *GenerateCurveKeyPair();
  std::optional<ZmqSocket> router;
  std::string endpoint;

  CurveSetup() {
    zap = std::move(ZapAuthenticator::Start(context)).value();
    router = MakeSocket(context, ZmqSocketType::kRouter);
    EXPECT_TRUE(router->SetCurveServer(server_keys).ok());
    endpoint = BindEphemeral(*router);
  }

  ZmqSocket Client(ZmqContext& client_context, const CurveKeyPair& keys, const std::string& id) {
    ZmqSocket dealer = MakeSocket(client_context, ZmqSocketType::kDealer);
    EXPECT_TRUE(dealer.SetRoutingId(id).ok());
    EXPECT_TRUE(dealer.SetCurveClient(keys, server_keys.public_key).ok());
    EXPECT_TRUE(dealer.Connect(endpoint).ok());
    return dealer;
  }
};

TEST(CurveTest, TrustedClientGetsThroughWithAuthenticatedUserId) {
  CurveSetup setup;
  const CurveKeyPair client_keys = *GenerateCurveKeyPair();
  setup.zap->Allow(client_keys.public_key);
  ZmqContext client_context;
  ZmqSocket dealer = setup.Client(client_context, client_keys, "agent-1");
  ASSERT_TRUE(dealer.Send({"register"}, milliseconds(2000)).ok());
  Result<ZmqMessage> got = setup.router->Recv(milliseconds(5000));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, (ZmqMessage{"agent-1", "register"}));
  EXPECT_EQ(setup.router->last_peer_user_id(), client_keys.public_key);
  EXPECT_EQ(setup.zap->accepted(), 1);
  EXPECT_EQ(setup.zap->rejected(), 0);
  ASSERT_TRUE(setup.router->Send({"agent-1", "welcome"}).ok());
  Result<ZmqMessage> reply = dealer.Recv(milliseconds(5000));
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(*reply, ZmqMessage{"welcome"});
}

TEST(CurveTest, UntrustedClientIsRefusedAtHandshake) {
  ScopedLogCapture log(LogLevel::kWarn);
  CurveSetup setup;
  const CurveKeyPair trusted = *GenerateCurveKeyPair();
  const CurveKeyPair intruder = *GenerateCurveKeyPair();
  setup.zap->Allow(trusted.public_key);
  ZmqContext client_context;
  ZmqSocket dealer = setup.Client(client_context, intruder, "intruder");
  // The message is only queued on the client side; it can never pass the handshake.
  dealer.Send({"let me in"}, milliseconds(200)).IgnoreError();
  ASSERT_TRUE(Eventually([&] { return setup.zap->rejected() >= 1; }, milliseconds(5000)));
  Result<ZmqMessage> got = setup.router->Recv(milliseconds(300));
  EXPECT_EQ(got.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(setup.zap->accepted(), 0);
  // Refusals are logged once per key, with the key.
  bool logged = false;
  for (const LogRecord& r : log.records()) {
    if (r.FindField("key") != nullptr && *r.FindField("key") == intruder.public_key) logged = true;
  }
  EXPECT_TRUE(logged);

  // Allowing the key later lets a new connection with it in (the allow-list is live).
  setup.zap->Allow(intruder.public_key);
  EXPECT_TRUE(setup.zap->IsAllowed(intruder.public_key));
  ZmqSocket admitted = setup.Client(client_context, intruder, "admitted");
  ASSERT_TRUE(admitted.Send({"now allowed"}, milliseconds(2000)).ok());
  Result<ZmqMessage> later = setup.router->Recv(milliseconds(5000));
  ASSERT_TRUE(later.ok()) << later.status().ToString();
  EXPECT_EQ(*later, (ZmqMessage{"admitted", "now allowed"}));
  EXPECT_EQ(setup.router->last_peer_user_id(), intruder.public_key);
}

TEST(CurveTest, PlainClientGetsNothingThrough) {
  CurveSetup setup;
  ZmqContext client_context;
  ZmqSocket plain = MakeSocket(client_context, ZmqSocketType::kDealer);
  ASSERT_TRUE(plain.Connect(setup.endpoint).ok());
  plain.Send({"plaintext"}, milliseconds(200)).IgnoreError();
  EXPECT_EQ(setup.router->Recv(milliseconds(300)).status().code(), StatusCode::kDeadlineExceeded);
}

TEST(CurveTest, CurveServerNeedsAnAuthenticator) {
  ZmqContext context;
  ZmqSocket router = MakeSocket(context, ZmqSocketType::kRouter);
  Status s = router.SetCurveServer(*GenerateCurveKeyPair());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  {
    auto zap = ZapAuthenticator::Start(context);
    ASSERT_TRUE(zap.ok());
    EXPECT_EQ(ZapAuthenticator::Start(context).status().code(), StatusCode::kAlreadyExists);
    EXPECT_TRUE(router.SetCurveServer(*GenerateCurveKeyPair()).ok());
  }
  // Stopped: a new one can start on the same context.
  EXPECT_FALSE(context.has_authenticator());
  EXPECT_TRUE(ZapAuthenticator::Start(context).ok());
}

TEST(CurveTest, AllowListUpdates) {
  ZmqContext context;
  auto zap = std::move(ZapAuthenticator::Start(context)).value();
  zap->SetAllowed({"a", "b"});
  EXPECT_TRUE(zap->IsAllowed("a"));
  zap->Revoke("a");
  EXPECT_FALSE(zap->IsAllowed("a"));
  EXPECT_TRUE(zap->IsAllowed("b"));
  zap->SetAllowed({"c"});
  EXPECT_FALSE(zap->IsAllowed("b"));
  EXPECT_TRUE(zap->IsAllowed("c"));
}

TEST(PollerTest, SeesEventFdSocketAndTimeout) {
  ZmqContext context;
  ZmqSocket pull = MakeSocket(context, ZmqSocketType::kPull);
  const std::string endpoint = BindEphemeral(pull);
  ZmqSocket push = MakeSocket(context, ZmqSocketType::kPush);
  ASSERT_TRUE(push.Connect(endpoint).ok());
  EventFd event = *EventFd::Create();

  Poller poller;
  int event_hits = 0;
  std::vector<ZmqMessage> received;
  poller.AddFd(event.fd(), [&] {
    ++event_hits;
    EXPECT_EQ(*event.Drain(), 2u);
  });
  poller.AddSocket(pull, [&] {
    while (true) {
      auto m = pull.TryRecv();
      ASSERT_TRUE(m.ok());
      if (!m->has_value()) break;
      received.push_back(**m);
    }
  });
  EXPECT_EQ(poller.size(), 2u);

  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(*poller.PollOnce(milliseconds(30)), 0);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(25));

  ASSERT_TRUE(event.Notify().ok());
  ASSERT_TRUE(event.Notify().ok());
  EXPECT_EQ(*poller.PollOnce(milliseconds(5000)), 1);
  EXPECT_EQ(event_hits, 1);

  ASSERT_TRUE(push.Send({"a", "b"}, milliseconds(2000)).ok());
  ASSERT_TRUE(Eventually(
      [&] {
        poller.PollOnce(milliseconds(100)).status().IgnoreError();
        return !received.empty();
      },
      milliseconds(5000)));
  EXPECT_EQ(received, std::vector<ZmqMessage>{(ZmqMessage{"a", "b"})});
  EXPECT_EQ(event_hits, 1);  // drained: level-triggered but no longer readable
}

TEST(PollerTest, SeesAPidfdWhenTheChildExits) {
  RealProcessLauncher launcher;
  SpawnOptions options;
  options.args = {"/bin/sh", "-c", "exit 4"};
  auto child = launcher.Spawn(options);
  ASSERT_TRUE(child.ok());
  Poller poller;
  std::optional<ExitInfo> exit;
  int id = 0;
  id = poller.AddFd((*child)->pidfd(), [&] {
    exit = **(*child)->TryWait();
    poller.Remove(id);  // removing itself from inside its handler
  });
  const auto deadline = std::chrono::steady_clock::now() + milliseconds(5000);
  while (!exit.has_value() && std::chrono::steady_clock::now() < deadline) {
    ASSERT_TRUE(poller.PollOnce(milliseconds(100)).ok());
  }
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(*exit, ExitInfo::Code(4));
  EXPECT_EQ(poller.size(), 0u);
}

TEST(PollerTest, HandlerMayRemoveAnotherReadyItemAndAddNew) {
  EventFd a = *EventFd::Create();
  EventFd b = *EventFd::Create();
  EventFd c = *EventFd::Create();
  ASSERT_TRUE(a.Notify().ok());
  ASSERT_TRUE(b.Notify().ok());
  ASSERT_TRUE(c.Notify().ok());
  Poller poller;
  std::vector<std::string> ran;
  int id_b = 0;
  poller.AddFd(a.fd(), [&] {
    ran.push_back("a");
    poller.Remove(id_b);
    poller.AddFd(c.fd(), [&] { ran.push_back("c"); });
  });
  id_b = poller.AddFd(b.fd(), [&] { ran.push_back("b"); });
  EXPECT_EQ(*poller.PollOnce(milliseconds(1000)), 1);
  EXPECT_EQ(ran, std::vector<std::string>{"a"});
  ran.clear();
  a.Drain().status().IgnoreError();
  EXPECT_EQ(*poller.PollOnce(milliseconds(1000)), 1);
  EXPECT_EQ(ran, std::vector<std::string>{"c"});
}

}  // namespace
}  // namespace spark
