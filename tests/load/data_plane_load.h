// DataPlaneLoad: concurrent generation requests sent straight to a rank-0 shard's data plane (a
// ZMQ DEALER speaking the controller's protocol: GenerateRequest in, TokenChunk stream out),
// bypassing spark-controller. Used to tell the controller's own latency apart from the engine's:
// the same requests through HTTP and directly, at the same time. Insecure data planes only
// (clusters started with --insecure).
//
// Thread safety: Run is called by one thread; `next` runs on that thread.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "spark.pb.h"
#include "tests/load/stream_trace.h"

namespace spark::load {

struct DataPlaneLoadOptions {
  std::string endpoint;                             // tcp://HOST:PORT of the rank-0 data plane
  int clients = 1;                                  // requests in flight at once
  std::chrono::milliseconds idle_timeout{120'000};  // longest wait for the next chunk
};

class DataPlaneLoad {
 public:
  explicit DataPlaneLoad(DataPlaneLoadOptions options) : options_(std::move(options)) {}

  // Keeps `clients` requests in flight until `next` runs dry; one trace per request. Request ids
  // must be unique. An error only when the data plane cannot be reached at all.
  Result<std::vector<StreamTrace>> Run(
      const std::function<std::optional<spark::v1::GenerateRequest>()>& next);

 private:
  DataPlaneLoadOptions options_;
};

}  // namespace spark::load
