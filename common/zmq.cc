#include "common/zmq.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <zmq_addon.hpp>

#include "common/check.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/os_error.h"

namespace spark {

namespace {

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr const char* kZapDomain = "spark";
constexpr int kZapEnforceDomain = 93;  // ZMQ_ZAP_ENFORCE_DOMAIN (a draft option in libzmq 4.3)
constexpr auto kRefusalLogInterval = std::chrono::minutes(1);

Status ZmqError(int err, std::string_view what) {
  std::string message(what);
  message += ": ";
  message += zmq_strerror(err);
  switch (err) {
    case EAGAIN:
    case EHOSTUNREACH:
      return Unavailable(std::move(message));
    case ETERM:
      return Cancelled(std::move(message));
    case EINVAL:
      return InvalidArgument(std::move(message));
    case EADDRINUSE:
      return Unavailable(std::move(message) + " (another process listens there?)");
    case EADDRNOTAVAIL:
    case ENODEV:
      return InvalidArgument(std::move(message));
    case EPROTONOSUPPORT:
      return InvalidArgument(std::move(message) + " (unknown transport)");
    default:
      return Internal(std::move(message));
  }
}

// Runs `f`, converting a zmq::error_t into a Status.
template <typename F>
Status ZmqCall(std::string_view what, F&& f) {
  try {
    f();
    return Status::Ok();
  } catch (const zmq::error_t& e) {
    return ZmqError(e.num(), what);
  }
}

zmq::socket_type ToZmq(ZmqSocketType type) {
  switch (type) {
    case ZmqSocketType::kRouter:
      return zmq::socket_type::router;
    case ZmqSocketType::kDealer:
      return zmq::socket_type::dealer;
    case ZmqSocketType::kPair:
      return zmq::socket_type::pair;
    case ZmqSocketType::kPush:
      return zmq::socket_type::push;
    case ZmqSocketType::kPull:
      return zmq::socket_type::pull;
    case ZmqSocketType::kPub:
      return zmq::socket_type::pub;
    case ZmqSocketType::kSub:
      return zmq::socket_type::sub;
  }
  return zmq::socket_type::pair;
}

// Waits for `events` on one socket; true when ready. timeout < 0: forever.
Result<bool> WaitSocket(void* socket, short events, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    long wait_ms = -1;
    if (timeout.count() >= 0) {
      wait_ms = std::max<long>(0, std::chrono::ceil<std::chrono::milliseconds>(
                                      deadline - std::chrono::steady_clock::now())
                                      .count());
    }
    zmq_pollitem_t item{socket, 0, events, 0};
    const int n = zmq_poll(&item, 1, wait_ms);
    if (n < 0) {
      if (zmq_errno() == EINTR) continue;
      return ZmqError(zmq_errno(), "zmq_poll");
    }
    if (n > 0) return true;
    if (wait_ms == 0 || std::chrono::steady_clock::now() >= deadline) return false;
  }
}

// A routing id for messages: quoted when printable, hex otherwise.
std::string PrintableId(std::string_view id) {
  const bool printable =
      std::all_of(id.begin(), id.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
  if (printable) return "\"" + std::string(id) + "\"";
  std::string hex = "0x";
  char buf[4];
  for (char c : id) {
    std::snprintf(buf, sizeof(buf), "%02x", static_cast<unsigned char>(c));
    hex += buf;
  }
  return hex;
}

std::string Trim(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  const size_t end = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(begin, end - begin + 1));
}

// Parses `name = "value"` lines of a key file into a map; other lines are ignored.
Result<std::map<std::string, std::string>> ReadKeyFile(const std::filesystem::path& path,
                                                       struct stat* st) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OsError(errno, "opening key file " + path.string());
  UniqueFd file(fd);
  if (::fstat(fd, st) < 0) return OsError(errno, "stat of key file " + path.string());
  std::string text;
  char buf[1024];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError(errno, "reading key file " + path.string());
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > 65536) return DataLoss("key file " + path.string() + " is too large");
  }
  std::map<std::string, std::string> values;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string line = Trim(std::string_view(text).substr(begin, end - begin));
    begin = end + 1;
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = Trim(std::string_view(line).substr(0, eq));
    std::string value = Trim(std::string_view(line).substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    values[name] = value;
  }
  return values;
}

Status WriteFileAtomically(const std::filesystem::path& path, std::string_view content,
                           mode_t mode) {
  const std::string tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return OsError(errno, "creating " + tmp);
  UniqueFd file(fd);
  if (::fchmod(fd, mode) < 0) return OsError(errno, "chmod of " + tmp);
  while (!content.empty()) {
    const ssize_t n = ::write(fd, content.data(), content.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::unlink(tmp.c_str());
      return OsError(err, "writing " + tmp);
    }
    content.remove_prefix(static_cast<size_t>(n));
  }
  if (::fsync(fd) < 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return OsError(err, "fsync of " + tmp);
  }
  file.Reset();
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return OsError(err, "renaming " + tmp + " to " + path.string());
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ZmqContext

ZmqContext::ZmqContext() {
  // context_t's constructor throws only when libzmq cannot create a context (no memory).
  SPARK_CHECK(context_.handle() != nullptr) << "zmq_ctx_new failed";
  // Sockets default to linger 0, so terminating the context never blocks on unsent messages.
  zmq_ctx_set(context_.handle(), ZMQ_BLOCKY, 0);
}

ZmqContext::~ZmqContext() = default;

// ---------------------------------------------------------------------------------------------
// ZmqSocket

Result<ZmqSocket> ZmqSocket::Create(ZmqContext& context, ZmqSocketType type) {
  zmq::socket_t socket;
  SPARK_RETURN_IF_ERROR(ZmqCall("creating a ZMQ socket", [&] {
    socket = zmq::socket_t(context.raw(), ToZmq(type));
    socket.set(zmq::sockopt::linger, 0);
    if (type == ZmqSocketType::kRouter) socket.set(zmq::sockopt::router_mandatory, 1);
  }));
  return ZmqSocket(&context, std::move(socket));
}

Status ZmqSocket::SetRoutingId(std::string_view id) {
  if (id.empty() || id.size() > 255 || id[0] == '\0') {
    return InvalidArgument("ZMQ routing id must be 1 to 255 bytes and not start with a zero byte");
  }
  return ZmqCall("setting the routing id", [&] {
    socket_.set(zmq::sockopt::routing_id, zmq::const_buffer(id.data(), id.size()));
  });
}

Status ZmqSocket::SetSendHighWaterMark(int messages) {
  return ZmqCall("setting ZMQ_SNDHWM", [&] { socket_.set(zmq::sockopt::sndhwm, messages); });
}

Status ZmqSocket::SetRecvHighWaterMark(int messages) {
  return ZmqCall("setting ZMQ_RCVHWM", [&] { socket_.set(zmq::sockopt::rcvhwm, messages); });
}

Status ZmqSocket::SetMaxMessageBytes(int64_t bytes) {
  return ZmqCall("setting ZMQ_MAXMSGSIZE", [&] { socket_.set(zmq::sockopt::maxmsgsize, bytes); });
}

Status ZmqSocket::SetHeartbeat(std::chrono::milliseconds interval,
                               std::chrono::milliseconds timeout) {
  return ZmqCall("setting ZMTP heartbeats", [&] {
    socket_.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(interval.count()));
    socket_.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(timeout.count()));
  });
}

Status ZmqSocket::SetCurveServer(const CurveKeyPair& keys) {
  if (!context_->has_authenticator()) {
    return FailedPrecondition(
        "a CURVE server socket needs a ZapAuthenticator running on its context (without one "
        "libzmq accepts every client key); call ZapAuthenticator::Start first");
  }
  if (!IsValidCurveKey(keys.secret_key)) {
    return InvalidArgument("CURVE server secret key is not a 40-character Z85 key");
  }
  SPARK_RETURN_IF_ERROR(ZmqCall("configuring a CURVE server", [&] {
    socket_.set(zmq::sockopt::curve_server, true);
    socket_.set(zmq::sockopt::curve_secretkey, keys.secret_key);
    socket_.set(zmq::sockopt::zap_domain, kZapDomain);
  }));
  // Where libzmq supports it, also refuse clients when no ZAP handler answers (fail closed).
  const int on = 1;
  zmq_setsockopt(socket_.handle(), kZapEnforceDomain, &on, sizeof(on));
  return Status::Ok();
}

Status ZmqSocket::SetCurveClient(const CurveKeyPair& keys, std::string_view server_public_key) {
  if (!IsValidCurveKey(keys.public_key) || !IsValidCurveKey(keys.secret_key)) {
    return InvalidArgument("CURVE client key pair is not two 40-character Z85 keys");
  }
  if (!IsValidCurveKey(server_public_key)) {
    return InvalidArgument("CURVE server public key \"" + std::string(server_public_key) +
                           "\" is not a 40-character Z85 key; check the controller key file");
  }
  return ZmqCall("configuring a CURVE client", [&] {
    socket_.set(zmq::sockopt::curve_serverkey, std::string(server_public_key));
    socket_.set(zmq::sockopt::curve_publickey, keys.public_key);
    socket_.set(zmq::sockopt::curve_secretkey, keys.secret_key);
  });
}

Status ZmqSocket::Bind(const std::string& endpoint) {
  return ZmqCall("binding " + endpoint, [&] { socket_.bind(endpoint); });
}

Status ZmqSocket::Connect(const std::string& endpoint) {
  return ZmqCall("connecting to " + endpoint, [&] { socket_.connect(endpoint); });
}

Status ZmqSocket::Disconnect(const std::string& endpoint) {
  return ZmqCall("disconnecting from " + endpoint, [&] { socket_.disconnect(endpoint); });
}

Result<std::string> ZmqSocket::LastEndpoint() {
  std::string endpoint;
  SPARK_RETURN_IF_ERROR(ZmqCall("reading ZMQ_LAST_ENDPOINT",
                                [&] { endpoint = socket_.get(zmq::sockopt::last_endpoint); }));
  return endpoint;
}

Status ZmqSocket::Send(const ZmqMessage& frames, std::chrono::milliseconds timeout) {
  if (frames.empty()) return InvalidArgument("a ZMQ message needs at least one frame");
  if (timeout.count() != 0) {
    SPARK_ASSIGN_OR_RETURN(bool writable, WaitSocket(socket_.handle(), ZMQ_POLLOUT, timeout));
    if (!writable) {
      return Unavailable("ZMQ send: no room within " + std::to_string(timeout.count()) +
                         " ms (no connected peer, or the peer is not reading)");
    }
  }
  try {
    // libzmq queues a multipart message atomically: once the first frame is accepted, the others
    // are too.
    for (size_t i = 0; i < frames.size(); ++i) {
      zmq::send_flags flags = zmq::send_flags::dontwait;
      if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
      const zmq::send_result_t sent = socket_.send(zmq::buffer(frames[i]), flags);
      if (!sent.has_value()) {
        SPARK_CHECK(i == 0) << "ZMQ refused frame " << i << " of a multipart message";
        return Unavailable("ZMQ send would block (no connected peer, or its queue is full)");
      }
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) {
      return Unavailable("ZMQ send: no connected peer with routing id " + PrintableId(frames[0]) +
                         " (it disconnected or never connected)");
    }
    return ZmqError(e.num(), "ZMQ send");
  }
  return Status::Ok();
}

Result<std::optional<ZmqMessage>> ZmqSocket::ReceiveNow() {
  std::vector<zmq::message_t> parts;
  std::optional<size_t> received;
  SPARK_RETURN_IF_ERROR(ZmqCall("ZMQ receive", [&] {
    received = zmq::recv_multipart(socket_, std::back_inserter(parts), zmq::recv_flags::dontwait);
  }));
  if (!received.has_value() || parts.empty()) return std::optional<ZmqMessage>();
  last_peer_user_id_.clear();
  const char* user_id = zmq_msg_gets(parts.back().handle(), "User-Id");
  if (user_id != nullptr) last_peer_user_id_ = user_id;
  ZmqMessage message;
  message.reserve(parts.size());
  for (const zmq::message_t& p : parts) message.emplace_back(p.data<char>(), p.size());
  return std::optional<ZmqMessage>(std::move(message));
}

Result<std::optional<ZmqMessage>> ZmqSocket::TryRecv() { return ReceiveNow(); }

Result<ZmqMessage> ZmqSocket::Recv(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = timeout;
    if (timeout.count() >= 0) {
      left =
          std::max(std::chrono::milliseconds(0), std::chrono::ceil<std::chrono::milliseconds>(
                                                     deadline - std::chrono::steady_clock::now()));
    }
    SPARK_ASSIGN_OR_RETURN(bool readable, WaitSocket(socket_.handle(), ZMQ_POLLIN, left));
    if (readable) {
      SPARK_ASSIGN_OR_RETURN(std::optional<ZmqMessage> message, ReceiveNow());
      if (message.has_value()) return std::move(*message);
    }
    if (timeout.count() >= 0 && std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded("no ZMQ message within " + std::to_string(timeout.count()) + " ms");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// CURVE keys

bool IsValidCurveKey(std::string_view key) {
  if (key.size() != 40) return false;
  const std::string copy(key);
  uint8_t decoded[32];
  return zmq_z85_decode(decoded, copy.c_str()) != nullptr;
}

Result<CurveKeyPair> GenerateCurveKeyPair() {
  char public_key[41];
  char secret_key[41];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    return ZmqError(zmq_errno(), "zmq_curve_keypair (is libzmq built with CURVE support?)");
  }
  return CurveKeyPair{public_key, secret_key};
}

Result<CurveKeyPair> CurveKeyPairFromSecret(std::string_view secret_key) {
  if (!IsValidCurveKey(secret_key)) {
    return InvalidArgument("CURVE secret key is not a 40-character Z85 key");
  }
  const std::string secret(secret_key);
  char public_key[41];
  if (zmq_curve_public(public_key, secret.c_str()) != 0) {
    return ZmqError(zmq_errno(), "zmq_curve_public");
  }
  return CurveKeyPair{public_key, secret};
}

Status WriteCurveSecretKeyFile(const std::filesystem::path& path, const CurveKeyPair& keys) {
  if (!IsValidCurveKey(keys.public_key) || !IsValidCurveKey(keys.secret_key)) {
    return InvalidArgument("not a CURVE key pair (two 40-character Z85 keys)");
  }
  const std::string content =
      "# spark CURVE key pair. Keep this file secret (mode 0600).\n"
      "public-key = \"" +
      keys.public_key +
      "\"\n"
      "secret-key = \"" +
      keys.secret_key + "\"\n";
  return WriteFileAtomically(path, content, 0600);
}

Status WriteCurvePublicKeyFile(const std::filesystem::path& path, std::string_view public_key) {
  if (!IsValidCurveKey(public_key)) {
    return InvalidArgument("not a CURVE public key (40-character Z85)");
  }
  const std::string content =
      "# spark CURVE public key.\npublic-key = \"" + std::string(public_key) + "\"\n";
  return WriteFileAtomically(path, content, 0644);
}

Result<CurveKeyPair> ReadCurveSecretKeyFile(const std::filesystem::path& path) {
  struct stat st {};
  SPARK_ASSIGN_OR_RETURN(auto values, ReadKeyFile(path, &st));
  if ((st.st_mode & 0077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDenied("secret key file " + path.string() + " has mode " + mode +
                            ": group or others may read it; run chmod 600 " + path.string());
  }
  auto secret = values.find("secret-key");
  if (secret == values.end() || !IsValidCurveKey(secret->second)) {
    return DataLoss("key file " + path.string() +
                    " has no valid secret-key = \"<40 Z85 characters>\" line");
  }
  SPARK_ASSIGN_OR_RETURN(CurveKeyPair keys, CurveKeyPairFromSecret(secret->second));
  auto stated_public = values.find("public-key");
  if (stated_public != values.end() && stated_public->second != keys.public_key) {
    return DataLoss("key file " + path.string() +
                    ": public-key does not belong to secret-key; regenerate the key pair");
  }
  return keys;
}

Result<std::string> ReadCurvePublicKeyFile(const std::filesystem::path& path) {
  struct stat st {};
  SPARK_ASSIGN_OR_RETURN(auto values, ReadKeyFile(path, &st));
  auto public_key = values.find("public-key");
  if (public_key == values.end() || !IsValidCurveKey(public_key->second)) {
    return DataLoss("key file " + path.string() +
                    " has no valid public-key = \"<40 Z85 characters>\" line");
  }
  return public_key->second;
}

// ---------------------------------------------------------------------------------------------
// ZapAuthenticator

struct ZapAuthenticator::State {
  ZmqContext* context = nullptr;
  zmq::socket_t socket;  // REP bound at kZapEndpoint; used only by the thread after Start
  std::optional<EventFd> stop;
  std::thread thread;

  mutable std::mutex mu;
  std::set<std::string, std::less<>> allowed;
  int64_t accepted = 0;
  int64_t rejected = 0;
  std::map<std::string, std::chrono::steady_clock::time_point> last_refusal_log;

  // Returns {status code, status text, user id} for one request.
  void Handle(const std::vector<zmq::message_t>& request, ZmqMessage* reply) {
    auto frame = [&](size_t i) { return i < request.size() ? request[i].to_string() : ""; };
    const std::string version = frame(0);
    const std::string request_id = frame(1);
    const std::string address = frame(3);
    const std::string mechanism = frame(5);
    std::string code = "400";
    std::string text;
    std::string user_id;
    std::string key_z85;
    if (version != "1.0") {
      code = "500";
      text = "unsupported ZAP version";
    } else if (mechanism != "CURVE" || request.size() < 7 || request[6].size() != 32) {
      text = "only CURVE clients are accepted";
    } else {
      char z85[41];
      zmq_z85_encode(z85, static_cast<const uint8_t*>(request[6].data()), 32);
      key_z85 = z85;
      std::lock_guard<std::mutex> lock(mu);
      if (allowed.count(key_z85) != 0) {
        code = "200";
        text = "OK";
        user_id = key_z85;
        ++accepted;
      } else {
        text = "unknown CURVE public key";
      }
    }
    if (code != "200") {
      bool log_now = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        ++rejected;
        const auto now = std::chrono::steady_clock::now();
        auto it = last_refusal_log.find(key_z85);
        if (it == last_refusal_log.end() || now - it->second >= kRefusalLogInterval) {
          last_refusal_log[key_z85] = now;
          log_now = true;
        }
      }
      if (log_now) {
        SPARK_LOG(WARN).With("peer", address).With("mechanism", mechanism).With("key", key_z85)
            << "refused a ZMQ client: " << text
            << " (add its public key to the allow-list if it should connect)";
      }
    }
    *reply = {version.empty() ? "1.0" : version, request_id, code, text, user_id, ""};
  }

  void Run() {
    while (true) {
      zmq_pollitem_t items[2] = {{socket.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, stop->fd(), ZMQ_POLLIN, 0}};
      if (zmq_poll(items, 2, -1) < 0) {
        if (zmq_errno() == EINTR) continue;
        break;  // ETERM: the context is going away
      }
      if (items[1].revents & ZMQ_POLLIN) break;
      if ((items[0].revents & ZMQ_POLLIN) == 0) continue;
      std::vector<zmq::message_t> request;
      std::optional<size_t> received;
      try {
        received =
            zmq::recv_multipart(socket, std::back_inserter(request), zmq::recv_flags::dontwait);
        if (!received.has_value()) continue;
        ZmqMessage reply;
        Handle(request, &reply);
        for (size_t i = 0; i < reply.size(); ++i) {
          socket.send(zmq::buffer(reply[i]),
                      i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        SPARK_LOG(ERROR) << "ZAP handler: " << e.what();
      }
    }
    // Unbinding is synchronous for inproc (closing is not), so a new authenticator can bind the
    // ZAP endpoint as soon as this one's destructor returns.
    try {
      socket.unbind(kZapEndpoint);
    } catch (const zmq::error_t&) {
      // ETERM: the context is going away anyway.
    }
    socket.close();
  }
};

ZapAuthenticator::ZapAuthenticator(std::shared_ptr<State> state) : state_(std::move(state)) {}

Result<std::unique_ptr<ZapAuthenticator>> ZapAuthenticator::Start(ZmqContext& context) {
  bool expected = false;
  if (!context.has_authenticator_.compare_exchange_strong(expected, true)) {
    return AlreadyExists("this ZMQ context already has a ZapAuthenticator");
  }
  auto state = std::make_shared<State>();
  state->context = &context;
  Status status = ZmqCall("binding the ZAP handler at inproc://zeromq.zap.01", [&] {
    state->socket = zmq::socket_t(context.raw(), zmq::socket_type::rep);
    state->socket.set(zmq::sockopt::linger, 0);
    state->socket.bind(kZapEndpoint);
  });
  Result<EventFd> stop = EventFd::Create();
  if (status.ok() && !stop.ok()) status = stop.status();
  if (!status.ok()) {
    context.has_authenticator_ = false;
    return status;
  }
  state->stop.emplace(std::move(stop).value());
  state->thread = std::thread([raw = state.get()] { raw->Run(); });
  return std::unique_ptr<ZapAuthenticator>(new ZapAuthenticator(std::move(state)));
}

ZapAuthenticator::~ZapAuthenticator() {
  SPARK_CHECK(state_->stop->Notify().ok()) << "cannot stop the ZAP handler thread";
  state_->thread.join();
  state_->context->has_authenticator_ = false;
}

void ZapAuthenticator::Allow(std::string_view public_key) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->allowed.emplace(public_key);
}

void ZapAuthenticator::Revoke(std::string_view public_key) {
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->allowed.find(public_key);
  if (it != state_->allowed.end()) state_->allowed.erase(it);
}

void ZapAuthenticator::SetAllowed(const std::vector<std::string>& public_keys) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->allowed = std::set<std::string, std::less<>>(public_keys.begin(), public_keys.end());
}

bool ZapAuthenticator::IsAllowed(std::string_view public_key) const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->allowed.find(public_key) != state_->allowed.end();
}

int64_t ZapAuthenticator::accepted() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->accepted;
}

int64_t ZapAuthenticator::rejected() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->rejected;
}

// ---------------------------------------------------------------------------------------------
// Poller

int Poller::AddSocket(ZmqSocket& socket, Handler on_readable) {
  const int id = next_id_++;
  items_.push_back(
      Item{id, socket.handle(), -1, std::make_shared<Handler>(std::move(on_readable))});
  return id;
}

int Poller::AddFd(int fd, Handler on_readable) {
  const int id = next_id_++;
  items_.push_back(Item{id, nullptr, fd, std::make_shared<Handler>(std::move(on_readable))});
  return id;
}

void Poller::Remove(int id) {
  // Marked now, erased after the current dispatch (a handler may be removing itself).
  for (Item& item : items_) {
    if (item.id == id) item.removed = true;
  }
}

size_t Poller::size() const {
  return static_cast<size_t>(
      std::count_if(items_.begin(), items_.end(), [](const Item& i) { return !i.removed; }));
}

Result<int> Poller::PollOnce(std::chrono::milliseconds timeout) {
  items_.erase(
      std::remove_if(items_.begin(), items_.end(), [](const Item& i) { return i.removed; }),
      items_.end());
  std::vector<zmq_pollitem_t> poll_items;
  std::vector<int> ids;
  poll_items.reserve(items_.size());
  for (const Item& item : items_) {
    poll_items.push_back(zmq_pollitem_t{item.socket, item.fd, ZMQ_POLLIN, 0});
    ids.push_back(item.id);
  }
  const long timeout_ms = timeout.count() < 0 ? -1 : static_cast<long>(timeout.count());
  const int n = zmq_poll(poll_items.data(), static_cast<int>(poll_items.size()), timeout_ms);
  if (n < 0) {
    if (zmq_errno() == EINTR) return 0;
    return ZmqError(zmq_errno(), "zmq_poll");
  }
  int ran = 0;
  for (size_t i = 0; i < poll_items.size() && n > 0; ++i) {
    if ((poll_items[i].revents & (ZMQ_POLLIN | ZMQ_POLLERR)) == 0) continue;
    std::shared_ptr<Handler> handler;
    for (const Item& item : items_) {
      if (item.id == ids[i] && !item.removed) handler = item.handler;
    }
    if (handler == nullptr) continue;  // removed by an earlier handler in this round
    (*handler)();
    ++ran;
  }
  items_.erase(
      std::remove_if(items_.begin(), items_.end(), [](const Item& i) { return i.removed; }),
      items_.end());
  return ran;
}

}  // namespace spark
