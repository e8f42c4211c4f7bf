#include "controller/agent_plane.h"

#include <charconv>
#include <filesystem>
#include <random>

#include "common/log.h"
#include "proto/framing.h"

namespace spark::controller {

EnvelopeSequencer::EnvelopeSequencer() {
  std::random_device device;
  incarnation_ = (static_cast<uint64_t>(device()) << 32) ^ device();
  if (incarnation_ == 0) incarnation_ = 1;
}

void EnvelopeSequencer::Stamp(spark::v1::Envelope& envelope, uint64_t generation) {
  envelope.set_sender_id("controller");
  envelope.set_sender_incarnation(incarnation_);
  envelope.set_sequence(sequence_.fetch_add(1) + 1);
  envelope.set_generation(generation);
}

namespace {

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return parts;
}

template <typename T>
bool ParseNumber(const std::string& text, T& value) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

}  // namespace

Result<PeerId> ParsePeerId(const std::string& routing_id) {
  std::vector<std::string> parts = Split(routing_id, '/');
  PeerId peer;
  if (parts.size() == 2 && parts[0] == "agent" && !parts[1].empty()) {
    peer.kind = PeerId::Kind::kAgent;
    peer.node = parts[1];
    return peer;
  }
  if (parts.size() == 4 && parts[0] == "shard" && !parts[1].empty() &&
      ParseNumber(parts[2], peer.generation) && ParseNumber(parts[3], peer.rank)) {
    peer.kind = PeerId::Kind::kShard;
    peer.deployment = parts[1];
    return peer;
  }
  return InvalidArgument("routing id \"" + routing_id +
                         "\" is neither agent/<node> nor shard/<deployment>/<generation>/<rank>");
}

std::string ShardRoutingId(const std::string& deployment, uint64_t generation, uint32_t rank) {
  return "shard/" + deployment + "/" + std::to_string(generation) + "/" + std::to_string(rank);
}

Result<CurveKeyPair> LoadControllerKeys(const std::string& keys_dir) {
  const std::filesystem::path path = std::filesystem::path(keys_dir) / "controller.key";
  Result<CurveKeyPair> keys = ReadCurveSecretKeyFile(path);
  if (!keys.ok()) {
    return Status(keys.status().code(),
                  "cannot read the controller's CURVE key " + path.string() + ": " +
                      keys.status().message() +
                      ". Create it with `spark-controller keygen --keys " + keys_dir +
                      "`, put each agent's agent.pub into " + keys_dir +
                      "/trusted/<node>.pub, or run the whole cluster with --insecure");
  }
  return keys;
}

std::vector<std::string> LoadTrustedKeys(const std::string& keys_dir) {
  std::vector<std::string> keys;
  const std::filesystem::path dir = std::filesystem::path(keys_dir) / "trusted";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".pub") continue;
    Result<std::string> key = ReadCurvePublicKeyFile(entry.path());
    if (!key.ok()) {
      SPARK_LOG(WARN).With("file", entry.path().string()).With("error", key.status())
          << "skipping an unreadable trusted key";
      continue;
    }
    keys.push_back(*key);
  }
  return keys;
}

Result<std::unique_ptr<AgentPlane>> AgentPlane::Create(ZmqContext& context,
                                                       const AgentPlaneOptions& options,
                                                       EnvelopeSequencer& sequencer) {
  std::unique_ptr<ZapAuthenticator> zap;
  std::optional<CurveKeyPair> keys;
  if (!options.insecure) {
    SPARK_ASSIGN_OR_RETURN(CurveKeyPair pair, LoadControllerKeys(options.keys_dir));
    keys = pair;
    SPARK_ASSIGN_OR_RETURN(zap, ZapAuthenticator::Start(context));
    std::vector<std::string> trusted = LoadTrustedKeys(options.keys_dir);
    if (trusted.empty()) {
      SPARK_LOG(WARN).With("dir", options.keys_dir + "/trusted")
          << "no trusted agent keys: no agent can connect until their agent.pub files are "
             "copied there";
    }
    zap->SetAllowed(trusted);
  }
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket, ZmqSocket::Create(context, ZmqSocketType::kRouter));
  SPARK_RETURN_IF_ERROR(socket.SetMaxMessageBytes(proto::kMaxBodyBytes + 1024));
  SPARK_RETURN_IF_ERROR(socket.SetHeartbeat(options.zmtp_heartbeat, options.zmtp_heartbeat * 3));
  SPARK_RETURN_IF_ERROR(socket.SetSendHighWaterMark(100000));
  SPARK_RETURN_IF_ERROR(socket.SetRecvHighWaterMark(100000));
  try {
    // A restarted agent reconnects with the same routing id while its old connection may still
    // look alive (a partition): the new connection takes the id over.
    socket.raw().set(zmq::sockopt::router_handover, 1);
  } catch (const zmq::error_t& e) {
    return Internal(std::string("cannot set ZMQ_ROUTER_HANDOVER: ") + e.what());
  }
  if (keys) SPARK_RETURN_IF_ERROR(socket.SetCurveServer(*keys));
  if (Status st = socket.Bind(options.listen); !st.ok()) {
    return Status(st.code(), "cannot listen for agents on " + options.listen + ": " + st.message() +
                                 "; pick another --agent-listen address");
  }
  SPARK_ASSIGN_OR_RETURN(std::string endpoint, socket.LastEndpoint());
  std::unique_ptr<AgentPlane> plane(new AgentPlane(std::move(socket), sequencer));
  plane->zap_ = std::move(zap);
  plane->keys_ = keys;
  plane->keys_dir_ = options.keys_dir;
  plane->endpoint_ = endpoint;
  return plane;
}

Status AgentPlane::Send(const std::string& routing_id, spark::v1::Envelope envelope,
                        uint64_t generation) {
  sequencer_.Stamp(envelope, generation);
  return socket_.Send({routing_id, proto::EncodeEnvelope(envelope)});
}

std::optional<AgentPlane::Inbound> AgentPlane::TryReceive() {
  while (true) {
    Result<std::optional<ZmqMessage>> message = socket_.TryRecv();
    if (!message.ok()) {
      SPARK_LOG(WARN).With("error", message.status()) << "agent plane receive failed";
      return std::nullopt;
    }
    if (!message->has_value()) return std::nullopt;
    ZmqMessage& frames = **message;
    if (frames.size() != 2) {
      ++dropped_;
      SPARK_LOG(WARN).With("frames", frames.size())
          << "dropped an agent-plane message that is not one envelope";
      continue;
    }
    Result<PeerId> peer = ParsePeerId(frames[0]);
    if (!peer.ok()) {
      ++dropped_;
      SPARK_LOG(WARN).With("error", peer.status()) << "dropped a message from an unknown peer";
      continue;
    }
    Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frames[1]);
    if (!envelope.ok()) {
      ++dropped_;
      SPARK_LOG(WARN).With("peer", frames[0]).With("error", envelope.status())
          << "dropped an undecodable frame";
      continue;
    }
    if (envelope->sender_id() != frames[0]) {
      ++dropped_;
      SPARK_LOG(WARN).With("peer", frames[0]).With("sender_id", envelope->sender_id())
          << "dropped a message whose sender_id does not match its routing id";
      continue;
    }
    Inbound inbound;
    inbound.routing_id = std::move(frames[0]);
    inbound.peer = std::move(*peer);
    inbound.peer_key = socket_.last_peer_user_id();
    inbound.envelope = std::move(*envelope);
    return inbound;
  }
}

void AgentPlane::ReloadTrustedKeys() {
  if (zap_ == nullptr) return;
  zap_->SetAllowed(LoadTrustedKeys(keys_dir_));
}

}  // namespace spark::controller
