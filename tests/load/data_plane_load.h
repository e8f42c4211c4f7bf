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
#include <memory>
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
  // Called once the connection is up (after one untimed 1-token request came back), before the
  // first timed request is sent; lets a caller start a concurrent load at the same moment.
  std::function<void()> on_ready;
};

class DataPlaneLoad {
 public:
  explicit DataPlaneLoad(DataPlaneLoadOptions options);
  ~DataPlaneLoad();
  DataPlaneLoad(const DataPlaneLoad&) = delete;
  DataPlaneLoad& operator=(const DataPlaneLoad&) = delete;

  // Keeps `clients` requests in flight until `next` runs dry; one trace per request. Request ids
  // must be unique. Connects on the first call (and keeps the connection for later calls); an
  // error only when the data plane cannot be reached at all.
  Result<std::vector<StreamTrace>> Run(
      const std::function<std::optional<spark::v1::GenerateRequest>()>& next);

 private:
  struct Connection;
  Status Connect();

  DataPlaneLoadOptions options_;
  std::unique_ptr<Connection> connection_;
};

}  // namespace spark::load
