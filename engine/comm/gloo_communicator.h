// GlooCommunicator: the Communicator of the CPU backend, over Gloo's TCP transport.
//
// Create() joins a group of `world` ranks: every rank binds a TCP device on `GlooOptions::host`,
// publishes its address in a KeyValueStore under `prefix`, and connects a full mesh to the others.
// A rank that cannot reach every peer before `connect_timeout_ms` fails with DeadlineExceeded
// naming the ranks that never registered. Collectives that stall past `op_timeout_ms` (a peer died
// or desynchronised) return DeadlineExceeded/Unavailable naming the rank and the operation; after
// such an error the group is broken and must be recreated (with a new prefix).
//
// Also here: the two KeyValueStores for ranks of one machine:
//   LocalKeyValueStore - in memory, for ranks that are threads of one process;
//   FileKeyValueStore  - a directory, one file per key written by atomic rename, for ranks that
//                        are processes of one machine.
//
// Thread safety: a GlooCommunicator belongs to one thread (its rank's engine loop). The stores
// are thread-safe. Ownership: Create() does not keep `store`; it is used during Create() only.
// No exception escapes this API (Gloo's are caught and turned into Status). Create() sets SIGPIPE
// to SIG_IGN when it still has the default action, so that a dead peer fails a collective instead
// of killing the process.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "engine/comm/communicator.h"

namespace spark::engine {

struct GlooOptions {
  // Interface name ("eth0") or hostname/IP address to bind the TCP device to.
  std::string host = "127.0.0.1";
  // Time allowed for every rank to register and for the full mesh to connect.
  int64_t connect_timeout_ms = 30000;
  // Time allowed for one collective before it fails with DeadlineExceeded.
  int64_t op_timeout_ms = 60000;
  // Key prefix in the store (e.g. the run generation), so a stale group never mixes with a new one.
  std::string prefix = "spark";
};

class GlooCommunicator final : public Communicator {
 public:
  // Joins the group; blocks until all `world` ranks are connected or the deadline passes.
  // Errors: InvalidArgument (bad rank/world/host), DeadlineExceeded (missing ranks, named),
  // Unavailable (peers registered but unreachable).
  static Result<std::unique_ptr<GlooCommunicator>> Create(int rank, int world, KeyValueStore* store,
                                                          const GlooOptions& options);
  ~GlooCommunicator() override;
  GlooCommunicator(const GlooCommunicator&) = delete;
  GlooCommunicator& operator=(const GlooCommunicator&) = delete;

  int rank() const override;
  int world_size() const override;
  Status AllReduceSum(float* data, size_t count) override;
  Status AllGather(const float* in, size_t count, float* out) override;
  Status Broadcast(void* data, size_t bytes, int root) override;
  Status Barrier() override;

 private:
  struct Impl;
  explicit GlooCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// In-process store for ranks that are threads of one process.
class LocalKeyValueStore final : public KeyValueStore {
 public:
  Status Set(const std::string& key, const std::string& value) override;
  Result<std::string> Get(const std::string& key, int64_t timeout_ms) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;  // guarded by mu_
};

// Directory-backed store for ranks that are processes of one machine. Set writes a temporary file
// and renames it into place (readers never see a partial value); Get polls until the file exists.
// Keys may contain any characters; they are escaped into file names.
class FileKeyValueStore final : public KeyValueStore {
 public:
  // Creates `dir` if missing. Errors: the directory cannot be created or is not writable.
  static Result<std::unique_ptr<FileKeyValueStore>> Open(const std::string& dir);

  Status Set(const std::string& key, const std::string& value) override;
  Result<std::string> Get(const std::string& key, int64_t timeout_ms) override;
  const std::string& dir() const { return dir_; }

 private:
  explicit FileKeyValueStore(std::string dir) : dir_(std::move(dir)) {}
  std::string PathFor(const std::string& key) const;
  std::string dir_;
};

}  // namespace spark::engine
