// LeaderLoop in process over a deterministic fake backend: the data plane delivers every token of
// steps whose logits stayed on the device (their chunks go out during the next step) exactly as of
// host steps, and stopping the loop sends the last device step's tokens before the final chunk.
#include "engine/shard/leader_loop.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/shard/envelope_stamper.h"
#include "tests/engine/runtime/device_logits_backend.h"
#include "tests/engine/runtime/fake_backend.h"
#include "tests/engine/shard/data_client.h"

namespace spark::shard {
namespace {

using engine::testing::DeviceLogitsBackend;
using engine::testing::DeviceRowsSampler;
using engine::testing::FakeBackend;
using std::chrono::milliseconds;
using testing::DataClient;

constexpr int64_t kVocab = 64;

spark::v1::GenerateRequest Request(const std::string& id, int first_token, uint32_t max_tokens) {
  spark::v1::GenerateRequest r;
  r.set_request_id(id);
  for (int i = 0; i < 9; ++i) r.add_prompt_token_ids((first_token + 5 * i) % kVocab);
  spark::v1::SamplingParams* p = r.mutable_sampling();
  p->set_temperature(0.0f);
  p->set_top_p(1.0f);
  p->set_repetition_penalty(1.0f);
  p->set_max_tokens(max_tokens);
  return r;
}

// One LeaderLoop on its own thread over `backend` (with `sampler` as the batch sampler when set).
class RunningLoop {
 public:
  RunningLoop(engine::Backend* backend, engine::BatchSampler* sampler) : stamper_("rank0", 1) {
    LeaderLoopOptions options;
    options.bind_endpoint = "tcp://127.0.0.1:*";
    options.scheduler.max_batch_tokens = 16;
    options.scheduler.batch_sampler = sampler;
    Result<std::unique_ptr<LeaderLoop>> loop =
        LeaderLoop::Create(backend, nullptr, nullptr, &stamper_, options);
    EXPECT_TRUE(loop.ok()) << loop.status().ToString();
    loop_ = std::move(loop).value();
    EXPECT_EQ(pipe(stop_.data()), 0);
    thread_ = std::thread([this] { result_ = loop_->Run(stop_[0]); });
  }
  ~RunningLoop() {
    Stop();
    close(stop_[0]);
    close(stop_[1]);
  }
  void Stop() {
    if (!thread_.joinable()) return;
    EXPECT_EQ(write(stop_[1], "x", 1), 1);
    thread_.join();
    EXPECT_TRUE(result_.ok()) << result_.ToString();
  }
  const std::string& endpoint() const { return loop_->bound_endpoint(); }

 private:
  EnvelopeStamper stamper_;
  std::unique_ptr<LeaderLoop> loop_;
  std::array<int, 2> stop_{-1, -1};
  std::thread thread_;
  Status result_ = Status::Ok();
};

struct Delivered {
  std::vector<int32_t> tokens;
  spark::v1::FinishReason finish = spark::v1::FINISH_REASON_NONE;
  uint32_t completion_tokens = 0;
};

Delivered Collect(DataClient& client, const std::string& id) {
  Delivered d;
  for (const spark::v1::TokenChunk& c : client.Collect(id, milliseconds(20000))) {
    for (int32_t t : c.token_ids()) d.tokens.push_back(t);
    d.finish = c.finish_reason();
    d.completion_tokens = c.usage().completion_tokens();
  }
  return d;
}

TEST(LeaderLoopTest, DeviceStepsDeliverEveryTokenAsHostSteps) {
  std::map<std::string, Delivered> want;
  for (bool device : {false, true}) {
    FakeBackend fake(kVocab, 4096);
    DeviceLogitsBackend backend(&fake);
    DeviceRowsSampler sampler(&backend);
    RunningLoop loop(&backend, device ? &sampler : nullptr);
    DataClient client(loop.endpoint());
    for (int i = 0; i < 3; ++i) client.Generate(Request("r" + std::to_string(i), 7 * i + 1, 6 + i));
    for (int i = 0; i < 3; ++i) {
      const std::string id = "r" + std::to_string(i);
      Delivered got = Collect(client, id);
      EXPECT_EQ(got.finish, spark::v1::FINISH_REASON_LENGTH) << id;
      EXPECT_EQ(got.tokens.size(), static_cast<size_t>(6 + i)) << id;
      EXPECT_EQ(got.completion_tokens, got.tokens.size()) << id;
      if (!device) {
        want[id] = got;
      } else {
        EXPECT_EQ(got.tokens, want[id].tokens) << id;
      }
    }
    loop.Stop();
    ASSERT_FALSE(backend.asked.empty());
    for (bool asked : backend.asked) EXPECT_EQ(asked, device);
    if (device) {
      EXPECT_EQ(sampler.host_rows, 0);
    }
  }
}

TEST(LeaderLoopTest, StoppingSendsTheLastDeviceStepsTokensFirst) {
  FakeBackend fake(kVocab, 1 << 20);
  DeviceLogitsBackend backend(&fake);
  DeviceRowsSampler sampler(&backend);
  RunningLoop loop(&backend, &sampler);
  DataClient client(loop.endpoint());
  client.Generate(Request("long", 3, 1000000));
  std::optional<spark::v1::TokenChunk> first = client.Next("long", milliseconds(20000));
  ASSERT_TRUE(first.has_value());
  loop.Stop();
  Delivered rest = Collect(client, "long");
  EXPECT_EQ(rest.finish, spark::v1::FINISH_REASON_CANCELLED);
  // Every token the engine produced reached the client: the count in the final usage.
  const size_t received = static_cast<size_t>(first->token_ids_size()) + rest.tokens.size();
  EXPECT_EQ(received, rest.completion_tokens);
  EXPECT_GT(received, 0u);
}

}  // namespace
}  // namespace spark::shard
