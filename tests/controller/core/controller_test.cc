// The Controller driven end to end through its agent plane by fake agents and shards (DEALER
// sockets speaking the proto), a fake rank-0 data plane, a real store and a manual clock.
#include "controller/controller.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <future>
#include <memory>

#include "common/clock.h"
#include "controller/trusted_keys.h"
#include "tests/controller/core/fakes.h"

namespace spark::controller {
namespace {

using std::chrono::milliseconds;
using testing::FakeAgent;
using testing::FakeDataPlane;
using testing::FakeShard;
using ::testing::HasSubstr;
using testing::Summary;
using testing::Sync;
using testing::TempDir;
using Envelope = spark::v1::Envelope;

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::StoreOptions store_options;
    store_options.path = dir_.File("controller.db");
    Result<std::unique_ptr<store::Store>> store = store::Store::Open(store_options, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    StartController();
  }

  void TearDown() override { controller_.reset(); }

  virtual ControllerOptions Options() {
    ControllerOptions options;
    options.agent_listen = "tcp://127.0.0.1:*";
    options.insecure = true;
    options.heartbeat_interval = milliseconds(1000);
    options.max_poll_wait = milliseconds(5);
    options.spawn_timeout = milliseconds(10000);
    options.stop_grace = milliseconds(2000);
    options.restart.budget = 3;
    return options;
  }

  void StartController() {
    controller_ = std::make_unique<Controller>(Options(), *store_, clock_);
    Status st = controller_->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
    endpoint_ = controller_->agent_endpoint();
  }

  std::unique_ptr<FakeAgent> Agent(const std::string& node, const std::string& boot = "boot-1") {
    auto agent = std::make_unique<FakeAgent>(context_, node, endpoint_, boot);
    EXPECT_TRUE(agent->Register().has_value()) << node << " got no RegistrationAck";
    return agent;
  }

  Result<DeploymentView> Deploy(const std::string& name, int tp,
                                nlohmann::json options = nlohmann::json::object(),
                                std::vector<std::string> nodes = {}) {
    DeployRequest request;
    request.name = name;
    request.model_path = "/models/tiny";
    request.tp = tp;
    request.options = std::move(options);
    request.nodes = std::move(nodes);
    return Sync<Result<DeploymentView>>(
        [&](auto done) { controller_->Deploy(request, std::move(done)); });
  }

  Result<DeploymentView> Get(const std::string& name) {
    return Sync<Result<DeploymentView>>(
        [&](auto done) { controller_->GetDeployment(name, std::move(done)); });
  }

  std::vector<NodeView> Nodes() {
    return Sync<std::vector<NodeView>>([&](auto done) { controller_->ListNodes(std::move(done)); });
  }

  std::string NodeState(const std::string& name) {
    for (const NodeView& n : Nodes()) {
      if (n.name == name) return n.state;
    }
    return "missing";
  }

  store::DeploymentState State(const std::string& name) {
    Result<DeploymentView> view = Get(name);
    EXPECT_TRUE(view.ok()) << view.status().ToString();
    return view.ok() ? view->record.state : store::DeploymentState::kStopped;
  }

  Controller::Stats Stats() {
    return *controller_->Call<Controller::Stats>([this] { return controller_->stats(); });
  }

  static bool WaitUntil(const std::function<bool()>& predicate,
                        milliseconds timeout = milliseconds(5000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (predicate()) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return predicate();
  }

  // Moves the clock on in steps of at most one heartbeat interval; before each step every agent
  // in `beating` heartbeats (listing its shards) and is acknowledged.
  void Advance(milliseconds total, const std::vector<FakeAgent*>& beating) {
    while (total.count() > 0) {
      const milliseconds step = std::min(total, milliseconds(1000));
      for (FakeAgent* agent : beating) {
        ASSERT_TRUE(agent->Heartbeat().has_value()) << agent->node() << ": no HeartbeatAck";
      }
      clock_.Advance(step);
      total -= step;
    }
  }

  std::vector<spark::v1::ShardAssignment> Assignments(const std::vector<FakeAgent*>& agents) {
    std::vector<spark::v1::ShardAssignment> assignments;
    for (FakeAgent* agent : agents) {
      std::optional<Envelope> e = agent->WaitFor(Envelope::kShardAssignment);
      EXPECT_TRUE(e.has_value()) << agent->node() << " got no assignment";
      if (!e) return {};
      EXPECT_EQ(e->generation(), e->shard_assignment().generation());
      assignments.push_back(e->shard_assignment());
    }
    return assignments;
  }

  // Reports every rank STARTING then READY (rank 0 with the fake data plane) and waits for the
  // deployment to be ready after the first generation.
  void BringUp(const std::string& name, const std::vector<FakeAgent*>& agents,
               const std::vector<spark::v1::ShardAssignment>& assignments) {
    for (size_t i = 0; i < agents.size(); ++i) {
      agents[i]->Status(assignments[i], spark::v1::SHARD_PHASE_STARTING);
    }
    for (size_t i = 0; i < agents.size(); ++i) {
      agents[i]->Status(assignments[i], spark::v1::SHARD_PHASE_READY,
                        assignments[i].rank() == 0 ? data_.endpoint() : "");
    }
    ASSERT_TRUE(WaitUntil([&] { return State(name) == store::DeploymentState::kReady; }))
        << "state " << store::DeploymentStateName(State(name));
  }

  std::vector<store::RunRecord> Runs(const std::string& name) {
    store::RunFilter filter;
    filter.deployment = name;
    Result<std::vector<store::RunRecord>> runs =
        store_->Read([&](store::ReadTxn& txn) { return txn.ListRuns(filter); });
    EXPECT_TRUE(runs.ok());
    return runs.ok() ? *runs : std::vector<store::RunRecord>{};
  }

  std::vector<store::EventRecord> Events() {
    Result<std::vector<store::EventRecord>> events =
        store_->Read([](store::ReadTxn& txn) { return txn.ListEvents(0, 10000); });
    EXPECT_TRUE(events.ok());
    return events.ok() ? *events : std::vector<store::EventRecord>{};
  }

  bool HasEvent(const std::string& kind, const std::string& text) {
    for (const auto& e : Events()) {
      if (e.kind == kind && e.message.find(text) != std::string::npos) return true;
    }
    return false;
  }

  ManualClock clock_;
  TempDir dir_;
  ZmqContext context_;
  FakeDataPlane data_{context_};
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Controller> controller_;
  std::string endpoint_;
};

TEST_F(ControllerTest, RegistrationIsAcknowledgedAndStored) {
  auto agent = std::make_unique<FakeAgent>(context_, "a", endpoint_);
  std::optional<Envelope> ack = agent->Register();
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->registration_ack().heartbeat_interval_ms(), 1000u);
  EXPECT_EQ(ack->sender_id(), "controller");
  std::optional<Envelope> hb = agent->Heartbeat();
  ASSERT_TRUE(hb.has_value());
  EXPECT_GT(hb->heartbeat_ack().acked_sequence(), 0u);
  EXPECT_EQ(NodeState("a"), "alive");
  Result<store::NodeRecord> node =
      store_->Read([](store::ReadTxn& txn) { return txn.GetNode("a"); });
  ASSERT_TRUE(WaitUntil(
      [&] { return store_->Read([](store::ReadTxn& txn) { return txn.GetNode("a"); }).ok(); }));
  node = store_->Read([](store::ReadTxn& txn) { return txn.GetNode("a"); });
  EXPECT_EQ(node->boot_id, "boot-1");
  EXPECT_EQ(node->backend, "cpu");
  EXPECT_THAT(node->facts_json, HasSubstr("NCCL_SOCKET_IFNAME"));
}

TEST_F(ControllerTest, NodeIsDeadAfterThreeMissedHeartbeats) {
  auto a = Agent("a");
  Advance(milliseconds(1000), {a.get()});  // last heard at t=0 -> t=1 s
  ASSERT_TRUE(a->Heartbeat().has_value());
  clock_.Advance(milliseconds(2999));
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_EQ(NodeState("a"), "alive");
  clock_.Advance(milliseconds(1));
  ASSERT_TRUE(WaitUntil([&] { return NodeState("a") == "dead"; }));
  EXPECT_TRUE(WaitUntil([&] { return HasEvent("node_dead", "missed 3 heartbeats"); }));
  // A heartbeat of a dead node is refused: the agent must register again.
  a->SendHeartbeatNoWait();
  std::optional<Envelope> error = a->WaitFor(Envelope::kError);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->error().code(), spark::v1::ERROR_CODE_NOT_FOUND);
  ASSERT_TRUE(a->Register().has_value());
  EXPECT_EQ(NodeState("a"), "alive");
}

TEST_F(ControllerTest, DeployPlacesRanksAndBecomesReadyAfterTheFirstGeneration) {
  auto a = Agent("a");
  auto b = Agent("b");
  auto c = Agent("c");
  c->set_preflight_failure("model_dir");
  ASSERT_TRUE(c->Register().has_value());  // c is not eligible
  Result<DeploymentView> deployed = Deploy("m", 2, {{"max_batch", 4}});
  ASSERT_TRUE(deployed.ok()) << deployed.status().ToString();
  auto assignments = Assignments({a.get(), b.get()});
  ASSERT_EQ(assignments.size(), 2u);
  EXPECT_TRUE(c->NothingOf(Envelope::kShardAssignment, milliseconds(50)));
  for (uint32_t rank = 0; rank < 2; ++rank) {
    const auto& x = assignments[rank];
    EXPECT_EQ(x.deployment(), "m");
    EXPECT_EQ(x.generation(), 1u);
    EXPECT_EQ(x.rank(), rank);
    EXPECT_EQ(x.world_size(), 2u);
    EXPECT_EQ(x.model_path(), "/models/tiny");
    EXPECT_EQ(x.backend(), spark::v1::BACKEND_CPU);
    EXPECT_EQ(x.options().tp(), 2u);
    EXPECT_EQ(x.options().max_batch(), 4u);
    EXPECT_EQ(x.rendezvous().kind(), spark::v1::RENDEZVOUS_KIND_GLOO);
    EXPECT_EQ(x.rendezvous().key_prefix(), "m/1/");
    EXPECT_EQ(x.nccl_env().at("NCCL_NVLS_ENABLE"), "0");
    EXPECT_EQ(x.nccl_env().at("NCCL_SOCKET_IFNAME"), "lo");
  }
  EXPECT_EQ(State("m"), store::DeploymentState::kLoading);
  std::vector<store::RunRecord> runs = Runs("m");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].placement, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(runs[0].state, store::RunState::kStarting);

  // All READY: not ready until the first generation succeeded.
  a->Status(assignments[0], spark::v1::SHARD_PHASE_READY, data_.endpoint());
  b->Status(assignments[1], spark::v1::SHARD_PHASE_LOADING);
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_TRUE(data_.requests().empty());
  b->Status(assignments[1], spark::v1::SHARD_PHASE_READY);
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kReady; }));
  std::vector<spark::v1::GenerateRequest> probes = data_.requests();
  ASSERT_EQ(probes.size(), 1u);
  EXPECT_EQ(probes[0].sampling().temperature(), 0.0f);
  EXPECT_EQ(probes[0].sampling().max_tokens(), 2u);
  EXPECT_GT(probes[0].prompt_token_ids_size(), 0);
  Result<DeploymentView> view = Get("m");
  EXPECT_TRUE(view->serving);
  EXPECT_EQ(view->record.generation, 1);
  ASSERT_EQ(view->members.size(), 2u);
  EXPECT_EQ(view->members[1].node, "b");
  EXPECT_EQ(view->members[1].phase, store::MemberPhase::kReady);
  EXPECT_TRUE(WaitUntil([&] { return Runs("m")[0].state == store::RunState::kReady; }));

  // The data path: a generation through the controller.
  spark::v1::GenerateRequest request;
  request.add_prompt_token_ids(5);
  request.mutable_sampling()->set_max_tokens(2);
  auto done = std::make_shared<std::promise<std::vector<int>>>();
  auto tokens = std::make_shared<std::vector<int>>();
  controller_->Generate("m", request, [done, tokens](Result<spark::v1::TokenChunk> chunk) {
    if (!chunk.ok()) return done->set_value({-1});
    for (int t : chunk->token_ids()) tokens->push_back(t);
    if (IsFinalChunk(*chunk)) done->set_value(*tokens);
  });
  auto future = done->get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(future.get(), (std::vector<int>{11, 12}));
}

TEST_F(ControllerTest, SpeculativeCountersShowOnceRankZeroReportsThemWithoutOptions) {
  // No speculative option (the automatic mode): no counters until rank 0 reports some, as a
  // shard whose backend and checkpoint turned speculation on does.
  auto a = Agent("a");
  Result<DeploymentView> deployed = Deploy("m", 1);
  ASSERT_TRUE(deployed.ok()) << deployed.status().ToString();
  auto assignments = Assignments({a.get()});
  ASSERT_EQ(assignments.size(), 1u);
  EXPECT_EQ(assignments[0].options().speculative().steps(), 0u);
  EXPECT_EQ(assignments[0].options().speculative().mode(), spark::v1::SPECULATIVE_MODE_AUTO);
  BringUp("m", {a.get()}, assignments);
  EXPECT_FALSE(Get("m")->speculative.has_value());

  spark::v1::Envelope report;
  spark::v1::ShardStatus* s = report.mutable_shard_status();
  s->set_deployment("m");
  s->set_run_id(assignments[0].run_id());
  s->set_generation(assignments[0].generation());
  s->set_rank(0);
  s->set_phase(spark::v1::SHARD_PHASE_READY);
  s->set_pid(1000);
  s->set_data_endpoint(data_.endpoint());
  s->mutable_speculative()->set_verify_steps(7);
  s->mutable_speculative()->set_drafted_tokens(21);
  s->mutable_speculative()->set_accepted_tokens(9);
  a->Send(report, assignments[0].generation());
  ASSERT_TRUE(WaitUntil([&] {
    Result<DeploymentView> v = Get("m");
    return v.ok() && v->speculative.has_value() && v->speculative->verify_steps() == 7;
  }));
  EXPECT_EQ(Get("m")->speculative->drafted_tokens(), 21u);
}

TEST_F(ControllerTest, InFlightRequestsFailWhenTheRunFails) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  data_.set_silent(true);
  spark::v1::GenerateRequest request;
  request.add_prompt_token_ids(1);
  auto result = std::make_shared<std::promise<Status>>();
  controller_->Generate("m", request, [result](Result<spark::v1::TokenChunk> chunk) {
    if (!chunk.ok()) result->set_value(chunk.status());
  });
  ASSERT_TRUE(WaitUntil([&] { return data_.requests().size() == 2; }));  // probe + this one
  b->Status(gen1[1], spark::v1::SHARD_PHASE_FAILED, "", 11);
  auto future = result->get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  Status st = future.get();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("model \"m\" failed: rank 1 on node b failed"));
  EXPECT_THAT(st.message(), HasSubstr("retry"));
}

TEST_F(ControllerTest, GenerateOnAModelThatIsNotReadyIsUnavailable) {
  auto a = Agent("a");
  ASSERT_TRUE(Deploy("m", 1).ok());
  auto result = std::make_shared<std::promise<Status>>();
  controller_->Generate("m", {}, [result](Result<spark::v1::TokenChunk> chunk) {
    result->set_value(chunk.status());
  });
  Status st = result->get_future().get();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_THAT(st.message(), HasSubstr("not ready"));
  auto missing = std::make_shared<std::promise<Status>>();
  controller_->Generate("nope", {}, [missing](Result<spark::v1::TokenChunk> chunk) {
    missing->set_value(chunk.status());
  });
  EXPECT_EQ(missing->get_future().get().code(), StatusCode::kNotFound);
}

TEST_F(ControllerTest, RendezvousIsBrokeredAndATimeoutNamesTheMissingRank) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2, {{"rendezvous_timeout_ms", 5000}}).ok());
  auto assignments = Assignments({a.get(), b.get()});
  ASSERT_EQ(assignments.size(), 2u);
  EXPECT_EQ(assignments[0].rendezvous().timeout_ms(), 5000u);
  FakeShard rank0(context_, "m", 1, 0, endpoint_);
  FakeShard rank1(context_, "m", 1, 1, endpoint_);
  rank0.Publish("m/1/0", "address-of-0");
  rank1.Lookup("m/1/0", 1000);
  std::optional<Envelope> reply = rank1.WaitFor(Envelope::kRendezvousReply);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->rendezvous_reply().found());
  EXPECT_EQ(reply->rendezvous_reply().value(), "address-of-0");
  EXPECT_EQ(reply->generation(), 1u);

  // Rank 1 never publishes: rank 0's lookup fails at the deadline naming it.
  rank0.Lookup("m/1/1", 60000);  // capped at the deployment's 5000 ms
  EXPECT_TRUE(rank0.NothingOf(Envelope::kRendezvousReply, milliseconds(50)));
  Advance(milliseconds(4999), {a.get(), b.get()});
  EXPECT_TRUE(rank0.NothingOf(Envelope::kRendezvousReply, milliseconds(50)));
  Advance(milliseconds(1), {a.get(), b.get()});
  reply = rank0.WaitFor(Envelope::kRendezvousReply);
  ASSERT_TRUE(reply.has_value());
  EXPECT_FALSE(reply->rendezvous_reply().found());
  EXPECT_THAT(reply->rendezvous_reply().error(),
              HasSubstr("ranks that have not joined: 1 (node b)"));

  // A shard that is not a member of the current run gets nothing.
  FakeShard stranger(context_, "m", 7, 0, endpoint_);
  stranger.Lookup("m/1/0", 100);
  EXPECT_TRUE(stranger.NothingOf(Envelope::kRendezvousReply, milliseconds(100)));
}

TEST_F(ControllerTest, ShardFailureEndsTheRunAndRestartsWithBackoff) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);

  b->Status(gen1[1], spark::v1::SHARD_PHASE_FAILED, "", /*signal=*/9);
  std::optional<Envelope> stop = a->WaitFor(Envelope::kStopShard);
  ASSERT_TRUE(stop.has_value());
  EXPECT_EQ(stop->stop_shard().generation(), 1u);
  EXPECT_EQ(stop->stop_shard().rank(), 0u);
  EXPECT_GT(stop->stop_shard().grace_period_ms(), 0u);
  EXPECT_TRUE(b->NothingOf(Envelope::kStopShard, milliseconds(30)));  // already dead
  EXPECT_EQ(State("m"), store::DeploymentState::kRecovering);
  Result<DeploymentView> view = Get("m");
  EXPECT_THAT(view->record.last_error, HasSubstr("rank 1 on node b failed"));
  EXPECT_THAT(view->record.last_error, HasSubstr("SIGKILL"));
  ASSERT_TRUE(WaitUntil([&] { return Runs("m")[0].state == store::RunState::kEnded; }));
  EXPECT_THAT(Runs("m")[0].end_reason, HasSubstr("rank 1 on node b failed"));

  // Backoff 1 s: nothing before, a new generation after.
  Advance(milliseconds(999), {a.get(), b.get()});
  EXPECT_TRUE(a->NothingOf(Envelope::kShardAssignment, milliseconds(50)));
  Advance(milliseconds(1), {a.get(), b.get()});
  auto gen2 = Assignments({a.get(), b.get()});
  ASSERT_EQ(gen2.size(), 2u);
  EXPECT_EQ(gen2[0].generation(), 2u);
  EXPECT_EQ(gen2[1].rank(), 1u);  // previous placement kept
  EXPECT_EQ(Get("m")->record.restarts, 1);

  // Second failure: backoff doubles to 2 s.
  a->Status(gen2[0], spark::v1::SHARD_PHASE_FAILED, "", std::nullopt, /*exit_status=*/3);
  // (still `recovering`: the replacement never became ready)
  ASSERT_TRUE(WaitUntil(
      [&] { return Get("m")->record.last_error.find("exit code 3") != std::string::npos; }));
  EXPECT_EQ(State("m"), store::DeploymentState::kRecovering);
  EXPECT_EQ(Get("m")->run_id, 0);
  Advance(milliseconds(1999), {a.get(), b.get()});
  EXPECT_TRUE(a->NothingOf(Envelope::kShardAssignment, milliseconds(50)));
  Advance(milliseconds(1), {a.get(), b.get()});
  auto gen3 = Assignments({a.get(), b.get()});
  ASSERT_EQ(gen3.size(), 2u);
  EXPECT_EQ(gen3[0].generation(), 3u);
}

TEST_F(ControllerTest, StaleGenerationMessagesAreFenced) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  b->Status(gen1[1], spark::v1::SHARD_PHASE_FAILED, "", 9);
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
  Advance(milliseconds(1000), {a.get(), b.get()});
  auto gen2 = Assignments({a.get(), b.get()});
  ASSERT_EQ(gen2.size(), 2u);
  const uint64_t fenced_before = Stats().fenced_messages;
  // Generation 1 reports (late) READY and FAILED: both dropped, generation 2 unaffected.
  a->Status(gen1[0], spark::v1::SHARD_PHASE_READY, data_.endpoint());
  b->Status(gen1[1], spark::v1::SHARD_PHASE_FAILED, "", 9);
  ASSERT_TRUE(WaitUntil([&] { return Stats().fenced_messages >= fenced_before + 2; }));
  Result<DeploymentView> view = Get("m");
  EXPECT_EQ(view->record.generation, 2);
  EXPECT_EQ(view->run_state, "starting");
  EXPECT_EQ(view->members[0].phase, store::MemberPhase::kAssigned);
  EXPECT_EQ(State("m"), store::DeploymentState::kRecovering);
  BringUp("m", {a.get(), b.get()}, gen2);
  EXPECT_EQ(Get("m")->record.generation, 2);
}

TEST_F(ControllerTest, RestartBudgetExhaustedFailsUntilAnOperatorRestart) {
  auto a = Agent("a");
  ASSERT_TRUE(Deploy("m", 1).ok());
  for (int attempt = 1; attempt <= 4; ++attempt) {
    auto assignment = Assignments({a.get()});
    ASSERT_EQ(assignment.size(), 1u);
    EXPECT_EQ(assignment[0].generation(), static_cast<uint64_t>(attempt));
    a->Status(assignment[0], spark::v1::SHARD_PHASE_FAILED, "", std::nullopt, 1);
    if (attempt == 4) break;
    ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
    Advance(milliseconds(1000 << (attempt - 1)), {a.get()});
  }
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kFailed; }));
  EXPECT_THAT(Get("m")->record.last_error, HasSubstr("restart budget exhausted (3 restarts"));
  Advance(milliseconds(60000), {a.get()});
  EXPECT_TRUE(a->NothingOf(Envelope::kShardAssignment, milliseconds(50)));
  EXPECT_TRUE(WaitUntil([&] { return HasEvent("deployment_failed", "restart budget"); }));

  Result<DeploymentView> restarted =
      Sync<Result<DeploymentView>>([&](auto done) { controller_->Restart("m", std::move(done)); });
  ASSERT_TRUE(restarted.ok());
  auto again = Assignments({a.get()});
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].generation(), 5u);
  BringUp("m", {a.get()}, again);
}

TEST_F(ControllerTest, DeadNodeEndsTheRunAndStopsTheOtherMembers) {
  auto a = Agent("a");
  auto b = Agent("b");
  auto c = Agent("c");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  // b goes silent; a and c keep beating.
  for (int i = 0; i < 3; ++i) Advance(milliseconds(1000), {a.get(), c.get()});
  std::optional<Envelope> stop = a->WaitFor(Envelope::kStopShard);
  ASSERT_TRUE(stop.has_value());
  EXPECT_THAT(stop->stop_shard().reason(), HasSubstr("node b (rank 1) is dead"));
  a->Status(gen1[0], spark::v1::SHARD_PHASE_STOPPED, "", std::nullopt, 0);
  EXPECT_EQ(NodeState("b"), "dead");
  EXPECT_THAT(Get("m")->record.last_error, HasSubstr("missed 3 heartbeats"));
  // The replacement keeps a at rank 0 and takes c for rank 1.
  Advance(milliseconds(1000), {a.get(), c.get()});
  auto gen2 = Assignments({a.get(), c.get()});
  ASSERT_EQ(gen2.size(), 2u);
  EXPECT_EQ(gen2[0].rank(), 0u);
  EXPECT_EQ(gen2[1].rank(), 1u);
  EXPECT_EQ(gen2[1].generation(), 2u);
  BringUp("m", {a.get(), c.get()}, gen2);

  // b comes back still running its generation-1 shard: it is told to stop it.
  ASSERT_TRUE(b->Register({Summary(gen1[1], spark::v1::SHARD_PHASE_READY)}).has_value());
  std::optional<Envelope> stale = b->WaitFor(Envelope::kStopShard);
  ASSERT_TRUE(stale.has_value());
  EXPECT_EQ(stale->stop_shard().generation(), 1u);
  EXPECT_EQ(stale->generation(), 1u);
  EXPECT_TRUE(WaitUntil([&] { return HasEvent("stale_shard_stopped", "node b"); }));
  EXPECT_EQ(State("m"), store::DeploymentState::kReady);
}

TEST_F(ControllerTest, RebootedNodeEndsItsRunsAtOnce) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  b->set_boot_id("boot-2");
  b->Reconnect(endpoint_, /*new_incarnation=*/true);
  ASSERT_TRUE(b->Register().has_value());
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
  EXPECT_THAT(Get("m")->record.last_error, HasSubstr("node b rebooted"));
}

TEST_F(ControllerTest, AgentRestartWithoutItsShardEndsTheRun) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  // Heartbeats that list the shards keep the run.
  Advance(milliseconds(2000), {a.get(), b.get()});
  EXPECT_EQ(State("m"), store::DeploymentState::kReady);
  b->Reconnect(endpoint_, /*new_incarnation=*/true);
  ASSERT_TRUE(b->Register().has_value());  // same boot, new agent, no shards
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
  EXPECT_THAT(Get("m")->record.last_error, HasSubstr("rank 1 on node b is no longer running"));
}

TEST_F(ControllerTest, UndeployStopsEveryShardAndForgetsTheModel) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  Result<DeploymentView> undeployed =
      Sync<Result<DeploymentView>>([&](auto done) { controller_->Undeploy("m", std::move(done)); });
  ASSERT_TRUE(undeployed.ok());
  EXPECT_EQ(undeployed->record.state, store::DeploymentState::kStopping);
  ASSERT_TRUE(a->WaitFor(Envelope::kStopShard).has_value());
  ASSERT_TRUE(b->WaitFor(Envelope::kStopShard).has_value());
  a->Status(gen1[0], spark::v1::SHARD_PHASE_STOPPED, "", std::nullopt, 0);
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_TRUE(Get("m").ok());  // b not stopped yet
  b->Status(gen1[1], spark::v1::SHARD_PHASE_STOPPED, "", std::nullopt, 0);
  ASSERT_TRUE(WaitUntil([&] { return Get("m").status().code() == StatusCode::kNotFound; }));
  Result<store::DeploymentRecord> record =
      store_->Read([](store::ReadTxn& txn) { return txn.GetDeployment("m"); });
  ASSERT_TRUE(WaitUntil([&] {
    auto r = store_->Read([](store::ReadTxn& txn) { return txn.GetDeployment("m"); });
    return r.ok() && r->deleted && r->state == store::DeploymentState::kStopped;
  }));
  EXPECT_EQ(Runs("m")[0].end_reason, "undeployed");
  // The name can be deployed again; generations keep growing.
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto again = Assignments({a.get(), b.get()});
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].generation(), 2u);
}

TEST_F(ControllerTest, TwoDeploymentsOnFourNodesDoNotShareNodes) {
  auto a = Agent("a");
  auto b = Agent("b");
  auto c = Agent("c");
  auto d = Agent("d");
  ASSERT_TRUE(Deploy("m1", 2).ok());
  ASSERT_TRUE(Deploy("m2", 2, nlohmann::json::object(), {"d", "c"}).ok());
  auto m1 = Assignments({a.get(), b.get()});
  auto m2 = Assignments({d.get(), c.get()});
  ASSERT_EQ(m1.size(), 2u);
  ASSERT_EQ(m2.size(), 2u);
  EXPECT_EQ(m1[0].deployment(), "m1");
  EXPECT_EQ(m2[0].deployment(), "m2");
  EXPECT_EQ(m2[0].rank(), 0u);  // d holds rank 0 as pinned
  // A third deployment has no free node and says why.
  ASSERT_TRUE(Deploy("m3", 1).ok());
  ASSERT_TRUE(WaitUntil([&] { return !Get("m3")->waiting_reason.empty(); }));
  EXPECT_THAT(Get("m3")->waiting_reason, HasSubstr("used by deployment \"m1\""));
  EXPECT_EQ(State("m3"), store::DeploymentState::kPending);
}

TEST_F(ControllerTest, BadDeployRequestsAreRefused) {
  EXPECT_EQ(Deploy("bad name", 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Deploy("m", 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Deploy("m", 2, nlohmann::json::object(), {"a"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Deploy("m", 1, {{"bogus", 1}}).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(Deploy("m", 1).ok());
  EXPECT_EQ(Deploy("m", 1).status().code(), StatusCode::kAlreadyExists);
}

TEST_F(ControllerTest, SpawnDeadlineFailsARankTheAgentNeverStarted) {
  auto a = Agent("a");
  ASSERT_TRUE(Deploy("m", 1).ok());
  ASSERT_EQ(Assignments({a.get()}).size(), 1u);
  Advance(milliseconds(5000), {a.get()});
  Advance(milliseconds(5000), {a.get()});
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
  EXPECT_THAT(Get("m")->record.last_error,
              HasSubstr("rank 0 on node a: the agent did not start the shard"));
}

TEST_F(ControllerTest, FailedFirstGenerationFailsTheRun) {
  auto a = Agent("a");
  data_.set_fail(true);
  ASSERT_TRUE(Deploy("m", 1).ok());
  auto gen1 = Assignments({a.get()});
  a->Status(gen1[0], spark::v1::SHARD_PHASE_READY, data_.endpoint());
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kRecovering; }));
  EXPECT_THAT(Get("m")->record.last_error, HasSubstr("the first generation failed: boom"));
}

TEST_F(ControllerTest, RestartedControllerAdoptsACompleteReadyGroup) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  const int64_t events_before = static_cast<int64_t>(Events().size());
  ASSERT_TRUE(WaitUntil([&] { return Runs("m")[0].state == store::RunState::kReady; }));

  controller_.reset();
  StartController();
  EXPECT_EQ(State("m"), store::DeploymentState::kLoading);
  EXPECT_EQ(Get("m")->run_state, "adopting");
  a->Reconnect(endpoint_, false);
  b->Reconnect(endpoint_, false);
  ASSERT_TRUE(a->Register({Summary(gen1[0], spark::v1::SHARD_PHASE_READY, data_.endpoint())}));
  EXPECT_EQ(State("m"), store::DeploymentState::kLoading);
  ASSERT_TRUE(b->Register({Summary(gen1[1], spark::v1::SHARD_PHASE_READY)}));
  ASSERT_TRUE(WaitUntil([&] { return State("m") == store::DeploymentState::kReady; }));
  std::vector<store::RunRecord> runs = Runs("m");
  ASSERT_EQ(runs.size(), 1u);  // no new run
  EXPECT_EQ(runs[0].generation, 1);
  EXPECT_EQ(Get("m")->record.generation, 1);
  EXPECT_GT(static_cast<int64_t>(Events().size()), events_before);
  EXPECT_TRUE(a->NothingOf(Envelope::kStopShard, milliseconds(50)));
  EXPECT_TRUE(a->NothingOf(Envelope::kShardAssignment, milliseconds(10)));
}

TEST_F(ControllerTest, RestartedControllerReplacesAnIncompleteGroup) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);

  controller_.reset();
  StartController();
  a->Reconnect(endpoint_, false);
  b->Reconnect(endpoint_, true);
  b->Forget();
  ASSERT_TRUE(a->Register({Summary(gen1[0], spark::v1::SHARD_PHASE_READY, data_.endpoint())}));
  ASSERT_TRUE(b->Register());  // b's shard is gone
  auto gen2 = Assignments({a.get(), b.get()});
  ASSERT_EQ(gen2.size(), 2u);
  EXPECT_EQ(gen2[0].generation(), 2u);
  std::vector<store::RunRecord> runs = Runs("m");
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_THAT(runs[1].end_reason, HasSubstr("controller restart: group incomplete"));
  BringUp("m", {a.get(), b.get()}, gen2);
}

TEST_F(ControllerTest, AdoptionTimesOutWhenAnAgentNeverComesBack) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  BringUp("m", {a.get(), b.get()}, gen1);
  controller_.reset();
  StartController();
  a->Reconnect(endpoint_, false);
  ASSERT_TRUE(a->Register({Summary(gen1[0], spark::v1::SHARD_PHASE_READY, data_.endpoint())}));
  Advance(milliseconds(10000), {a.get()});
  ASSERT_TRUE(WaitUntil([&] { return Runs("m").size() == 1 && Runs("m")[0].ended_at_ms > 0; }));
  EXPECT_THAT(Runs("m")[0].end_reason, HasSubstr("rank 1 on node b"));
  std::optional<Envelope> stop = a->WaitFor(Envelope::kStopShard);
  ASSERT_TRUE(stop.has_value());
  EXPECT_EQ(stop->stop_shard().generation(), 1u);
  // b never registered again: the store records it dead; a stays alive.
  EXPECT_TRUE(WaitUntil([&] {
    auto b_row = store_->Read([](store::ReadTxn& txn) { return txn.GetNode("b"); });
    return b_row.ok() && b_row->state == store::NodeState::kDead;
  }));
  auto a_row = store_->Read([](store::ReadTxn& txn) { return txn.GetNode("a"); });
  ASSERT_TRUE(a_row.ok());
  EXPECT_EQ(a_row->state, store::NodeState::kAlive);
  EXPECT_EQ(NodeState("b"), "unknown");
}

TEST_F(ControllerTest, UnknownShardsReportedByAnAgentAreStopped) {
  auto a = std::make_unique<FakeAgent>(context_, "a", endpoint_);
  spark::v1::ShardSummary orphan;
  orphan.set_deployment("gone");
  orphan.set_generation(4);
  orphan.set_rank(1);
  orphan.set_pid(4242);
  ASSERT_TRUE(a->Register({orphan}).has_value());
  std::optional<Envelope> stop = a->WaitFor(Envelope::kStopShard);
  ASSERT_TRUE(stop.has_value());
  EXPECT_EQ(stop->stop_shard().deployment(), "gone");
  EXPECT_EQ(stop->stop_shard().generation(), 4u);
  EXPECT_EQ(stop->stop_shard().rank(), 1u);
  EXPECT_EQ(Stats().stale_shards_stopped, 1u);
}

TEST_F(ControllerTest, MessagesFromPeersThatDoNotOwnTheRankAreDropped) {
  auto a = Agent("a");
  auto b = Agent("b");
  ASSERT_TRUE(Deploy("m", 2).ok());
  auto gen1 = Assignments({a.get(), b.get()});
  const uint64_t dropped = Stats().dropped_messages;
  a->Status(gen1[1], spark::v1::SHARD_PHASE_FAILED, "", 9);  // a speaks for b's rank
  ASSERT_TRUE(WaitUntil([&] { return Stats().dropped_messages > dropped; }));
  EXPECT_EQ(State("m"), store::DeploymentState::kLoading);
}

class SecureControllerTest : public ControllerTest {
 protected:
  void SetUp() override {
    controller_keys_ = *GenerateCurveKeyPair();
    trusted_ = *GenerateCurveKeyPair();
    untrusted_ = *GenerateCurveKeyPair();
    std::filesystem::create_directories(dir_.path() / "keys" / "trusted");
    ASSERT_TRUE(
        WriteCurveSecretKeyFile(dir_.path() / "keys" / "controller.key", controller_keys_).ok());
    ASSERT_TRUE(
        WriteCurvePublicKeyFile(dir_.path() / "keys" / "trusted" / "a.pub", trusted_.public_key)
            .ok());
    ControllerTest::SetUp();
  }
  ControllerOptions Options() override {
    ControllerOptions options = ControllerTest::Options();
    options.insecure = false;
    options.keys_dir = (dir_.path() / "keys").string();
    return options;
  }
  CurveKeyPair controller_keys_;
  CurveKeyPair trusted_;
  CurveKeyPair untrusted_;
};

TEST_F(SecureControllerTest, OnlyTrustedAgentsGetThrough) {
  FakeAgent good(context_, "a", endpoint_, "boot-1", &trusted_, controller_keys_.public_key);
  ASSERT_TRUE(good.Register().has_value());
  FakeAgent bad(context_, "b", endpoint_, "boot-1", &untrusted_, controller_keys_.public_key);
  spark::v1::Envelope registration;
  registration.mutable_node_registration()->set_node_name("b");
  bad.Send(registration);
  EXPECT_TRUE(bad.NothingOf(Envelope::kRegistrationAck, milliseconds(300)));
  EXPECT_EQ(NodeState("a"), "alive");
  EXPECT_EQ(NodeState("b"), "missing");
}

// `sparkctl keys trust` / `revoke` (controller/trusted_keys.h) change who may join: an unknown
// key is refused at the CURVE handshake, so its frames never reach the controller (not even as
// dropped messages); once trusted, a new connection with it registers; once revoked, a new
// connection is refused again.
TEST_F(SecureControllerTest, KeysTrustedAndRevokedWithSparkctlKeys) {
  const std::string keys_dir = (dir_.path() / "keys").string();
  FakeAgent good(context_, "a", endpoint_, "boot-1", &trusted_, controller_keys_.public_key);
  ASSERT_TRUE(good.Register().has_value());
  const Controller::Stats before = Stats();
  {
    FakeAgent refused(context_, "b", endpoint_, "boot-1", &untrusted_, controller_keys_.public_key);
    spark::v1::Envelope registration;
    registration.mutable_node_registration()->set_node_name("b");
    for (int i = 0; i < 3; ++i) refused.Send(registration);
    EXPECT_TRUE(refused.NothingOf(Envelope::kRegistrationAck, milliseconds(300)));
  }
  EXPECT_EQ(Stats().dropped_messages, before.dropped_messages);
  EXPECT_EQ(NodeState("b"), "missing");

  ASSERT_TRUE(TrustAgentKey(keys_dir, "b", untrusted_.public_key, false).ok());
  Advance(milliseconds(11000), {&good});  // the controller re-reads trusted/ every 10 s
  // The re-read runs in the loop turn after a message; the second ack proves it has run.
  ASSERT_TRUE(good.Heartbeat().has_value());
  ASSERT_TRUE(good.Heartbeat().has_value());
  {
    FakeAgent joined(context_, "b", endpoint_, "boot-1", &untrusted_, controller_keys_.public_key);
    ASSERT_TRUE(joined.Register().has_value());
    EXPECT_EQ(NodeState("b"), "alive");
  }

  ASSERT_TRUE(RevokeAgentKey(keys_dir, "b").ok());
  Advance(milliseconds(11000), {&good});
  ASSERT_TRUE(good.Heartbeat().has_value());
  ASSERT_TRUE(good.Heartbeat().has_value());
  FakeAgent revoked(context_, "b", endpoint_, "boot-2", &untrusted_, controller_keys_.public_key);
  spark::v1::Envelope registration;
  registration.mutable_node_registration()->set_node_name("b");
  registration.mutable_node_registration()->set_boot_id("boot-2");
  revoked.Send(registration);
  EXPECT_TRUE(revoked.NothingOf(Envelope::kRegistrationAck, milliseconds(300)));
}

TEST(ControllerKeysTest, MissingKeyFileSaysHowToCreateIt) {
  TempDir dir;
  Result<CurveKeyPair> keys = LoadControllerKeys(dir.path().string());
  ASSERT_FALSE(keys.ok());
  EXPECT_THAT(keys.status().message(), HasSubstr("spark-controller keygen --keys"));
}

}  // namespace
}  // namespace spark::controller
