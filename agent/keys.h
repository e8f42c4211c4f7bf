// The agent's CURVE keys: its own key pair and the controller's public key, read from a key
// directory (`<dir>/agent.key` secret, mode 0600; `<dir>/agent.pub`; `<dir>/controller.pub`), and
// `spark-agent keygen`, which writes a new agent key pair.
//
// LoadAgentKeys fails with a message that names the missing or bad file and the commands that
// create the keys, so that an agent without keys (and without --insecure) refuses to start with a
// fix in hand.
//
// Thread safety: pure functions over the file system.
#pragma once

#include <string>

#include "common/status.h"
#include "common/zmq.h"

namespace spark::agent {

inline constexpr char kAgentSecretKeyFile[] = "agent.key";
inline constexpr char kAgentPublicKeyFile[] = "agent.pub";
inline constexpr char kControllerPublicKeyFile[] = "controller.pub";

struct AgentKeys {
  CurveKeyPair own;               // agent.key
  std::string controller_public;  // controller.pub (Z85)
};

// Reads the keys from `dir`. NotFound / PermissionDenied / DataLoss name the file and the fix.
Result<AgentKeys> LoadAgentKeys(const std::string& dir);

// Writes a fresh key pair to `<dir>/agent.key` (0600) and `<dir>/agent.pub` (0644), creating
// `dir` (0700) if needed. AlreadyExists when agent.key exists and `force` is false. Returns the
// public key.
Result<std::string> GenerateAgentKeys(const std::string& dir, bool force);

// The operator instructions printed after keygen (where to copy which file).
std::string KeygenInstructions(const std::string& dir, const std::string& public_key);

}  // namespace spark::agent
