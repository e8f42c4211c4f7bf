#include "agent/keys.h"

#include <sys/stat.h>

#include <filesystem>
#include <system_error>

#include "common/os_error.h"

namespace spark::agent {
namespace {

std::string HowToCreate(const std::string& dir) {
  return "Create the agent's key pair with `spark-agent keygen --keys " + dir + "`, copy " + dir +
         "/" + kAgentPublicKeyFile +
         " into the controller's trusted keys (<controller keys>/trusted/<node>.pub) and the "
         "controller's controller.pub into " +
         dir + "/, or pass --insecure on a trusted network (then the whole cluster must).";
}

}  // namespace

Result<AgentKeys> LoadAgentKeys(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path secret = fs::path(dir) / kAgentSecretKeyFile;
  const fs::path controller = fs::path(dir) / kControllerPublicKeyFile;
  std::error_code ec;
  if (!fs::exists(secret, ec)) {
    return NotFound("no CURVE keys: " + secret.string() + " does not exist. " + HowToCreate(dir));
  }
  AgentKeys keys;
  Result<CurveKeyPair> own = ReadCurveSecretKeyFile(secret);
  if (!own.ok()) {
    return Status(own.status().code(), "cannot use the agent key " + secret.string() + ": " +
                                           own.status().message() + ". Fix the file (chmod 600 " +
                                           secret.string() +
                                           ") or create a new pair: " + HowToCreate(dir));
  }
  keys.own = *own;
  if (!fs::exists(controller, ec)) {
    return NotFound("no controller public key: " + controller.string() +
                    " does not exist. Copy the controller's controller.pub there (it is in the "
                    "controller's key directory, /etc/spark/keys by default), or pass --insecure.");
  }
  Result<std::string> controller_key = ReadCurvePublicKeyFile(controller);
  if (!controller_key.ok()) {
    return Status(controller_key.status().code(),
                  "cannot use the controller key " + controller.string() + ": " +
                      controller_key.status().message() +
                      ". Copy the controller's controller.pub there again.");
  }
  keys.controller_public = *controller_key;
  return keys;
}

Result<std::string> GenerateAgentKeys(const std::string& dir, bool force) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path secret = fs::path(dir) / kAgentSecretKeyFile;
  if (fs::exists(secret, ec) && !force) {
    return AlreadyExists(secret.string() +
                         " already exists; pass --force to replace the key pair (the controller "
                         "must then trust the new agent.pub)");
  }
  if (!fs::exists(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) return OsError(ec.value(), "creating the key directory " + dir);
    if (::chmod(dir.c_str(), 0700) != 0) return OsError(errno, "chmod 0700 " + dir);
  }
  SPARK_ASSIGN_OR_RETURN(CurveKeyPair keys, GenerateCurveKeyPair());
  SPARK_RETURN_IF_ERROR(WriteCurveSecretKeyFile(secret, keys));
  SPARK_RETURN_IF_ERROR(
      WriteCurvePublicKeyFile(fs::path(dir) / kAgentPublicKeyFile, keys.public_key));
  return keys.public_key;
}

std::string KeygenInstructions(const std::string& dir, const std::string& public_key) {
  return "wrote " + dir + "/" + kAgentSecretKeyFile + " (secret, mode 0600) and " + dir + "/" +
         kAgentPublicKeyFile + " (public key " + public_key + ").\nNext: copy " + dir + "/" +
         kAgentPublicKeyFile +
         " to the controller as <controller keys>/trusted/<node>.pub, and the controller's "
         "controller.pub to " +
         dir + "/" + kControllerPublicKeyFile + ".\n";
}

}  // namespace spark::agent
