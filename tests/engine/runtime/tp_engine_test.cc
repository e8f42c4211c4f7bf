#include "engine/runtime/tp_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <thread>
#include <vector>

#include "engine/comm/gloo_communicator.h"
#include "engine/runtime/scheduler.h"
#include "tests/engine/runtime/fake_backend.h"

namespace spark::engine {
namespace {

using testing::FakeBackend;
using testing::FakeGreedy;

bool SameBatch(const ForwardBatch& a, const ForwardBatch& b) {
  if (a.chunks.size() != b.chunks.size()) return false;
  for (size_t i = 0; i < a.chunks.size(); ++i) {
    const SequenceChunk& x = a.chunks[i];
    const SequenceChunk& y = b.chunks[i];
    if (x.seq_id != y.seq_id || x.start_pos != y.start_pos || x.tokens != y.tokens ||
        x.all_logits != y.all_logits) {
      return false;
    }
  }
  return true;
}

TEST(StepMessageTest, RoundTrips) {
  StepMessage m;
  m.op = StepOp::kForward;
  m.releases = {7, 1ull << 40};
  SequenceChunk a;
  a.seq_id = 3;
  a.start_pos = 12;
  a.tokens = {1, 2, 151000};
  SequenceChunk b;
  b.seq_id = 9;
  b.start_pos = 0;
  b.tokens = {5};
  b.all_logits = true;
  m.batch.chunks = {a, b};
  std::vector<uint8_t> bytes = EncodeStepMessage(m);
  // 16 header + 16 releases + (8+8+4+4+12) + (8+8+4+4+4).
  EXPECT_EQ(bytes.size(), 16u + 16u + 36u + 28u);
  auto decoded = DecodeStepMessage(bytes.data(), bytes.size());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->op, StepOp::kForward);
  EXPECT_EQ(decoded->releases, m.releases);
  EXPECT_TRUE(SameBatch(decoded->batch, m.batch));

  StepMessage stop;
  stop.op = StepOp::kStop;
  bytes = EncodeStepMessage(stop);
  decoded = DecodeStepMessage(bytes.data(), bytes.size());
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->op, StepOp::kStop);
  EXPECT_TRUE(decoded->batch.chunks.empty());
}

TEST(StepMessageTest, MalformedBytesAreDataLoss) {
  StepMessage m;
  SequenceChunk a;
  a.seq_id = 3;
  a.tokens = {1, 2, 3};
  m.batch.chunks = {a};
  std::vector<uint8_t> bytes = EncodeStepMessage(m);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_EQ(DecodeStepMessage(bytes.data(), cut).status().code(), StatusCode::kDataLoss)
        << "cut at " << cut;
  }
  std::vector<uint8_t> bad = bytes;
  bad[0] ^= 1;
  EXPECT_EQ(DecodeStepMessage(bad.data(), bad.size()).status().code(), StatusCode::kDataLoss);
  bad = bytes;
  bad[4] = 9;  // op
  EXPECT_EQ(DecodeStepMessage(bad.data(), bad.size()).status().code(), StatusCode::kDataLoss);
  bad = bytes;
  bad.push_back(0);
  EXPECT_EQ(DecodeStepMessage(bad.data(), bad.size()).status().code(), StatusCode::kDataLoss);
}

// Three ranks as threads, each with its own fake backend: rank 0 runs the scheduler through a
// TpLeaderBackend (with a tiny cache, so preemption releases happen), workers mirror every batch.
TEST(TpEngineTest, WorkersRunTheLeadersBatchesAndReleases) {
  constexpr int kWorld = 3;
  constexpr int64_t kVocab = 50;
  LocalKeyValueStore store;
  GlooOptions gloo;
  gloo.prefix = "tp_engine_test";
  std::vector<std::unique_ptr<FakeBackend>> backends;
  for (int r = 0; r < kWorld; ++r) backends.push_back(std::make_unique<FakeBackend>(kVocab, 48));
  std::vector<Status> worker_status(kWorld);
  std::vector<std::thread> workers;
  for (int r = 1; r < kWorld; ++r) {
    workers.emplace_back([&, r] {
      auto comm = GlooCommunicator::Create(r, kWorld, &store, gloo);
      if (!comm.ok()) {
        worker_status[r] = comm.status();
        return;
      }
      worker_status[r] = RunTpWorker(backends[r].get(), comm->get());
    });
  }
  auto comm = GlooCommunicator::Create(0, kWorld, &store, gloo);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  TpLeaderBackend leader(backends[0].get(), comm->get());
  ASSERT_TRUE(leader.KeepAlive().ok());
  auto scheduler = Scheduler::Create(&leader, SchedulerOptions{});
  ASSERT_TRUE(scheduler.ok());
  std::map<uint64_t, std::vector<int32_t>> out;
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5}, {6, 7, 8}, {9, 10, 11, 12}};
  for (uint64_t id = 0; id < prompts.size(); ++id) {
    Request r;
    r.id = id;
    r.prompt = prompts[id];
    r.params.temperature = 0;
    r.params.max_tokens = 16;
    r.on_output = [&out](const TokenOutput& o) { out[o.request_id].push_back(o.token); };
    ASSERT_TRUE((*scheduler)->AddRequest(std::move(r)).ok());
  }
  while ((*scheduler)->HasWork()) ASSERT_TRUE((*scheduler)->Step().ok());
  EXPECT_GT((*scheduler)->total_preemptions(), 0);
  ASSERT_TRUE(leader.Stop().ok());
  ASSERT_TRUE(leader.Stop().ok());  // idempotent
  EXPECT_EQ(leader.Forward(ForwardBatch{}).status().code(), StatusCode::kFailedPrecondition);
  for (auto& t : workers) t.join();

  for (uint64_t id = 0; id < prompts.size(); ++id) {
    EXPECT_EQ(out[id], FakeGreedy(prompts[id], kVocab, 16)) << "request " << id;
  }
  for (int r = 1; r < kWorld; ++r) {
    EXPECT_TRUE(worker_status[r].ok()) << worker_status[r].ToString();
    ASSERT_EQ(backends[r]->batches.size(), backends[0]->batches.size()) << "rank " << r;
    for (size_t i = 0; i < backends[0]->batches.size(); ++i) {
      EXPECT_TRUE(SameBatch(backends[r]->batches[i], backends[0]->batches[i]))
          << "rank " << r << " batch " << i;
    }
    EXPECT_EQ(backends[r]->exhausted_count, backends[0]->exhausted_count);
    EXPECT_EQ(backends[r]->live_sequences(), 0u) << "releases reached rank " << r;
  }
}

TEST(TpEngineTest, WorkerEndsWithAnErrorWhenTheLeaderVanishes) {
  LocalKeyValueStore store;
  GlooOptions gloo;
  gloo.prefix = "tp_vanish";
  gloo.op_timeout_ms = 500;
  FakeBackend worker_backend(10, 64);
  Status worker_status;
  std::thread worker([&] {
    auto comm = GlooCommunicator::Create(1, 2, &store, gloo);
    ASSERT_TRUE(comm.ok());
    worker_status = RunTpWorker(&worker_backend, comm->get());
  });
  {
    auto comm = GlooCommunicator::Create(0, 2, &store, gloo);
    ASSERT_TRUE(comm.ok());
    // The leader goes away without sending the stop message.
  }
  worker.join();
  EXPECT_FALSE(worker_status.ok());
  EXPECT_NE(worker_status.message().find("tensor-parallel rank 1"), std::string::npos)
      << worker_status.ToString();
}

}  // namespace
}  // namespace spark::engine
