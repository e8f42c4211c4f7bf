#include "tests/load/data_plane_load.h"

#include <map>
#include <memory>

#include "common/zmq.h"
#include "controller/agent_plane.h"
#include "controller/data_plane.h"

namespace spark::load {

struct DataPlaneLoad::Connection {
  ZmqContext context;
  controller::EnvelopeSequencer sequencer;
  std::unique_ptr<controller::DataPlaneClient> client;
  Poller poller;
};

DataPlaneLoad::DataPlaneLoad(DataPlaneLoadOptions options) : options_(std::move(options)) {}
DataPlaneLoad::~DataPlaneLoad() = default;

Status DataPlaneLoad::Connect() {
  auto connection = std::make_unique<Connection>();
  SPARK_ASSIGN_OR_RETURN(connection->client, controller::DataPlaneClient::Connect(
                                                 connection->context, options_.endpoint, nullptr,
                                                 "", connection->sequencer, /*generation=*/0));
  controller::DataPlaneClient* client = connection->client.get();
  connection->poller.AddSocket(client->socket(), [client] { client->OnReadable(); });
  // An untimed request: the connection is up once it came back.
  spark::v1::GenerateRequest warm;
  warm.set_request_id("serve-bench-warm-up-" + std::to_string(connection->sequencer.incarnation()));
  warm.add_prompt_token_ids(10);
  warm.mutable_sampling()->set_top_p(1);
  warm.mutable_sampling()->set_repetition_penalty(1);
  warm.mutable_sampling()->set_max_tokens(1);
  Status warm_status = Unavailable("no answer");
  bool warm_done = false;
  SPARK_RETURN_IF_ERROR(client->Send(warm, [&](Result<spark::v1::TokenChunk> chunk) {
    if (!chunk.ok()) {
      warm_status = chunk.status();
    } else if (!controller::IsFinalChunk(*chunk)) {
      return;
    } else if (chunk->finish_reason() == spark::v1::FINISH_REASON_ERROR) {
      warm_status = Internal(chunk->error_message());
    } else {
      warm_status = Status::Ok();
    }
    warm_done = true;
  }));
  const Clock::time_point deadline = Clock::now() + options_.idle_timeout;
  while (!warm_done && Clock::now() < deadline) {
    SPARK_RETURN_IF_ERROR(connection->poller.PollOnce(std::chrono::milliseconds(100)).status());
  }
  if (!warm_done) {
    return DeadlineExceeded("the data plane at " + options_.endpoint + " did not answer within " +
                            std::to_string(options_.idle_timeout.count()) +
                            " ms; is it the rank-0 endpoint of a ready, insecure cluster?");
  }
  SPARK_RETURN_IF_ERROR(warm_status);
  connection_ = std::move(connection);
  return Status::Ok();
}

Result<std::vector<StreamTrace>> DataPlaneLoad::Run(
    const std::function<std::optional<spark::v1::GenerateRequest>()>& next) {
  if (!connection_) SPARK_RETURN_IF_ERROR(Connect());
  controller::DataPlaneClient* client = connection_->client.get();
  Poller& poller = connection_->poller;
  if (options_.on_ready) options_.on_ready();

  std::vector<StreamTrace> traces;
  std::map<std::string, StreamTrace> in_flight;
  bool source_dry = false;

  // Sends the next request; false when the source ran dry.
  std::function<bool()> launch = [&]() -> bool {
    if (source_dry) return false;
    std::optional<spark::v1::GenerateRequest> request = next();
    if (!request) {
      source_dry = true;
      return false;
    }
    const std::string id = request->request_id();
    in_flight[id].sent = Clock::now();
    Status sent = client->Send(*request, [&, id](Result<spark::v1::TokenChunk> chunk) {
      auto it = in_flight.find(id);
      if (it == in_flight.end()) return;
      StreamTrace& trace = it->second;
      if (!chunk.ok()) {
        trace.error = chunk.status().ToString();
      } else {
        const Clock::time_point now = Clock::now();
        for (int i = 0; i < chunk->token_ids_size(); ++i) trace.token_times.push_back(now);
        if (!controller::IsFinalChunk(*chunk)) return;
        trace.usage_completion_tokens = chunk->usage().completion_tokens();
        if (chunk->finish_reason() == spark::v1::FINISH_REASON_ERROR ||
            chunk->finish_reason() == spark::v1::FINISH_REASON_CANCELLED) {
          trace.error = "finished with " + spark::v1::FinishReason_Name(chunk->finish_reason()) +
                        ": " + chunk->error_message();
        }
      }
      traces.push_back(std::move(trace));
      in_flight.erase(it);
    });
    if (!sent.ok()) {
      in_flight[id].error = sent.ToString();
      traces.push_back(std::move(in_flight[id]));
      in_flight.erase(id);
    }
    return true;
  };

  for (int i = 0; i < options_.clients && launch(); ++i) {
  }
  Clock::time_point last_progress = Clock::now();
  size_t seen = 0;
  while (!in_flight.empty()) {
    SPARK_ASSIGN_OR_RETURN(int ran, poller.PollOnce(std::chrono::milliseconds(100)));
    (void)ran;
    // Keep `clients` in flight: one new request for every finished one.
    while (static_cast<int>(in_flight.size()) < options_.clients && launch()) {
    }
    if (traces.size() != seen) {
      seen = traces.size();
      last_progress = Clock::now();
    } else if (Clock::now() - last_progress > options_.idle_timeout) {
      client->FailAll(DeadlineExceeded("no chunk from the data plane at " + options_.endpoint +
                                       " for " + std::to_string(options_.idle_timeout.count()) +
                                       " ms"));
    }
  }
  return traces;
}

}  // namespace spark::load
