// ControllerKeyValueStore: the rendezvous KeyValueStore of a shard, served by spark-controller
// (docs/control-plane.md flow 3). Set sends RendezvousPublish{kv}; Get sends RendezvousLookup and
// waits for the RendezvousReply. Every key is scoped with the run's key prefix from the
// assignment (RendezvousEndpoint.key_prefix), so a new generation never sees an old one's keys.
//
// Get with timeout 0 asks for an immediate answer (sent as a 1 ms lookup).
// Errors of Get: DeadlineExceeded when the key did not appear in time (the controller's error
// text, which names the ranks that have not published, is kept); Unavailable when the controller
// did not answer at all.
//
// Thread safety: as KeyValueStore, thread-safe. Ownership: borrows the link.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/shard/controller_link.h"

namespace spark::shard {

struct RendezvousScope {
  std::string deployment;
  uint64_t generation = 0;
  uint32_t rank = 0;
  std::string key_prefix;  // prepended to every key
};

class ControllerKeyValueStore final : public engine::KeyValueStore {
 public:
  ControllerKeyValueStore(ControllerLink* link, RendezvousScope scope)
      : link_(link), scope_(std::move(scope)) {}

  Status Set(const std::string& key, const std::string& value) override;
  Result<std::string> Get(const std::string& key, int64_t timeout_ms) override;

  // The key as the controller sees it.
  std::string FullKey(const std::string& key) const { return scope_.key_prefix + key; }

 private:
  ControllerLink* link_;
  const RendezvousScope scope_;
};

}  // namespace spark::shard
