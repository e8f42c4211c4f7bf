#include "engine/runtime/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "tests/engine/runtime/device_logits_backend.h"
#include "tests/engine/runtime/fake_backend.h"
#include "tests/engine/runtime/scheduler_test_util.h"

namespace spark::engine {
namespace {

using testing::Collected;
using testing::FakeBackend;
using testing::FakeGreedy;
using testing::RunScheduler;

constexpr int64_t kVocab = 64;

class SchedulerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Scheduler> Make(Backend* backend, SchedulerOptions options = {}) {
    auto s = Scheduler::Create(backend, options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return std::move(s).value();
  }

  Request Greedy(uint64_t id, std::vector<int32_t> prompt, int max_tokens) {
    Request r;
    r.id = id;
    r.prompt = std::move(prompt);
    r.params.temperature = 0;
    r.params.max_tokens = max_tokens;
    r.on_output = [this, id](const TokenOutput& out) {
      EXPECT_EQ(out.request_id, id);
      results_[id].Add(id, out);
    };
    return r;
  }

  void RunToCompletion(Scheduler& s, int max_steps = 10000) { RunScheduler(s, max_steps); }

  static std::vector<int32_t> Prompt(int n, int salt) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back((i * 7 + salt * 13) % kVocab);
    return p;
  }

  std::map<uint64_t, Collected> results_;
};

TEST_F(SchedulerTest, SingleGreedyRequestMatchesTheModel) {
  FakeBackend backend(kVocab, 1024);
  auto s = Make(&backend);
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(5, 1), 12)).ok());
  RunToCompletion(*s);
  EXPECT_EQ(results_[1].tokens, FakeGreedy(Prompt(5, 1), kVocab, 12));
  EXPECT_EQ(results_[1].finish, FinishReason::kLength);
  EXPECT_EQ(results_[1].finish_events, 1);
  EXPECT_EQ(results_[1].events.back().output_tokens, 12);
  EXPECT_EQ(results_[1].events.back().prompt_tokens, 5);
  EXPECT_EQ(backend.live_sequences(), 0u);  // released
  // One prefill step, then 11 decode steps of one token each.
  ASSERT_EQ(backend.batches.size(), 12u);
  EXPECT_EQ(backend.batches[0].chunks[0].tokens.size(), 5u);
  EXPECT_EQ(backend.batches[1].chunks[0].tokens.size(), 1u);
  EXPECT_EQ(backend.batches[1].chunks[0].start_pos, 5);
}

TEST_F(SchedulerTest, RequestsJoiningMidFlightGetTheirOwnResults) {
  FakeBackend backend(kVocab, 4096);
  auto s = Make(&backend);
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(6, 1), 20)).ok());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s->Step().ok());
  ASSERT_TRUE(s->AddRequest(Greedy(2, Prompt(9, 2), 15)).ok());
  ASSERT_TRUE(s->Step().ok());
  ASSERT_TRUE(s->AddRequest(Greedy(3, Prompt(3, 3), 10)).ok());
  ASSERT_TRUE(s->AddRequest(Greedy(4, Prompt(12, 4), 8)).ok());
  RunToCompletion(*s);
  EXPECT_EQ(results_[1].tokens, FakeGreedy(Prompt(6, 1), kVocab, 20));
  EXPECT_EQ(results_[2].tokens, FakeGreedy(Prompt(9, 2), kVocab, 15));
  EXPECT_EQ(results_[3].tokens, FakeGreedy(Prompt(3, 3), kVocab, 10));
  EXPECT_EQ(results_[4].tokens, FakeGreedy(Prompt(12, 4), kVocab, 8));
  // Batches really mixed decode steps with prefills.
  bool mixed = false;
  for (const auto& b : backend.batches) {
    bool has_decode = false, has_prefill = false;
    for (const auto& c : b.chunks) (c.tokens.size() == 1 ? has_decode : has_prefill) = true;
    mixed |= has_decode && has_prefill;
  }
  EXPECT_TRUE(mixed);
}

TEST_F(SchedulerTest, TokenBudgetAndRunningCapAreRespectedWithChunkedPrefill) {
  FakeBackend backend(kVocab, 8192);
  SchedulerOptions options;
  options.max_batch_tokens = 16;
  options.max_running = 3;
  options.max_prefill_chunk_tokens = 10;
  auto s = Make(&backend, options);
  for (uint64_t id = 1; id <= 6; ++id) {
    ASSERT_TRUE(s->AddRequest(Greedy(id, Prompt(25 + static_cast<int>(id), id), 6)).ok());
  }
  RunToCompletion(*s);
  for (const auto& b : backend.batches) {
    int64_t tokens = 0;
    for (const auto& c : b.chunks) {
      tokens += static_cast<int64_t>(c.tokens.size());
      EXPECT_LE(c.tokens.size(), 10u);
    }
    EXPECT_LE(tokens, 16);
    EXPECT_LE(b.chunks.size(), 3u);
  }
  for (uint64_t id = 1; id <= 6; ++id) {
    EXPECT_EQ(results_[id].tokens, FakeGreedy(Prompt(25 + static_cast<int>(id), id), kVocab, 6))
        << "request " << id;
  }
}

TEST_F(SchedulerTest, AdmissionIsFirstComeFirstServed) {
  FakeBackend backend(kVocab, 8192);
  SchedulerOptions options;
  options.max_running = 1;
  auto s = Make(&backend, options);
  std::vector<uint64_t> finish_order;
  for (uint64_t id = 1; id <= 4; ++id) {
    Request r = Greedy(id, Prompt(4, id), 3);
    auto inner = r.on_output;
    r.on_output = [&finish_order, inner](const TokenOutput& out) {
      inner(out);
      if (out.finish != FinishReason::kNone) finish_order.push_back(out.request_id);
    };
    ASSERT_TRUE(s->AddRequest(std::move(r)).ok());
  }
  RunToCompletion(*s);
  EXPECT_EQ(finish_order, (std::vector<uint64_t>{1, 2, 3, 4}));
}

TEST_F(SchedulerTest, CancellationStopsARunningAndAWaitingRequest) {
  FakeBackend backend(kVocab, 8192);
  SchedulerOptions options;
  options.max_running = 2;
  auto s = Make(&backend, options);
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(4, 1), 50)).ok());
  ASSERT_TRUE(s->AddRequest(Greedy(2, Prompt(4, 2), 50)).ok());
  ASSERT_TRUE(s->AddRequest(Greedy(3, Prompt(4, 3), 50)).ok());  // waits: cap 2
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s->Step().ok());
  EXPECT_EQ(results_[1].tokens.size(), 5u);
  s->Cancel(1);
  s->Cancel(3);
  s->Cancel(99);  // unknown: ignored
  ASSERT_TRUE(s->Step().ok());
  EXPECT_EQ(results_[1].finish, FinishReason::kCancelled);
  EXPECT_EQ(results_[1].events.back().token, -1);
  EXPECT_EQ(results_[1].tokens.size(), 5u);
  EXPECT_EQ(results_[3].finish, FinishReason::kCancelled);
  EXPECT_TRUE(results_[3].tokens.empty());
  EXPECT_EQ(backend.Cached(1), 0);  // released
  RunToCompletion(*s);
  EXPECT_EQ(results_[2].tokens, FakeGreedy(Prompt(4, 2), kVocab, 50));
  // A cancelled id can be reused for a new request.
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(4, 1), 2)).ok());
}

TEST_F(SchedulerTest, PreemptionUnderATinyKvCacheGivesTheSameTokens) {
  // 64 tokens of cache in blocks of 4; four requests that need up to 40 tokens each.
  FakeBackend tiny(kVocab, 64, 4);
  SchedulerOptions options;
  options.max_batch_tokens = 32;
  auto s = Make(&tiny, options);
  for (uint64_t id = 1; id <= 4; ++id) {
    ASSERT_TRUE(s->AddRequest(Greedy(id, Prompt(8 + static_cast<int>(id) * 3, id), 25)).ok());
  }
  RunToCompletion(*s);
  EXPECT_GT(s->total_preemptions(), 0);
  for (uint64_t id = 1; id <= 4; ++id) {
    EXPECT_EQ(results_[id].tokens, FakeGreedy(Prompt(8 + static_cast<int>(id) * 3, id), kVocab, 25))
        << "request " << id;
    EXPECT_EQ(results_[id].finish, FinishReason::kLength);
    EXPECT_EQ(results_[id].finish_events, 1);
  }
  EXPECT_EQ(tiny.live_sequences(), 0u);
}

TEST_F(SchedulerTest, SeededSamplingSurvivesPreemption) {
  auto run = [&](int64_t capacity) {
    FakeBackend backend(kVocab, capacity, 4);
    auto s = Make(&backend);
    std::map<uint64_t, std::vector<int32_t>> out;
    for (uint64_t id = 1; id <= 3; ++id) {
      Request r;
      r.id = id;
      r.prompt = Prompt(10, id);
      r.params.temperature = 1.0f;
      r.params.top_k = 20;
      r.params.seed = 100 + id;
      r.params.max_tokens = 20;
      r.on_output = [&out](const TokenOutput& o) { out[o.request_id].push_back(o.token); };
      EXPECT_TRUE(s->AddRequest(std::move(r)).ok());
    }
    while (s->HasWork()) EXPECT_TRUE(s->Step().ok());
    return std::make_pair(out, s->total_preemptions());
  };
  auto [roomy, p0] = run(4096);
  auto [tight, p1] = run(48);
  EXPECT_EQ(p0, 0);
  EXPECT_GT(p1, 0);
  EXPECT_EQ(roomy, tight);
}

TEST_F(SchedulerTest, StopTokensAndEos) {
  FakeBackend backend(kVocab, 4096);
  std::vector<int32_t> ref = FakeGreedy(Prompt(5, 7), kVocab, 30);
  backend.mutable_config().eos_token_ids = {ref[5]};
  auto s = Make(&backend);
  // EOS ends the request at its first occurrence, EOS included as the last token.
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(5, 7), 30)).ok());
  // ignore_eos runs to max_tokens.
  Request r2 = Greedy(2, Prompt(5, 7), 30);
  r2.params.ignore_eos = true;
  ASSERT_TRUE(s->AddRequest(std::move(r2)).ok());
  // A stop token id ends it earlier.
  Request r3 = Greedy(3, Prompt(5, 7), 30);
  r3.params.stop_token_ids = {ref[2]};
  ASSERT_TRUE(s->AddRequest(std::move(r3)).ok());
  RunToCompletion(*s);

  auto first = [&](int32_t t) {
    return static_cast<size_t>(std::find(ref.begin(), ref.end(), t) - ref.begin());
  };
  EXPECT_EQ(results_[1].finish, FinishReason::kStop);
  EXPECT_EQ(results_[1].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first(ref[5]) + 1));
  EXPECT_EQ(results_[2].finish, FinishReason::kLength);
  EXPECT_EQ(results_[2].tokens, ref);
  EXPECT_EQ(results_[3].finish, FinishReason::kStop);
  EXPECT_EQ(results_[3].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first(ref[2]) + 1));
}

TEST_F(SchedulerTest, MaxModelLenEndsWithLength) {
  FakeBackend backend(kVocab, 4096);
  SchedulerOptions options;
  options.max_model_len = 12;
  auto s = Make(&backend, options);
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(8, 1), 100)).ok());
  EXPECT_EQ(s->AddRequest(Greedy(2, Prompt(12, 1), 5)).code(), StatusCode::kInvalidArgument);
  RunToCompletion(*s);
  EXPECT_EQ(results_[1].tokens.size(), 4u);
  EXPECT_EQ(results_[1].finish, FinishReason::kLength);
}

TEST_F(SchedulerTest, RequestLargerThanTheCacheFailsAloneWithoutHurtingOthers) {
  FakeBackend backend(kVocab, 32, 4);
  auto s = Make(&backend);
  ASSERT_TRUE(s->AddRequest(Greedy(1, Prompt(40, 1), 3)).ok());
  ASSERT_TRUE(s->AddRequest(Greedy(2, Prompt(6, 2), 5)).ok());
  RunToCompletion(*s);
  EXPECT_EQ(results_[1].finish, FinishReason::kError);
  EXPECT_EQ(results_[1].events.back().error.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(results_[1].events.back().error.message().find("request 1"), std::string::npos);
  EXPECT_EQ(results_[2].tokens, FakeGreedy(Prompt(6, 2), kVocab, 5));
}

TEST_F(SchedulerTest, LogprobsAreReported) {
  FakeBackend backend(kVocab, 4096);
  auto s = Make(&backend);
  Request r = Greedy(1, Prompt(3, 1), 2);
  r.params.logprobs = true;
  r.params.top_logprobs = 2;
  ASSERT_TRUE(s->AddRequest(std::move(r)).ok());
  RunToCompletion(*s);
  const TokenOutput& first = results_[1].events[0];
  ASSERT_EQ(first.top_logprobs.size(), 2u);
  EXPECT_EQ(first.top_logprobs[0].token, first.token);  // greedy = most likely
  EXPECT_FLOAT_EQ(first.top_logprobs[0].logprob, first.logprob);
  EXPECT_LT(first.logprob, 0.0f);
  EXPECT_GE(first.top_logprobs[0].logprob, first.top_logprobs[1].logprob);
}

TEST_F(SchedulerTest, BadRequestsAndOptionsAreRejected) {
  FakeBackend backend(kVocab, 4096);
  auto s = Make(&backend);
  EXPECT_EQ(s->AddRequest(Greedy(1, {}, 3)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s->AddRequest(Greedy(1, {1, kVocab}, 3)).code(), StatusCode::kInvalidArgument);
  Request bad = Greedy(1, {1}, 3);
  bad.params.top_p = 2;
  Status st = s->AddRequest(std::move(bad));
  EXPECT_NE(st.message().find("top_p"), std::string::npos) << st.ToString();
  ASSERT_TRUE(s->AddRequest(Greedy(1, {1}, 3)).ok());
  EXPECT_EQ(s->AddRequest(Greedy(1, {2}, 3)).code(), StatusCode::kAlreadyExists);
  SchedulerOptions options;
  options.max_running = 0;
  EXPECT_EQ(Scheduler::Create(&backend, options).status().code(), StatusCode::kInvalidArgument);
  options.max_running = 1;
  options.max_batch_tokens = 0;
  EXPECT_EQ(Scheduler::Create(&backend, options).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, BackendFailureIsReturnedByStep) {
  class Broken final : public Backend {
   public:
    const ModelConfig& config() const override { return config_; }
    Result<ForwardOutput> Forward(const ForwardBatch&) override {
      return Unavailable("collective failed");
    }
    void Release(uint64_t) override {}
    int64_t FreeKvTokens() const override { return 1000; }
    ModelConfig config_ = [] {
      ModelConfig c;
      c.vocab_size = 8;
      return c;
    }();
  } broken;
  auto s = Make(&broken);
  ASSERT_TRUE(s->AddRequest(Greedy(1, {1, 2}, 3)).ok());
  auto step = s->Step();
  EXPECT_EQ(step.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace spark::engine

namespace spark::engine {
namespace {

using testing::DeviceLogitsBackend;
using testing::DeviceRowsSampler;
using testing::ReplayingBatchSampler;

class BatchSamplerSchedulerTest : public SchedulerTest {};

TEST_F(BatchSamplerSchedulerTest, BatchSamplerGetsEveryReadyRowWithItsHistory) {
  std::map<uint64_t, Collected> want;
  for (bool batched : {false, true}) {
    results_.clear();
    FakeBackend backend(kVocab, 1024);
    ReplayingBatchSampler sampler;
    SchedulerOptions options;
    options.max_batch_tokens = 8;  // prompts of 11 tokens prefill in two steps
    if (batched) options.batch_sampler = &sampler;
    auto s = Make(&backend, options);
    for (uint64_t id : {1, 2, 3}) {
      Request r = Greedy(id, Prompt(11, static_cast<int>(id)), 6);
      r.params.repetition_penalty = 1.5f;
      r.params.frequency_penalty = 0.5f;
      r.params.top_logprobs = 2;
      ASSERT_TRUE(s->AddRequest(std::move(r)).ok());
    }
    RunToCompletion(*s);
    if (!batched) {
      want = results_;
      continue;
    }
    for (uint64_t id : {1, 2, 3}) {
      EXPECT_EQ(results_[id].tokens, want[id].tokens) << "request " << id;
      ASSERT_EQ(results_[id].events.size(), want[id].events.size());
      for (size_t k = 0; k < want[id].events.size(); ++k) {
        EXPECT_EQ(results_[id].events[k].logprob, want[id].events[k].logprob);
      }
    }
    // 3 requests x 6 tokens, each row with the prompt, the tokens so far and its draw index.
    ASSERT_EQ(sampler.seen.size(), 18u);
    for (const auto& row : sampler.seen) {
      EXPECT_EQ(row.prompt.size(), 11u);
      EXPECT_EQ(row.output.size(), row.draw);
    }
    EXPECT_LT(sampler.calls, 18);  // rows of one step arrive together
  }
}

TEST_F(BatchSamplerSchedulerTest, DeviceRowsSamplerGetsTheBackendsDeviceLogits) {
  std::map<uint64_t, Collected> want;
  for (bool device : {false, true}) {
    results_.clear();
    FakeBackend fake(kVocab, 1024);
    DeviceLogitsBackend backend(&fake);
    DeviceRowsSampler device_sampler(&backend);
    SchedulerOptions options;
    options.max_batch_tokens = 8;
    if (device) options.batch_sampler = &device_sampler;
    auto s = Make(&backend, options);
    for (uint64_t id : {1, 2, 3}) {
      Request r = Greedy(id, Prompt(11, static_cast<int>(id)), 5);
      r.params.top_logprobs = 2;
      ASSERT_TRUE(s->AddRequest(std::move(r)).ok());
    }
    RunToCompletion(*s);
    ASSERT_FALSE(backend.asked.empty());
    if (!device) {
      // A host sampler never asks for device logits.
      for (bool asked : backend.asked) EXPECT_FALSE(asked);
      want = results_;
      continue;
    }
    for (bool asked : backend.asked) EXPECT_TRUE(asked);
    EXPECT_EQ(device_sampler.replay.seen.size(), 15u);
    EXPECT_EQ(device_sampler.host_rows, 0);
    for (uint64_t id : {1, 2, 3}) {
      EXPECT_EQ(results_[id].tokens, want[id].tokens) << "request " << id;
      ASSERT_EQ(results_[id].events.size(), want[id].events.size());
      for (size_t k = 0; k < want[id].events.size(); ++k) {
        EXPECT_EQ(results_[id].events[k].logprob, want[id].events[k].logprob);
      }
    }
  }
}

TEST_F(BatchSamplerSchedulerTest, ForwardIssuedHookRunsAfterEachForwardBeforeSampling) {
  FakeBackend fake(kVocab, 1024);
  DeviceLogitsBackend backend(&fake);
  DeviceRowsSampler sampler(&backend);
  int hooks = 0;
  std::vector<int> forwards_at_hook;
  sampler.hooks = &hooks;
  SchedulerOptions options;
  options.max_batch_tokens = 8;
  options.batch_sampler = &sampler;
  options.on_forward_issued = [&] {
    ++hooks;
    forwards_at_hook.push_back(static_cast<int>(backend.asked.size()));
  };
  auto s = Make(&backend, options);
  for (uint64_t id : {1, 2}) ASSERT_TRUE(s->AddRequest(Greedy(id, Prompt(11, 3), 4)).ok());
  int device_steps = 0;
  for (int i = 0; i < 100 && s->HasWork(); ++i) {
    Result<StepStats> st = s->Step();
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    if (st->sequences > 0) {
      EXPECT_TRUE(st->on_device);
    }
    device_steps += st->on_device;
  }
  EXPECT_FALSE(s->HasWork());
  // Once per forward pass, right after it: the k-th hook saw k forward passes.
  ASSERT_EQ(hooks, static_cast<int>(backend.asked.size()));
  for (size_t k = 0; k < forwards_at_hook.size(); ++k) {
    EXPECT_EQ(forwards_at_hook[k], static_cast<int>(k) + 1);
  }
  // Every sampling call came after its step's hook.
  ASSERT_FALSE(sampler.hooks_at_sample.empty());
  for (size_t c = 0; c < sampler.hooks_at_sample.size(); ++c) {
    EXPECT_EQ(sampler.hooks_at_sample[c], sampler.forwards_at_sample[c]);
  }
  EXPECT_EQ(device_steps, hooks);
}

TEST_F(BatchSamplerSchedulerTest, DeviceLogitsWithoutABatchSamplerAreAnInternalError) {
  FakeBackend fake(kVocab, 1024);
  DeviceLogitsBackend backend(&fake);
  backend.always = true;
  auto s = Make(&backend);
  ASSERT_TRUE(s->AddRequest(Greedy(1, {1, 2}, 3)).ok());
  Result<StepStats> step = s->Step();
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(step.status().code(), StatusCode::kInternal);
  EXPECT_NE(step.status().message().find("device logits"), std::string::npos);
}

}  // namespace
}  // namespace spark::engine
