#include "tests/load/data_plane_load.h"

#include <map>
#include <memory>

#include "common/zmq.h"
#include "controller/agent_plane.h"
#include "controller/data_plane.h"

namespace spark::load {

Result<std::vector<StreamTrace>> DataPlaneLoad::Run(
    const std::function<std::optional<spark::v1::GenerateRequest>()>& next) {
  ZmqContext context;
  controller::EnvelopeSequencer sequencer;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<controller::DataPlaneClient> client,
                         controller::DataPlaneClient::Connect(context, options_.endpoint, nullptr,
                                                              "", sequencer, /*generation=*/0));
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
  Poller poller;
  poller.AddSocket(client->socket(), [&] { client->OnReadable(); });
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
