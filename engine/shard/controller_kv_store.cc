#include "engine/shard/controller_kv_store.h"

#include <algorithm>
#include <limits>

namespace spark::shard {

Status ControllerKeyValueStore::Set(const std::string& key, const std::string& value) {
  spark::v1::Envelope envelope;
  spark::v1::RendezvousPublish* publish = envelope.mutable_rendezvous_publish();
  publish->set_deployment(scope_.deployment);
  publish->set_generation(scope_.generation);
  publish->set_rank(scope_.rank);
  publish->mutable_kv()->set_key(FullKey(key));
  publish->mutable_kv()->set_value(value);
  Status sent = link_->Send(std::move(envelope));
  if (!sent.ok()) return sent.WithContext("publishing rendezvous key '" + FullKey(key) + "'");
  return Status::Ok();
}

Result<std::string> ControllerKeyValueStore::Get(const std::string& key, int64_t timeout_ms) {
  spark::v1::RendezvousLookup lookup;
  lookup.set_deployment(scope_.deployment);
  lookup.set_generation(scope_.generation);
  lookup.set_rank(scope_.rank);
  lookup.set_key(FullKey(key));
  // "Answer now" goes out as 1 ms: a broker may read timeout_ms 0 as "use your default wait".
  lookup.set_timeout_ms(static_cast<uint32_t>(
      std::clamp<int64_t>(timeout_ms, 1, std::numeric_limits<uint32_t>::max())));
  SPARK_ASSIGN_OR_RETURN(spark::v1::RendezvousReply reply, link_->Lookup(lookup));
  if (reply.found()) return reply.value();
  if (!reply.error().empty()) {
    return DeadlineExceeded("rendezvous key '" + lookup.key() + "': " + reply.error());
  }
  return DeadlineExceeded("rendezvous key '" + lookup.key() + "' was not published within " +
                          std::to_string(timeout_ms) +
                          " ms; the rank that publishes it has not started or failed");
}

}  // namespace spark::shard
