// ZeroMQ helpers: context and socket wrappers whose calls return Status (cppzmq exceptions never
// escape), CURVE keys and key files, a ZAP handler with an allow-list of client keys, and a
// Poller over ZMQ sockets and plain file descriptors (pidfds, eventfds).
//
//   ZmqContext context;
//   SPARK_ASSIGN_OR_RETURN(auto zap, ZapAuthenticator::Start(context));
//   zap->SetAllowed(agent_public_keys);
//   SPARK_ASSIGN_OR_RETURN(ZmqSocket router, ZmqSocket::Create(context, ZmqSocketType::kRouter));
//   SPARK_RETURN_IF_ERROR(router.SetCurveServer(controller_keys));
//   SPARK_RETURN_IF_ERROR(router.Bind("tcp://0.0.0.0:7100"));
//   SPARK_ASSIGN_OR_RETURN(ZmqMessage m, router.Recv(std::chrono::seconds(1)));
//   // m[0] is the DEALER's routing id, m[1..] its frames; router.last_peer_user_id() is the
//   // sender's CURVE public key (Z85) as authenticated by the ZAP handler.
//
// Sockets are created with linger 0 (closing never blocks on unsent messages); a ROUTER is
// created with ROUTER_MANDATORY, so a send to a routing id that names no connected peer fails
// with Unavailable instead of vanishing. Messages are vectors of frames (std::string, binary
// safe); there are no empty delimiter frames between a DEALER and a ROUTER.
//
// CURVE and ZAP: a CURVE server socket asks the context's ZAP handler (inproc://zeromq.zap.01)
// about every client key during the handshake; a key outside the allow-list is refused there, so
// no frame of an unknown client ever reaches the application. libzmq accepts *every* client when
// no ZAP handler is bound, so SetCurveServer fails (FailedPrecondition) unless a ZapAuthenticator
// is running on the socket's context, and the authenticator must outlive its server sockets.
// Key files: a secret key file holds `public-key = "<z85>"` and `secret-key = "<z85>"` lines
// (valid TOML, mode 0600, refused when group or others can read it); a public key file holds the
// `public-key` line. Z85 keys are 40 characters.
//
// Thread safety: ZmqContext and ZapAuthenticator are thread-safe. A ZmqSocket (like any ZMQ
// socket) must be used by one thread at a time; moving it to another thread is fine. A Poller is
// used by one thread. CURVE key functions are thread-safe.
// Ownership: a ZmqContext must outlive its sockets and its authenticator.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/status.h"

namespace spark {

// One multipart message: one string per frame.
using ZmqMessage = std::vector<std::string>;

class ZmqContext {
 public:
  ZmqContext();  // aborts (SPARK_CHECK) only if libzmq cannot create a context at all
  ~ZmqContext();
  ZmqContext(const ZmqContext&) = delete;
  ZmqContext& operator=(const ZmqContext&) = delete;

  zmq::context_t& raw() { return context_; }
  // Whether a ZapAuthenticator is running on this context.
  bool has_authenticator() const { return has_authenticator_.load(); }

 private:
  friend class ZapAuthenticator;
  zmq::context_t context_;
  std::atomic<bool> has_authenticator_{false};
};

enum class ZmqSocketType { kRouter, kDealer, kPair, kPush, kPull, kPub, kSub };

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

class ZmqSocket {
 public:
  static Result<ZmqSocket> Create(ZmqContext& context, ZmqSocketType type);

  ZmqSocket(ZmqSocket&&) = default;
  ZmqSocket& operator=(ZmqSocket&&) = default;

  // Routing id this socket announces to ROUTER peers; set before Connect/Bind. 1 to 255 bytes,
  // must not start with a zero byte.
  Status SetRoutingId(std::string_view id);
  Status SetSendHighWaterMark(int messages);
  Status SetRecvHighWaterMark(int messages);
  // Peers that send a message larger than this are disconnected (-1: no limit, the default).
  Status SetMaxMessageBytes(int64_t bytes);
  // ZMTP heartbeats: PING every `interval`, drop the connection after `timeout` without traffic.
  Status SetHeartbeat(std::chrono::milliseconds interval, std::chrono::milliseconds timeout);

  // CURVE server: `keys` is this server's key pair. Needs a running ZapAuthenticator on the
  // context (see the header comment). Call before Bind.
  Status SetCurveServer(const CurveKeyPair& keys);
  // CURVE client: own key pair and the server's public key. Call before Connect.
  Status SetCurveClient(const CurveKeyPair& keys, std::string_view server_public_key);

  // "tcp://127.0.0.1:*" binds an ephemeral port; LastEndpoint() tells which.
  Status Bind(const std::string& endpoint);
  Status Connect(const std::string& endpoint);
  Status Disconnect(const std::string& endpoint);
  // The endpoint of the last Bind, with the port resolved ("tcp://127.0.0.1:40123").
  Result<std::string> LastEndpoint();

  // Sends `frames` (at least one) as one message, waiting up to `timeout` for queue space
  // (0: do not wait). Unavailable when it cannot be queued in time (no peer yet, high-water mark
  // reached, or a ROUTER routing id naming no connected peer).
  Status Send(const ZmqMessage& frames,
              std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  // Receives one message, waiting up to `timeout` (negative: forever). DeadlineExceeded when
  // nothing arrived in time.
  Result<ZmqMessage> Recv(std::chrono::milliseconds timeout);
  // Receives one message if one is queued; nullopt otherwise. Never blocks.
  Result<std::optional<ZmqMessage>> TryRecv();
  // The ZAP user id of the peer that sent the last message received: its CURVE public key (Z85)
  // on a CURVE server socket, "" otherwise.
  const std::string& last_peer_user_id() const { return last_peer_user_id_; }

  zmq::socket_t& raw() { return socket_; }
  void* handle() { return socket_.handle(); }

 private:
  ZmqSocket(ZmqContext* context, zmq::socket_t socket)
      : context_(context), socket_(std::move(socket)) {}
  Result<std::optional<ZmqMessage>> ReceiveNow();

  ZmqContext* context_;
  zmq::socket_t socket_;
  std::string last_peer_user_id_;
};

// A fresh CURVE key pair (libsodium randomness).
Result<CurveKeyPair> GenerateCurveKeyPair();
// The key pair of a Z85 secret key (the public key is derived).
Result<CurveKeyPair> CurveKeyPairFromSecret(std::string_view secret_key);
// True for a 40-character Z85 string (a 32-byte key).
bool IsValidCurveKey(std::string_view key);

// Writes the secret key file atomically (temporary file + rename), mode 0600.
Status WriteCurveSecretKeyFile(const std::filesystem::path& path, const CurveKeyPair& keys);
// Writes a public key file (mode 0644).
Status WriteCurvePublicKeyFile(const std::filesystem::path& path, std::string_view public_key);
// Reads a secret key file; PermissionDenied when group or others may read it, DataLoss when its
// public-key line does not match the secret key.
Result<CurveKeyPair> ReadCurveSecretKeyFile(const std::filesystem::path& path);
// Reads the public key from a public or secret key file.
Result<std::string> ReadCurvePublicKeyFile(const std::filesystem::path& path);

// The ZAP handler of one context: answers every CURVE handshake on that context's server sockets,
// accepting exactly the client public keys in its allow-list (user id = the Z85 key) and refusing
// everything else (other mechanisms included). Refusals are logged as warnings, at most once a
// minute per key. Runs one background thread.
class ZapAuthenticator {
 public:
  // Binds inproc://zeromq.zap.01 on `context` and starts the handler thread. AlreadyExists when
  // the context already has an authenticator.
  static Result<std::unique_ptr<ZapAuthenticator>> Start(ZmqContext& context);
  ~ZapAuthenticator();  // stops the thread and unbinds
  ZapAuthenticator(const ZapAuthenticator&) = delete;
  ZapAuthenticator& operator=(const ZapAuthenticator&) = delete;

  // Allow-list updates take effect for the next handshake; connections already authenticated stay.
  void Allow(std::string_view public_key);
  void Revoke(std::string_view public_key);
  void SetAllowed(const std::vector<std::string>& public_keys);
  bool IsAllowed(std::string_view public_key) const;

  int64_t accepted() const;  // handshakes accepted so far
  int64_t rejected() const;  // handshakes refused so far

 private:
  struct State;
  explicit ZapAuthenticator(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// Waits for readiness on ZMQ sockets and plain descriptors, and runs their handlers.
//
//   Poller poller;
//   poller.AddSocket(router, [&] { while (auto m = *router.TryRecv()) Handle(*m); });
//   poller.AddFd(shard->pidfd(), [&] { OnShardExit(); });
//   while (running)
//   SPARK_RETURN_IF_ERROR(poller.PollOnce(std::chrono::milliseconds(100)).status());
//
// Readiness is level-triggered: a socket or fd that stays readable runs its handler again on the
// next PollOnce. Handlers may Add and Remove items (their own included) while running.
class Poller {
 public:
  using Handler = std::function<void()>;

  // Registers a socket / descriptor for readability; returns an id for Remove. The socket or
  // descriptor must stay open while registered.
  int AddSocket(ZmqSocket& socket, Handler on_readable);
  int AddFd(int fd, Handler on_readable);
  void Remove(int id);
  size_t size() const;

  // Waits up to `timeout` (negative: forever) until something is readable, then runs the handler
  // of every readable item once. Returns how many handlers ran (0: timeout or a signal
  // interrupted the wait).
  Result<int> PollOnce(std::chrono::milliseconds timeout);

 private:
  struct Item {
    int id;
    void* socket;  // nullptr for a plain fd
    int fd;
    std::shared_ptr<Handler> handler;
    bool removed = false;
  };
  std::vector<Item> items_;
  int next_id_ = 1;
};

}  // namespace spark
