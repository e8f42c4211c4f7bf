#include "controller/trusted_keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "common/os_error.h"
#include "common/zmq.h"

namespace spark::controller {
namespace {

namespace fs = std::filesystem;

Status CheckNodeName(const std::string& node) {
  const bool ok = !node.empty() && node.size() <= 128 && node.front() != '.' &&
                  std::all_of(node.begin(), node.end(), [](char c) {
                    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
                  });
  if (ok) return Status::Ok();
  return InvalidArgument("node name \"" + node +
                         "\" must be 1-128 letters, digits, '.', '-' or '_' (not starting with "
                         "'.'), e.g. the node's host name");
}

fs::path TrustedDir(const std::string& dir) { return fs::path(dir) / "trusted"; }

// Writes a new key pair to <dir>/<name>.key and .pub, keeping the owner and group of the old
// secret key file (the daemons run as their own user; sparkctl usually as root).
Result<std::string> RotatePair(const std::string& dir, const std::string& name) {
  const fs::path secret = fs::path(dir) / (name + ".key");
  struct stat old {};
  if (::stat(secret.c_str(), &old) != 0) {
    return NotFound(secret.string() + " does not exist: there is no " + name +
                    " key pair to rotate here (wrong --keys directory?)");
  }
  SPARK_ASSIGN_OR_RETURN(CurveKeyPair keys, GenerateCurveKeyPair());
  SPARK_RETURN_IF_ERROR(WriteCurveSecretKeyFile(secret, keys));
  if (::chown(secret.c_str(), old.st_uid, old.st_gid) != 0) {
    return OsError(errno, "chown of the new " + secret.string());
  }
  SPARK_RETURN_IF_ERROR(WriteCurvePublicKeyFile(fs::path(dir) / (name + ".pub"), keys.public_key));
  return keys.public_key;
}

}  // namespace

Result<std::vector<TrustedKey>> ListTrustedKeys(const std::string& dir) {
  std::vector<TrustedKey> keys;
  std::error_code ec;
  const fs::path trusted = TrustedDir(dir);
  if (!fs::exists(trusted, ec)) return keys;
  for (const auto& entry : fs::directory_iterator(trusted, ec)) {
    if (entry.path().extension() != ".pub") continue;
    TrustedKey key;
    key.node = entry.path().stem().string();
    key.path = entry.path().string();
    Result<std::string> text = ReadCurvePublicKeyFile(entry.path());
    if (text.ok()) key.public_key = *text;
    keys.push_back(std::move(key));
  }
  if (ec) return OsError(ec.value(), "reading " + trusted.string());
  std::sort(keys.begin(), keys.end(),
            [](const TrustedKey& a, const TrustedKey& b) { return a.node < b.node; });
  return keys;
}

Result<std::string> ReadLocalPublicKey(const std::string& dir, const std::string& file) {
  const fs::path path = fs::path(dir) / file;
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound(path.string() + " does not exist");
  return ReadCurvePublicKeyFile(path);
}

Result<TrustedKey> TrustAgentKey(const std::string& dir, const std::string& node,
                                 const std::string& key_or_file, bool force) {
  SPARK_RETURN_IF_ERROR(CheckNodeName(node));
  std::string key = key_or_file;
  if (!IsValidCurveKey(key)) {
    std::error_code ec;
    if (!fs::is_regular_file(key_or_file, ec)) {
      return InvalidArgument("\"" + key_or_file +
                             "\" is neither a CURVE public key (40 Z85 characters, as printed by "
                             "`sparkctl keys show` or the spark-agent package) nor a readable "
                             "key file such as the node's /etc/spark/keys/agent.pub");
    }
    SPARK_ASSIGN_OR_RETURN(key, ReadCurvePublicKeyFile(key_or_file));
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return NotFound("key directory " + dir +
                    " does not exist; create the controller's keys with `spark-controller keygen "
                    "--keys " +
                    dir + "` (the spark-controller package does this), or pass --keys DIR");
  }
  SPARK_ASSIGN_OR_RETURN(std::vector<TrustedKey> trusted, ListTrustedKeys(dir));
  for (const TrustedKey& t : trusted) {
    if (t.node == node && t.public_key == key) return t;  // already trusted as asked
    if (!force && t.node == node) {
      return AlreadyExists("node " + node + " is trusted with another key (" + t.public_key +
                           " in " + t.path + "); pass --force to replace it");
    }
    if (!force && t.public_key == key) {
      return AlreadyExists("this key is trusted already as node " + t.node + " (" + t.path +
                           "); revoke it first or pass --force to trust it under both names");
    }
  }
  fs::create_directories(TrustedDir(dir), ec);
  if (ec) return OsError(ec.value(), "creating " + TrustedDir(dir).string());
  TrustedKey result{node, key, (TrustedDir(dir) / (node + ".pub")).string()};
  SPARK_RETURN_IF_ERROR(WriteCurvePublicKeyFile(result.path, key));
  return result;
}

Status RevokeAgentKey(const std::string& dir, const std::string& node) {
  SPARK_RETURN_IF_ERROR(CheckNodeName(node));
  const fs::path path = TrustedDir(dir) / (node + ".pub");
  std::error_code ec;
  if (!fs::remove(path, ec)) {
    if (ec) return OsError(ec.value(), "removing " + path.string());
    return NotFound("node " + node + " is not trusted (no " + path.string() +
                    "); `sparkctl keys list` shows the trusted nodes");
  }
  return Status::Ok();
}

Result<std::string> RotateAgentKey(const std::string& dir) {
  Result<std::string> old_key = ReadLocalPublicKey(dir, "agent.pub");
  SPARK_ASSIGN_OR_RETURN(std::string new_key, RotatePair(dir, "agent"));
  if (old_key.ok()) {
    SPARK_ASSIGN_OR_RETURN(std::vector<TrustedKey> trusted, ListTrustedKeys(dir));
    for (const TrustedKey& t : trusted) {
      if (t.public_key == *old_key) SPARK_RETURN_IF_ERROR(WriteCurvePublicKeyFile(t.path, new_key));
    }
  }
  return new_key;
}

Result<std::string> RotateControllerKey(const std::string& dir) {
  return RotatePair(dir, "controller");
}

}  // namespace spark::controller
