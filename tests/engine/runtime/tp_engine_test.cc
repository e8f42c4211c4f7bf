#include "engine/runtime/tp_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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

// The speculation fields: tree parents, return_hidden, MTP batches with hidden rows, and cache
// compactions in the trailing section.
TEST(StepMessageTest, RoundTripsSpeculationFields) {
  StepMessage m;
  m.op = StepOp::kForward;
  m.releases = {4};
  SequenceChunk tree;
  tree.seq_id = 3;
  tree.start_pos = 20;
  tree.tokens = {10, 11, 12, 13};
  tree.tree_parents = {-1, 0, 0, 1};
  tree.all_logits = true;
  tree.return_hidden = true;
  SequenceChunk plain;
  plain.seq_id = 5;
  plain.tokens = {1};
  plain.return_hidden = true;
  m.batch.chunks = {tree, plain};
  m.keeps = {{3, CacheKind::kTarget, 16, {0, 2, 3}}, {3, CacheKind::kMtp, 15, {}}};
  std::vector<uint8_t> bytes = EncodeStepMessage(m);
  auto d = DecodeStepMessage(bytes.data(), bytes.size());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->releases, m.releases);
  ASSERT_TRUE(SameBatch(d->batch, m.batch));
  EXPECT_EQ(d->batch.chunks[0].tree_parents, tree.tree_parents);
  EXPECT_TRUE(d->batch.chunks[0].return_hidden);
  EXPECT_TRUE(d->batch.chunks[1].tree_parents.empty());
  EXPECT_TRUE(d->batch.chunks[1].return_hidden);
  ASSERT_EQ(d->keeps.size(), 2u);
  EXPECT_EQ(d->keeps[0].seq_id, 3u);
  EXPECT_EQ(d->keeps[0].kind, CacheKind::kTarget);
  EXPECT_EQ(d->keeps[0].prefix_len, 16);
  EXPECT_EQ(d->keeps[0].keep, (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(d->keeps[1].kind, CacheKind::kMtp);
  EXPECT_EQ(d->keeps[1].prefix_len, 15);
  EXPECT_TRUE(d->keeps[1].keep.empty());

  StepMessage mtp;
  mtp.op = StepOp::kForwardMtp;
  MtpChunk c;
  c.seq_id = 9;
  c.start_pos = 7;
  c.tokens = {100, 101};
  c.hidden = {0.5f, -1.25f, 3.0f, 1e-30f, -0.0f, 7.5f};
  c.tree_parents = {-1, 0};
  c.all_logits = true;
  c.return_hidden = true;
  mtp.mtp_batch.chunks = {c};
  bytes = EncodeStepMessage(mtp);
  d = DecodeStepMessage(bytes.data(), bytes.size());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->op, StepOp::kForwardMtp);
  EXPECT_TRUE(d->batch.chunks.empty());
  ASSERT_EQ(d->mtp_batch.chunks.size(), 1u);
  const MtpChunk& e = d->mtp_batch.chunks[0];
  EXPECT_EQ(e.seq_id, 9u);
  EXPECT_EQ(e.start_pos, 7);
  EXPECT_EQ(e.tokens, c.tokens);
  EXPECT_EQ(e.hidden, c.hidden);  // bit-exact floats
  EXPECT_EQ(e.tree_parents, c.tree_parents);
  EXPECT_TRUE(e.all_logits);
  EXPECT_TRUE(e.return_hidden);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_EQ(DecodeStepMessage(bytes.data(), cut).status().code(), StatusCode::kDataLoss)
        << "cut at " << cut;
  }
}

// Bytes in the original format (written out by hand) still decode.
TEST(StepMessageTest, DecodesTheOriginalFormat) {
  std::vector<uint8_t> bytes;
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  auto put64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put32(0x534B5053);  // "SPKS"
  put32(1);           // kForward
  put32(1);           // one release
  put32(2);           // two chunks
  put64(77);
  put64(3);  // seq 3, start 12, all_logits 0, tokens {1, 2}
  put64(12);
  put32(0);
  put32(2);
  put32(1);
  put32(2);
  put64(4);  // seq 4, start 0, all_logits 1, tokens {9}
  put64(0);
  put32(1);
  put32(1);
  put32(9);
  auto d = DecodeStepMessage(bytes.data(), bytes.size());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->releases, std::vector<uint64_t>{77});
  ASSERT_EQ(d->batch.chunks.size(), 2u);
  EXPECT_EQ(d->batch.chunks[0].tokens, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(d->batch.chunks[0].start_pos, 12);
  EXPECT_FALSE(d->batch.chunks[0].all_logits);
  EXPECT_TRUE(d->batch.chunks[1].all_logits);
  EXPECT_FALSE(d->batch.chunks[1].return_hidden);
  EXPECT_TRUE(d->batch.chunks[1].tree_parents.empty());
  EXPECT_TRUE(d->keeps.empty());
  // And a message without the new fields encodes to exactly those bytes.
  EXPECT_EQ(EncodeStepMessage(*d), bytes);
}

TEST(StepMessageTest, UnknownFlagsAndCacheKindsAreDataLoss) {
  StepMessage m;
  SequenceChunk a;
  a.seq_id = 1;
  a.tokens = {5};
  m.batch.chunks = {a};
  m.keeps = {{1, CacheKind::kMtp, 0, {}}};
  const std::vector<uint8_t> bytes = EncodeStepMessage(m);
  ASSERT_TRUE(DecodeStepMessage(bytes.data(), bytes.size()).ok());
  std::vector<uint8_t> bad = bytes;
  bad[16 + 16] = 8;  // chunk flags: unknown bit
  EXPECT_EQ(DecodeStepMessage(bad.data(), bad.size()).status().code(), StatusCode::kDataLoss);
  bad = bytes;
  bad[16 + 28 + 4 + 8] = 2;  // keep kind
  auto d = DecodeStepMessage(bad.data(), bad.size());
  EXPECT_EQ(d.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find("cache kind"), std::string::npos) << d.status().message();
  bad = bytes;
  bad[4] = 5;  // op
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
  std::atomic<bool> joined{false};
  std::thread worker([&] {
    auto comm = GlooCommunicator::Create(1, 2, &store, gloo);
    joined = true;
    ASSERT_TRUE(comm.ok()) << comm.status().ToString();
    worker_status = RunTpWorker(&worker_backend, comm->get());
  });
  {
    auto comm = GlooCommunicator::Create(0, 2, &store, gloo);
    ASSERT_TRUE(comm.ok());
    // Both sides of the group are up (a leader gone during the worker's handshake would fail
    // the worker's Create instead); then the leader goes away without the stop message.
    while (!joined) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  worker.join();
  EXPECT_FALSE(worker_status.ok());
  EXPECT_NE(worker_status.message().find("tensor-parallel rank 1"), std::string::npos)
      << worker_status.ToString();
}

}  // namespace
}  // namespace spark::engine
