// Runs the real spark-shard binary (ranks as processes) against a FakeController on a
// `spark-model tiny` checkpoint: phases, rendezvous, the data plane against `spark-model generate`,
// cancellation, request errors, a rank that never starts, a failed peer load, SIGTERM, the
// collective watchdog, the CUDA refusal, CURVE, and speculative decoding (refusal without an MTP
// layer; greedy tokens and counters with one).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "agent/shard_status_file.h"
#include "common/process.h"
#include "common/zmq.h"
#include "proto/framing.h"
#include "tests/engine/shard/data_client.h"
#include "tests/engine/shard/fake_controller.h"

namespace spark::shard {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;
using testing::DataClient;
using testing::FakeController;

constexpr milliseconds kReadyTimeout{60000};

std::string RunCommand(const std::string& command, int* rc) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<spark::v1::ShardPhase> DistinctPhases(
    const std::vector<spark::v1::ShardStatus>& statuses) {
  std::vector<spark::v1::ShardPhase> phases;
  for (const auto& s : statuses) {
    if (phases.empty() || phases.back() != s.phase()) phases.push_back(s.phase());
  }
  return phases;
}

spark::v1::SamplingParams Greedy(uint32_t max_tokens) {
  spark::v1::SamplingParams p;
  p.set_temperature(0.0f);
  p.set_top_p(1.0f);
  p.set_top_k(0);
  p.set_min_p(0.0f);
  p.set_repetition_penalty(1.0f);
  p.set_max_tokens(max_tokens);
  return p;
}

class SparkShardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ =
        new fs::path(fs::temp_directory_path() / ("spark_shard_test_" + std::to_string(getpid())));
    fs::create_directories(*root_);
    int rc = -1;
    std::string out =
        RunCommand(std::string(SPARK_MODEL_BIN) + " tiny " + Model().string() + " --seed 3", &rc);
    ASSERT_EQ(rc, 0) << out;
    out = RunCommand(
        std::string(SPARK_MODEL_BIN) + " tiny " + MtpModel().string() + " --seed 3 --mtp", &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static fs::path Model() { return *root_ / "tiny"; }
  // The same tiny GLM with an MTP (nextn) layer.
  static fs::path MtpModel() { return *root_ / "tiny-mtp"; }

  void SetUp() override {
    dir_ = *root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(dir_);
  }

  void TearDown() override {
    if (HasFailure()) {
      for (const auto& entry : fs::directory_iterator(dir_)) {
        if (entry.path().extension() == ".log") {
          std::fprintf(stderr, "---- %s\n%s\n", entry.path().c_str(),
                       ReadFile(entry.path()).c_str());
        }
      }
    }
    shards_.clear();  // kills and reaps what still runs
  }

  static spark::v1::ShardAssignment Assignment(uint32_t rank, uint32_t world) {
    spark::v1::ShardAssignment a;
    a.set_deployment("tiny");
    a.set_run_id(11);
    a.set_generation(5);
    a.set_rank(rank);
    a.set_world_size(world);
    a.set_model_path(Model().string());
    a.set_backend(spark::v1::BACKEND_CPU);
    a.mutable_options()->set_tp(world);
    a.mutable_options()->set_kv_cache_bytes(64 << 20);
    (*a.mutable_options()->mutable_extra())["threads"] = "1";
    a.mutable_rendezvous()->set_kind(spark::v1::RENDEZVOUS_KIND_GLOO);
    a.mutable_rendezvous()->set_key_prefix("tiny/5/");
    a.mutable_rendezvous()->set_timeout_ms(20000);
    if (rank == 0) a.set_data_listen_address("127.0.0.1:0");
    a.set_deadline_ms(60000);
    return a;
  }

  // Writes the assignment and starts spark-shard for it; returns the index in shards_.
  Process* Start(const spark::v1::ShardAssignment& a, const FakeController& controller,
                 std::vector<std::string> extra_args = {"--insecure"},
                 std::map<std::string, std::string> env = {}) {
    const std::string name = "shard-" + std::to_string(a.rank());
    const fs::path file = dir_ / (name + ".pb");
    {
      std::ofstream out(file, std::ios::binary);
      out << a.SerializeAsString();
    }
    SpawnOptions spawn;
    spawn.args = {SPARK_SHARD_BIN,
                  "--assignment",
                  file.string(),
                  "--controller",
                  controller.endpoint(),
                  "--node",
                  "node-" + std::to_string(a.rank())};
    for (auto& arg : extra_args) spawn.args.push_back(arg);
    spawn.env = std::move(env);
    spawn.stdout_path = spawn.stderr_path = (dir_ / (name + ".log")).string();
    auto process = launcher_.Spawn(spawn);
    EXPECT_TRUE(process.ok()) << process.status().ToString();
    shards_.push_back(std::move(process).value());
    return shards_.back().get();
  }

  // Starts a ready group of `world` ranks; returns rank 0's data endpoint.
  std::string StartGroup(FakeController& controller, uint32_t world,
                         const std::map<std::string, std::string>& extra = {}) {
    for (uint32_t r = 0; r < world; ++r) {
      auto a = Assignment(r, world);
      for (const auto& [k, v] : extra) (*a.mutable_options()->mutable_extra())[k] = v;
      Start(a, controller);
    }
    std::string endpoint;
    for (uint32_t r = 0; r < world; ++r) {
      auto ready = controller.WaitForPhase(r, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
      EXPECT_TRUE(ready.has_value()) << "rank " << r << " never became READY";
      if (ready && r == 0) endpoint = ready->data_endpoint();
    }
    return endpoint;
  }

  static ExitInfo WaitExit(Process* p, milliseconds timeout) {
    auto info = p->WaitFor(timeout);
    EXPECT_TRUE(info.ok() && info->has_value()) << "the shard did not exit in time";
    if (!info.ok() || !info->has_value()) return ExitInfo::Code(-1);
    return **info;
  }

  static fs::path* root_;
  fs::path dir_;
  RealProcessLauncher launcher_;
  std::vector<std::unique_ptr<Process>> shards_;
};

fs::path* SparkShardTest::root_ = nullptr;

TEST_F(SparkShardTest, TwoRanksReportPhasesAndServeTheSpark_ModelGreedyTokens) {
  FakeController controller(2);
  const std::string endpoint = StartGroup(controller, 2);
  ASSERT_FALSE(endpoint.empty());
  EXPECT_EQ(endpoint.rfind("tcp://127.0.0.1:", 0), 0u) << endpoint;

  for (uint32_t rank : {0u, 1u}) {
    auto statuses = controller.Statuses(rank);
    EXPECT_EQ(DistinctPhases(statuses),
              (std::vector<spark::v1::ShardPhase>{
                  spark::v1::SHARD_PHASE_STARTING, spark::v1::SHARD_PHASE_RENDEZVOUS,
                  spark::v1::SHARD_PHASE_LOADING, spark::v1::SHARD_PHASE_READY}))
        << "rank " << rank;
    // Progress grows to 1 and the weight bytes are reported.
    double last_fraction = -1;
    uint64_t bytes_total = 0;
    for (const auto& s : statuses) {
      EXPECT_EQ(s.deployment(), "tiny");
      EXPECT_EQ(s.run_id(), 11u);
      EXPECT_EQ(s.generation(), 5u);
      EXPECT_EQ(s.pid(), shards_[rank]->pid());
      EXPECT_GT(s.started_unix_ms(), 0);
      EXPECT_GE(s.reported_unix_ms(), s.phase_since_unix_ms());
      if (s.phase() != spark::v1::SHARD_PHASE_LOADING || !s.has_progress()) continue;
      EXPECT_GE(s.progress().fraction(), last_fraction);
      last_fraction = s.progress().fraction();
      bytes_total = std::max(bytes_total, s.progress().bytes_total());
    }
    EXPECT_DOUBLE_EQ(last_fraction, 1.0) << "rank " << rank;
    EXPECT_GT(bytes_total, 0u) << "rank " << rank;
    EXPECT_EQ(statuses.back().data_endpoint().empty(), rank != 0);
  }
  // Envelopes carry the shard's id and the run generation, with growing sequence numbers.
  std::map<std::string, uint64_t> last_sequence;
  for (const auto& r : controller.Received()) {
    EXPECT_EQ(r.peer, r.envelope.sender_id());
    EXPECT_EQ(r.envelope.sender_id().rfind("shard/tiny/5/", 0), 0u);
    EXPECT_EQ(r.envelope.generation(), 5u);
    EXPECT_GT(r.envelope.sequence(), last_sequence[r.envelope.sender_id()]);
    last_sequence[r.envelope.sender_id()] = r.envelope.sequence();
  }
  // Gloo keys went through the store under the run's prefix.
  bool saw_prefixed = false;
  for (const auto& [key, value] : controller.Store()) {
    EXPECT_EQ(key.rfind("tiny/5/", 0), 0u) << key;
    saw_prefixed = true;
  }
  EXPECT_TRUE(saw_prefixed);

  int rc = -1;
  const std::string reference_out =
      RunCommand(std::string(SPARK_MODEL_BIN) + " generate " + Model().string() +
                     " --ids 5,17,3,99,1 --max-tokens 12 --tp 2 --json",
                 &rc);
  ASSERT_EQ(rc, 0) << reference_out;
  const auto reference = nlohmann::json::parse(reference_out.substr(reference_out.find('{')));
  const auto expected_ids = reference["ids"].get<std::vector<int32_t>>();
  ASSERT_FALSE(expected_ids.empty());

  DataClient client(endpoint);
  spark::v1::GenerateRequest request;
  request.set_request_id("r1");
  for (int32_t t : {5, 17, 3, 99, 1}) request.add_prompt_token_ids(t);
  *request.mutable_sampling() = Greedy(12);
  request.mutable_sampling()->set_logprobs(true);
  request.mutable_sampling()->set_top_logprobs(2);
  request.set_echo(true);
  client.Generate(request);
  auto chunks = client.Collect("r1", milliseconds(30000));
  ASSERT_FALSE(chunks.empty()) << "no final chunk";
  std::vector<int32_t> ids;
  for (const auto& c : chunks) {
    ASSERT_EQ(c.logprobs_size(), c.token_ids_size());
    for (int i = 0; i < c.token_ids_size(); ++i) {
      ids.push_back(c.token_ids(i));
      EXPECT_LE(c.logprobs(i).logprob(), 0.0f);
      ASSERT_EQ(c.logprobs(i).top_logprobs_size(), 2);
      // Greedy: the chosen token is the most likely one.
      EXPECT_EQ(c.logprobs(i).top_logprobs(0).token_id(), c.token_ids(i));
      EXPECT_FLOAT_EQ(c.logprobs(i).top_logprobs(0).logprob(), c.logprobs(i).logprob());
    }
  }
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(std::vector<int32_t>(chunks.front().echo_token_ids().begin(),
                                 chunks.front().echo_token_ids().end()),
            (std::vector<int32_t>{5, 17, 3, 99, 1}));
  const auto& last = chunks.back();
  EXPECT_EQ(last.finish_reason(), reference["finish_reason"] == "stop"
                                      ? spark::v1::FINISH_REASON_STOP
                                      : spark::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), 5u);
  EXPECT_EQ(last.usage().completion_tokens(), expected_ids.size());
  EXPECT_TRUE(last.has_timings());
  EXPECT_GT(last.timings().time_to_first_token_ms(), 0.0);
  EXPECT_GE(last.timings().decode_ms(), 0.0);
  // One token per step: every chunk before the last carries exactly one token.
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_EQ(chunks[i].token_ids_size(), 1);
}

TEST_F(SparkShardTest, CancelStopsALongRequestAndBadRequestsGetErrorChunks) {
  FakeController controller(2);
  const std::string endpoint = StartGroup(controller, 2);
  ASSERT_FALSE(endpoint.empty());
  DataClient client(endpoint);

  spark::v1::GenerateRequest request;
  request.set_request_id("long");
  for (int32_t t : {7, 8, 9}) request.add_prompt_token_ids(t);
  *request.mutable_sampling() = Greedy(4000);
  request.mutable_sampling()->set_ignore_eos(true);
  client.Generate(request);
  auto first = client.Next("long", milliseconds(30000));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->finish_reason(), spark::v1::FINISH_REASON_NONE);
  client.Cancel("long");
  std::optional<spark::v1::TokenChunk> last;
  const auto until = SteadyClock::now() + milliseconds(10000);
  while (SteadyClock::now() < until) {
    last = client.Next("long", milliseconds(10000));
    if (!last || last->finish_reason() != spark::v1::FINISH_REASON_NONE) break;
  }
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->finish_reason(), spark::v1::FINISH_REASON_CANCELLED);
  EXPECT_LT(last->usage().completion_tokens(), 4000u);

  // A cancel for an id the shard does not know.
  client.Cancel("nobody");
  auto unknown = client.Next("nobody", milliseconds(10000));
  ASSERT_TRUE(unknown.has_value());
  EXPECT_EQ(unknown->finish_reason(), spark::v1::FINISH_REASON_ERROR);
  EXPECT_NE(unknown->error_message().find("unknown request_id"), std::string::npos);

  // Invalid sampling (max_tokens 0: the shard applies no defaults).
  spark::v1::GenerateRequest bad;
  bad.set_request_id("bad");
  bad.add_prompt_token_ids(3);
  *bad.mutable_sampling() = Greedy(0);
  client.Generate(bad);
  auto bad_chunk = client.Next("bad", milliseconds(10000));
  ASSERT_TRUE(bad_chunk.has_value());
  EXPECT_EQ(bad_chunk->finish_reason(), spark::v1::FINISH_REASON_ERROR);
  EXPECT_NE(bad_chunk->error_message().find("max_tokens"), std::string::npos)
      << bad_chunk->error_message();

  // A token outside the vocabulary.
  spark::v1::GenerateRequest oov;
  oov.set_request_id("oov");
  oov.add_prompt_token_ids(1 << 30);
  *oov.mutable_sampling() = Greedy(4);
  client.Generate(oov);
  auto oov_chunk = client.Next("oov", milliseconds(10000));
  ASSERT_TRUE(oov_chunk.has_value());
  EXPECT_EQ(oov_chunk->finish_reason(), spark::v1::FINISH_REASON_ERROR);

  // The group still serves afterwards.
  spark::v1::GenerateRequest after;
  after.set_request_id("after");
  after.add_prompt_token_ids(4);
  *after.mutable_sampling() = Greedy(3);
  after.mutable_sampling()->set_ignore_eos(true);
  client.Generate(after);
  auto chunks = client.Collect("after", milliseconds(30000));
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back().finish_reason(), spark::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 3u);
}

TEST_F(SparkShardTest, ARankThatNeverStartsFailsRankZeroWithinTheDeadlineNamingIt) {
  FakeController controller(2);
  auto a = Assignment(0, 2);
  a.mutable_rendezvous()->set_timeout_ms(2000);
  const auto start = SteadyClock::now();
  Process* rank0 = Start(a, controller);
  auto failed = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, milliseconds(15000));
  const auto elapsed = std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start);
  ASSERT_TRUE(failed.has_value());
  EXPECT_NE(failed->failure_reason().find("rank 1"), std::string::npos) << failed->failure_reason();
  EXPECT_EQ(failed->exit_status(), 3);
  EXPECT_LT(elapsed.count(), 2000 + 5000) << "took " << elapsed.count() << " ms";
  const ExitInfo info = WaitExit(rank0, milliseconds(10000));
  EXPECT_EQ(info, ExitInfo::Code(3));
}

TEST_F(SparkShardTest, APeerThatFailsToLoadFailsTheGroupNamingIt) {
  FakeController controller(2);
  auto a0 = Assignment(0, 2);
  auto a1 = Assignment(1, 2);
  a1.set_model_path((dir_ / "missing-model").string());
  Process* rank0 = Start(a0, controller);
  Process* rank1 = Start(a1, controller);
  auto failed1 = controller.WaitForPhase(1, spark::v1::SHARD_PHASE_FAILED, kReadyTimeout);
  ASSERT_TRUE(failed1.has_value());
  EXPECT_NE(failed1->failure_reason().find("missing-model"), std::string::npos)
      << failed1->failure_reason();
  auto failed0 = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, kReadyTimeout);
  ASSERT_TRUE(failed0.has_value());
  EXPECT_NE(failed0->failure_reason().find("rank 1"), std::string::npos)
      << failed0->failure_reason();
  EXPECT_EQ(WaitExit(rank0, milliseconds(10000)), ExitInfo::Code(4));
  EXPECT_EQ(WaitExit(rank1, milliseconds(10000)), ExitInfo::Code(4));
}

TEST_F(SparkShardTest, SigtermStopsTheGroupCleanly) {
  FakeController controller(2);
  ASSERT_FALSE(StartGroup(controller, 2).empty());
  ASSERT_TRUE(shards_[0]->Kill(SIGTERM).ok());
  EXPECT_EQ(WaitExit(shards_[0].get(), milliseconds(15000)), ExitInfo::Code(0));
  EXPECT_EQ(WaitExit(shards_[1].get(), milliseconds(15000)), ExitInfo::Code(0));
  auto stopped0 = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_STOPPED, milliseconds(5000));
  auto stopped1 = controller.WaitForPhase(1, spark::v1::SHARD_PHASE_STOPPED, milliseconds(5000));
  ASSERT_TRUE(stopped0.has_value());
  ASSERT_TRUE(stopped1.has_value());
  EXPECT_EQ(stopped0->exit_status(), 0);
  EXPECT_TRUE(controller.Statuses(0).back().phase() == spark::v1::SHARD_PHASE_STOPPED);
}

TEST_F(SparkShardTest, EveryReportIsWrittenToTheAgentsStatusFile) {
  FakeController controller(1);
  const fs::path status_file = dir_ / "rank0.status";
  Process* shard = Start(Assignment(0, 1), controller, {"--insecure"},
                         {{"SPARK_SHARD_STATUS_FILE", status_file.string()}});
  auto ready = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
  ASSERT_TRUE(ready.has_value());
  auto written = agent::ReadShardStatusFile(status_file.string());
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  EXPECT_EQ(written->phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_EQ(written->data_endpoint(), ready->data_endpoint());
  EXPECT_FALSE(written->data_endpoint().empty());
  EXPECT_EQ(written->deployment(), "tiny");
  EXPECT_EQ(written->generation(), 5u);
  EXPECT_EQ(written->pid(), shard->pid());

  ASSERT_TRUE(shard->Kill(SIGTERM).ok());
  EXPECT_EQ(WaitExit(shard, milliseconds(15000)), ExitInfo::Code(0));
  auto stopped = agent::ReadShardStatusFile(status_file.string());
  ASSERT_TRUE(stopped.ok()) << stopped.status().ToString();
  EXPECT_EQ(stopped->phase(), spark::v1::SHARD_PHASE_STOPPED);
  EXPECT_EQ(stopped->exit_status(), 0);
}

TEST_F(SparkShardTest, SigtermToEveryRankAtOnceStopsEachCleanly) {
  FakeController controller(2);
  ASSERT_FALSE(StartGroup(controller, 2).empty());
  // As spark-agent does on undeploy: every rank gets SIGTERM at about the same time.
  ASSERT_TRUE(shards_[1]->Kill(SIGTERM).ok());
  ASSERT_TRUE(shards_[0]->Kill(SIGTERM).ok());
  EXPECT_EQ(WaitExit(shards_[0].get(), milliseconds(15000)), ExitInfo::Code(0));
  EXPECT_EQ(WaitExit(shards_[1].get(), milliseconds(15000)), ExitInfo::Code(0));
  // The last report may still be in flight when the process is gone.
  for (uint32_t rank : {0u, 1u}) {
    EXPECT_TRUE(controller.WaitForPhase(rank, spark::v1::SHARD_PHASE_STOPPED, milliseconds(5000))
                    .has_value())
        << "rank " << rank;
    auto statuses = controller.Statuses(rank);
    ASSERT_FALSE(statuses.empty());
    EXPECT_EQ(statuses.back().phase(), spark::v1::SHARD_PHASE_STOPPED) << "rank " << rank;
  }
}

TEST_F(SparkShardTest, DummyWeightsServeTheSameTokensAsSparkModelDummy) {
  FakeController controller(1);
  auto a = Assignment(0, 1);
  a.mutable_options()->set_load_format(spark::v1::LOAD_FORMAT_DUMMY);
  Start(a, controller);
  auto ready = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
  ASSERT_TRUE(ready.has_value());

  int rc = -1;
  const std::string reference_out =
      RunCommand(std::string(SPARK_MODEL_BIN) + " generate " + Model().string() +
                     " --dummy --ids 9,8,7 --max-tokens 6 --ignore-eos --json",
                 &rc);
  ASSERT_EQ(rc, 0) << reference_out;
  const auto reference = nlohmann::json::parse(reference_out.substr(reference_out.find('{')));
  const auto expected_ids = reference["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expected_ids.size(), 6u);

  DataClient client(ready->data_endpoint());
  spark::v1::GenerateRequest request;
  request.set_request_id("dummy");
  for (int32_t t : {9, 8, 7}) request.add_prompt_token_ids(t);
  *request.mutable_sampling() = Greedy(6);
  request.mutable_sampling()->set_ignore_eos(true);
  client.Generate(request);
  auto chunks = client.Collect("dummy", milliseconds(30000));
  ASSERT_FALSE(chunks.empty());
  std::vector<int32_t> ids;
  for (const auto& c : chunks) ids.insert(ids.end(), c.token_ids().begin(), c.token_ids().end());
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(chunks.back().finish_reason(), spark::v1::FINISH_REASON_LENGTH);
}

TEST_F(SparkShardTest, SigtermDuringRendezvousReportsStopped) {
  FakeController controller(2);
  Process* rank0 = Start(Assignment(0, 2), controller);
  ASSERT_TRUE(controller.WaitForPhase(0, spark::v1::SHARD_PHASE_RENDEZVOUS, milliseconds(15000)));
  ASSERT_TRUE(rank0->Kill(SIGTERM).ok());
  EXPECT_EQ(WaitExit(rank0, milliseconds(5000)), ExitInfo::Code(0));
  EXPECT_TRUE(controller.WaitForPhase(0, spark::v1::SHARD_PHASE_STOPPED, milliseconds(2000)));
}

TEST_F(SparkShardTest, AHungCollectiveTripsTheWatchdog) {
  FakeController controller(2);
  const std::string endpoint = StartGroup(controller, 2, {{"step_timeout_ms", "1500"}});
  ASSERT_FALSE(endpoint.empty());
  ASSERT_TRUE(shards_[1]->Kill(SIGSTOP).ok());
  DataClient client(endpoint);
  spark::v1::GenerateRequest request;
  request.set_request_id("hung");
  request.add_prompt_token_ids(5);
  *request.mutable_sampling() = Greedy(8);
  const auto start = SteadyClock::now();
  client.Generate(request);
  auto failed = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, milliseconds(15000));
  const auto elapsed = std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start);
  ASSERT_TRUE(failed.has_value());
  EXPECT_NE(failed->failure_reason().find("collective hung"), std::string::npos)
      << failed->failure_reason();
  EXPECT_GE(elapsed.count(), 1400);
  EXPECT_LT(elapsed.count(), 1500 + 4000);
  EXPECT_EQ(WaitExit(shards_[0].get(), milliseconds(5000)), ExitInfo::Code(6));
}

TEST_F(SparkShardTest, TheCudaBackendIsRefusedClearly) {
#if defined(SPARK_HAVE_CUDA)
  GTEST_SKIP() << "this spark-shard has the CUDA backend (tests/gpu/cluster_gpu.sh runs it)";
#endif
  FakeController controller(1);
  auto a = Assignment(0, 1);
  a.set_backend(spark::v1::BACKEND_CUDA);
  Process* shard = Start(a, controller);
  auto failed = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, milliseconds(15000));
  ASSERT_TRUE(failed.has_value());
  EXPECT_NE(failed->failure_reason().find("not supported yet: the CUDA backend is not built"),
            std::string::npos);
  EXPECT_NE(failed->failure_reason().find("built without CUDA"), std::string::npos)
      << failed->failure_reason();
  EXPECT_EQ(WaitExit(shard, milliseconds(5000)), ExitInfo::Code(5));
}

TEST_F(SparkShardTest, AnFp8KvCacheIsRefusedOnTheCpuBackend) {
  FakeController controller(1);
  auto a = Assignment(0, 1);
  (*a.mutable_options()->mutable_extra())["kv_cache_dtype"] = "fp8";
  Process* shard = Start(a, controller);
  auto failed = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, milliseconds(15000));
  ASSERT_TRUE(failed.has_value());
  EXPECT_NE(
      failed->failure_reason().find("kv_cache_dtype=fp8 is not supported on the CPU backend yet"),
      std::string::npos)
      << failed->failure_reason();
  EXPECT_EQ(WaitExit(shard, milliseconds(5000)), ExitInfo::Code(5));
}

TEST_F(SparkShardTest, SpeculativeDecodingOnAModelWithoutMtpIsRefusedBeforeTheRendezvous) {
  FakeController controller(1);
  auto a = Assignment(0, 1);
  a.mutable_options()->mutable_speculative()->set_steps(2);
  Process* shard = Start(a, controller);
  auto failed = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_FAILED, milliseconds(15000));
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->failure_reason(),
            "model " + Model().string() +
                " has no MTP layer (num_nextn_predict_layers = 0): deploy without speculative");
  EXPECT_EQ(DistinctPhases(controller.Statuses(0)),
            (std::vector<spark::v1::ShardPhase>{spark::v1::SHARD_PHASE_STARTING,
                                                spark::v1::SHARD_PHASE_FAILED}));
  EXPECT_EQ(WaitExit(shard, milliseconds(5000)), ExitInfo::Code(2));
}

TEST_F(SparkShardTest, SpeculativeTwoRanksServeTheGreedyTokensAndReportTheirCounters) {
  FakeController controller(2);
  for (uint32_t r = 0; r < 2; ++r) {
    auto a = Assignment(r, 2);
    a.set_model_path(MtpModel().string());
    a.mutable_options()->mutable_speculative()->set_steps(2);
    a.mutable_options()->mutable_speculative()->set_topk(1);
    a.mutable_options()->mutable_speculative()->set_draft_tokens(3);
    Start(a, controller);
  }
  auto ready = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
  ASSERT_TRUE(ready.has_value());
  ASSERT_TRUE(controller.WaitForPhase(1, spark::v1::SHARD_PHASE_READY, kReadyTimeout).has_value());
  EXPECT_FALSE(ready->has_speculative());

  int rc = -1;
  const std::string reference_out =
      RunCommand(std::string(SPARK_MODEL_BIN) + " generate " + MtpModel().string() +
                     " --ids 5,17,3,99,1 --max-tokens 16 --ignore-eos --tp 2 --json",
                 &rc);
  ASSERT_EQ(rc, 0) << reference_out;
  const auto reference = nlohmann::json::parse(reference_out.substr(reference_out.find('{')));
  const auto expected_ids = reference["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expected_ids.size(), 16u);

  DataClient client(ready->data_endpoint());
  spark::v1::GenerateRequest request;
  request.set_request_id("spec");
  for (int32_t t : {5, 17, 3, 99, 1}) request.add_prompt_token_ids(t);
  *request.mutable_sampling() = Greedy(16);
  request.mutable_sampling()->set_ignore_eos(true);
  client.Generate(request);
  auto chunks = client.Collect("spec", milliseconds(30000));
  ASSERT_FALSE(chunks.empty()) << "no final chunk";
  std::vector<int32_t> ids;
  for (const auto& c : chunks) ids.insert(ids.end(), c.token_ids().begin(), c.token_ids().end());
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(chunks.back().finish_reason(), spark::v1::FINISH_REASON_LENGTH);

  // Rank 0 repeats READY with its counters (about once a second while they change).
  std::optional<spark::v1::SpeculativeStats> stats;
  const auto until = SteadyClock::now() + milliseconds(10000);
  while (SteadyClock::now() < until) {
    for (const auto& s : controller.Statuses(0)) {
      if (s.has_speculative()) {
        EXPECT_EQ(s.phase(), spark::v1::SHARD_PHASE_READY);
        stats = s.speculative();
      }
    }
    if (stats && stats->drafted_tokens() > 0) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(stats.has_value()) << "rank 0 never reported speculative counters";
  EXPECT_GT(stats->verify_steps(), 0u);
  EXPECT_GT(stats->drafted_tokens(), 0u);
  EXPECT_LE(stats->accepted_tokens(), stats->drafted_tokens());
  // A chain of 2 drafts verifies at most 2 draft tokens per step.
  EXPECT_LE(stats->drafted_tokens(), 2 * stats->verify_steps());
  EXPECT_LE(stats->emitted_tokens(), 16u);
  EXPECT_GT(stats->verify_ms(), 0.0);
  for (const auto& s : controller.Statuses(1)) EXPECT_FALSE(s.has_speculative());
}

TEST_F(SparkShardTest, SpeculativeTreeOnOneRankServesTheGreedyTokens) {
  FakeController controller(1);
  auto a = Assignment(0, 1);
  a.set_model_path(MtpModel().string());
  a.mutable_options()->mutable_speculative()->set_steps(2);
  a.mutable_options()->mutable_speculative()->set_topk(2);
  a.mutable_options()->mutable_speculative()->set_draft_tokens(5);
  Start(a, controller);
  auto ready = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
  ASSERT_TRUE(ready.has_value());

  int rc = -1;
  const std::string reference_out =
      RunCommand(std::string(SPARK_MODEL_BIN) + " generate " + MtpModel().string() +
                     " --ids 9,8,7 --max-tokens 12 --ignore-eos --json",
                 &rc);
  ASSERT_EQ(rc, 0) << reference_out;
  const auto reference = nlohmann::json::parse(reference_out.substr(reference_out.find('{')));
  const auto expected_ids = reference["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(expected_ids.size(), 12u);

  DataClient client(ready->data_endpoint());
  spark::v1::GenerateRequest request;
  request.set_request_id("tree");
  for (int32_t t : {9, 8, 7}) request.add_prompt_token_ids(t);
  *request.mutable_sampling() = Greedy(12);
  request.mutable_sampling()->set_ignore_eos(true);
  client.Generate(request);
  auto chunks = client.Collect("tree", milliseconds(30000));
  ASSERT_FALSE(chunks.empty()) << "no final chunk";
  std::vector<int32_t> ids;
  for (const auto& c : chunks) ids.insert(ids.end(), c.token_ids().begin(), c.token_ids().end());
  EXPECT_EQ(ids, expected_ids);

  std::optional<spark::v1::SpeculativeStats> stats;
  const auto until = SteadyClock::now() + milliseconds(10000);
  while (SteadyClock::now() < until && !(stats && stats->drafted_tokens() > 0)) {
    for (const auto& s : controller.Statuses(0)) {
      if (s.has_speculative()) stats = s.speculative();
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(stats.has_value());
  // A tree of 5 nodes verifies at most 4 draft tokens per step.
  EXPECT_GT(stats->drafted_tokens(), 0u);
  EXPECT_LE(stats->drafted_tokens(), 4 * stats->verify_steps());
}

TEST_F(SparkShardTest, CurveSecuresTheControllerLinkAndTheDataPlane) {
  const CurveKeyPair agent = GenerateCurveKeyPair().value();
  const CurveKeyPair controller_keys = GenerateCurveKeyPair().value();
  const fs::path keys = dir_ / "keys";
  fs::create_directories(keys);
  ASSERT_TRUE(WriteCurveSecretKeyFile(keys / "agent.key", agent).ok());
  ASSERT_TRUE(WriteCurvePublicKeyFile(keys / "controller.pub", controller_keys.public_key).ok());
  FakeController controller(1, controller_keys, {agent.public_key});
  Start(Assignment(0, 1), controller, {"--keys", keys.string()});
  auto ready = controller.WaitForPhase(0, spark::v1::SHARD_PHASE_READY, kReadyTimeout);
  ASSERT_TRUE(ready.has_value());

  spark::v1::GenerateRequest request;
  request.set_request_id("secure");
  request.add_prompt_token_ids(11);
  *request.mutable_sampling() = Greedy(2);
  request.mutable_sampling()->set_ignore_eos(true);
  {
    DataClient trusted(ready->data_endpoint(), &controller_keys, agent.public_key);
    trusted.Generate(request);
    auto chunks = trusted.Collect("secure", milliseconds(30000));
    ASSERT_FALSE(chunks.empty());
    EXPECT_EQ(chunks.back().usage().completion_tokens(), 2u);
  }
  // A client whose key the shard does not trust gets nothing through.
  const CurveKeyPair stranger = GenerateCurveKeyPair().value();
  DataClient untrusted(ready->data_endpoint(), &stranger, agent.public_key);
  spark::v1::Envelope envelope;
  *envelope.mutable_generate_request() = request;
  untrusted.Send(std::move(envelope)).IgnoreError();
  EXPECT_FALSE(untrusted.Next("secure", milliseconds(1500)).has_value());
}

}  // namespace
}  // namespace spark::shard
