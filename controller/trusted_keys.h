// The controller's key directory as operators manage it (`sparkctl keys`), on the machine that
// holds it:
//
//   <dir>/controller.key, controller.pub   the controller's CURVE key pair
//   <dir>/trusted/<node>.pub               agents allowed to join; the controller re-reads this
//                                          folder every 10 s (AgentPlane::ReloadTrustedKeys)
//   <dir>/agent.key, agent.pub             this machine's agent key pair, when it runs spark-agent
//
// An agent whose public key is in no trusted/*.pub file is refused at the CURVE handshake (ZAP),
// so none of its frames reaches the reconciler. <node> is a label for operators; the allow-list is
// the set of keys.
//
//   SPARK_ASSIGN_OR_RETURN(TrustedKey k, TrustAgentKey("/etc/spark/keys", "n1", key, false));
//
// Every function fails with a message naming the file or key and the fix: InvalidArgument for a
// bad node name or key, AlreadyExists when the node or key is trusted already (without `force`),
// NotFound for a node that is not trusted. Files are written atomically (0644 public, 0600
// secret); a replaced secret key keeps its owner and group.
//
// Thread safety: functions over the file system; concurrent writers of one directory race as
// any two file writers do.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace spark::controller {

struct TrustedKey {
  std::string node;        // file name without .pub
  std::string public_key;  // Z85, 40 characters
  std::string path;
};

// Trusted keys sorted by node; unreadable files are returned with an empty public_key.
Result<std::vector<TrustedKey>> ListTrustedKeys(const std::string& dir);

// The public key in `<dir>/<file>` (controller.pub, agent.pub), NotFound when absent.
Result<std::string> ReadLocalPublicKey(const std::string& dir, const std::string& file);

// Trusts `key_or_file` (a Z85 key, or a file holding one such as an agent.pub) as `node`.
// Trusting the same key under the same name again is a no-op.
Result<TrustedKey> TrustAgentKey(const std::string& dir, const std::string& node,
                                 const std::string& key_or_file, bool force);

// Removes trusted/<node>.pub.
Status RevokeAgentKey(const std::string& dir, const std::string& node);

// Replaces <dir>/agent.key and agent.pub with a new pair; a trusted/*.pub file holding the old
// agent key is updated to the new one (a controller on the same machine keeps trusting it).
// Returns the new public key.
Result<std::string> RotateAgentKey(const std::string& dir);

// Replaces <dir>/controller.key and controller.pub with a new pair; returns the new public key.
// Every agent then needs the new controller.pub (and the controller a restart).
Result<std::string> RotateControllerKey(const std::string& dir);

}  // namespace spark::controller
