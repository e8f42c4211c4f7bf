#include "controller/store/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "controller/store/schema.h"
#include "tests/controller/store/test_util.h"

namespace spark::store {
namespace {

using ::spark::store::testing::TempDir;
using ::spark::store::testing::WallMs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen() {
    store_.reset();
    Result<std::unique_ptr<Store>> store = Store::Open({.path = db_path()}, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
  }

  std::string db_path() const { return dir_.File("controller.db"); }

  template <typename Fn>
  auto Write(Fn fn) {
    return store_->Write(std::move(fn)).get();
  }
  template <typename Fn>
  auto Read(Fn fn) {
    return store_->Read(std::move(fn));
  }

  DeploymentSpec Spec(const std::string& name, int tp = 2) {
    return DeploymentSpec{.name = name,
                          .model_path = "/models/" + name,
                          .tp = tp,
                          .backend = "cpu",
                          .pinned_nodes = {},
                          .options_json = R"({"max_seq_len":512})"};
  }

  TempDir dir_;
  ManualClock clock_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, OpenCreatesSchemaAtLatestVersion) {
  EXPECT_EQ(store_->schema_version(), LatestSchemaVersion());
  EXPECT_EQ(store_->path(), db_path());
  EXPECT_TRUE(std::filesystem::exists(db_path()));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<NodeRecord> nodes,
                             Read([](ReadTxn& txn) { return txn.ListNodes(); }));
  EXPECT_TRUE(nodes.empty());
}

TEST_F(StoreTest, OpenSetsDurabilityPragmas) {
  store_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  // WAL mode is persistent in the file; the other pragmas are per connection and are checked
  // through their effects (foreign keys below, durability in the crash test).
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

// --- nodes ---

TEST_F(StoreTest, NodeUpsertGetListTouchStateDelete) {
  const int64_t t0 = WallMs(clock_);
  NodeRecord node{.name = "node-b",
                  .boot_id = "boot-1",
                  .agent_version = "0.1.0",
                  .backend = "cpu",
                  .facts_json = R"({"gpus":[]})",
                  .state = NodeState::kDead,  // ignored: a registration makes the node alive
                  .registered_at_ms = 1,
                  .last_seen_at_ms = 2};
  STORE_ASSERT_OK_AND_ASSIGN(NodeRecord stored,
                             Write([&](WriteTxn& txn) { return txn.UpsertNode(node); }));
  EXPECT_EQ(stored.name, "node-b");
  EXPECT_EQ(stored.boot_id, "boot-1");
  EXPECT_EQ(stored.agent_version, "0.1.0");
  EXPECT_EQ(stored.backend, "cpu");
  EXPECT_EQ(stored.facts_json, R"({"gpus":[]})");
  EXPECT_EQ(stored.state, NodeState::kAlive);
  EXPECT_EQ(stored.registered_at_ms, t0);
  EXPECT_EQ(stored.last_seen_at_ms, t0);

  STORE_ASSERT_OK(Write([](WriteTxn& txn) {
    return txn.UpsertNode({.name = "node-a", .boot_id = "x", .backend = "cuda"});
  }));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<NodeRecord> nodes,
                             Read([](ReadTxn& txn) { return txn.ListNodes(); }));
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0].name, "node-a");
  EXPECT_EQ(nodes[0].facts_json, "{}");  // "" is stored as an empty object
  EXPECT_EQ(nodes[1], stored);

  clock_.Advance(std::chrono::milliseconds(1500));
  STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.TouchNode("node-b"); }));
  STORE_ASSERT_OK(
      Write([](WriteTxn& txn) { return txn.SetNodeState("node-b", NodeState::kDead); }));
  STORE_ASSERT_OK_AND_ASSIGN(NodeRecord seen,
                             Read([](ReadTxn& txn) { return txn.GetNode("node-b"); }));
  EXPECT_EQ(seen.last_seen_at_ms, t0 + 1500);
  EXPECT_EQ(seen.registered_at_ms, t0);
  EXPECT_EQ(seen.state, NodeState::kDead);

  // Re-registration with a new boot id: alive again, new facts, new registration time.
  clock_.Advance(std::chrono::milliseconds(500));
  node.boot_id = "boot-2";
  STORE_ASSERT_OK_AND_ASSIGN(NodeRecord again,
                             Write([&](WriteTxn& txn) { return txn.UpsertNode(node); }));
  EXPECT_EQ(again.boot_id, "boot-2");
  EXPECT_EQ(again.state, NodeState::kAlive);
  EXPECT_EQ(again.registered_at_ms, t0 + 2000);

  STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.DeleteNode("node-a"); }));
  Result<NodeRecord> gone = Read([](ReadTxn& txn) { return txn.GetNode("node-a"); });
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(), HasSubstr("node-a"));
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.DeleteNode("node-a"); }).code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.TouchNode("nope"); }).code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.SetNodeState("nope", NodeState::kAlive); }).code(),
            StatusCode::kNotFound);
}

TEST_F(StoreTest, NodeRejectsEmptyNameAndBadJson) {
  Result<NodeRecord> no_name =
      Write([](WriteTxn& txn) { return txn.UpsertNode({.name = "", .boot_id = "b"}); });
  EXPECT_EQ(no_name.status().code(), StatusCode::kInvalidArgument);
  Result<NodeRecord> bad_json =
      Write([](WriteTxn& txn) { return txn.UpsertNode({.name = "n", .facts_json = "{not json"}); });
  EXPECT_EQ(bad_json.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_json.status().message(), HasSubstr("facts_json"));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<NodeRecord> nodes,
                             Read([](ReadTxn& txn) { return txn.ListNodes(); }));
  EXPECT_TRUE(nodes.empty());
}

// --- deployments ---

TEST_F(StoreTest, DeploymentCreateGetListUpdate) {
  const int64_t t0 = WallMs(clock_);
  DeploymentSpec spec = Spec("glm");
  spec.pinned_nodes = {"n1", "n2"};
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord d,
                             Write([&](WriteTxn& txn) { return txn.CreateDeployment(spec); }));
  EXPECT_GT(d.id, 0);
  EXPECT_EQ(d.name, "glm");
  EXPECT_EQ(d.model_path, "/models/glm");
  EXPECT_EQ(d.tp, 2);
  EXPECT_EQ(d.backend, "cpu");
  EXPECT_THAT(d.pinned_nodes, ElementsAre("n1", "n2"));
  EXPECT_EQ(d.options_json, R"({"max_seq_len":512})");
  EXPECT_EQ(d.desired, Desired::kRunning);
  EXPECT_EQ(d.state, DeploymentState::kPending);
  EXPECT_EQ(d.generation, 0);
  EXPECT_EQ(d.restarts, 0);
  EXPECT_EQ(d.last_error, "");
  EXPECT_FALSE(d.deleted);
  EXPECT_EQ(d.created_at_ms, t0);
  EXPECT_EQ(d.updated_at_ms, t0);

  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord by_name,
                             Read([](ReadTxn& txn) { return txn.GetDeployment("glm"); }));
  EXPECT_EQ(by_name, d);
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord by_id,
                             Read([&](ReadTxn& txn) { return txn.GetDeploymentById(d.id); }));
  EXPECT_EQ(by_id, d);

  clock_.Advance(std::chrono::seconds(2));
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord updated, Write([](WriteTxn& txn) {
                               return txn.UpdateDeployment(
                                   "glm", {.state = DeploymentState::kRecovering,
                                           .restarts = 3,
                                           .last_error = "rank 1 exited with signal 9",
                                           .pinned_nodes = std::vector<std::string>{"n3"},
                                           .options_json = R"({"a":1})"});
                             }));
  EXPECT_EQ(updated.state, DeploymentState::kRecovering);
  EXPECT_EQ(updated.restarts, 3);
  EXPECT_EQ(updated.last_error, "rank 1 exited with signal 9");
  EXPECT_THAT(updated.pinned_nodes, ElementsAre("n3"));
  EXPECT_EQ(updated.options_json, R"({"a":1})");
  EXPECT_EQ(updated.desired, Desired::kRunning);  // not in the patch: unchanged
  EXPECT_EQ(updated.created_at_ms, t0);
  EXPECT_EQ(updated.updated_at_ms, t0 + 2000);

  STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.CreateDeployment(Spec("alpha", 1)); }));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<DeploymentRecord> all,
                             Read([](ReadTxn& txn) { return txn.ListDeployments(); }));
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "alpha");
  EXPECT_EQ(all[1], updated);

  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.UpdateDeployment("nope", {.restarts = 1}); })
                .status()
                .code(),
            StatusCode::kNotFound);
  Result<DeploymentRecord> bad_options = Write([](WriteTxn& txn) {
    return txn.UpdateDeployment("glm", {.options_json = std::string("[1,")});
  });
  EXPECT_EQ(bad_options.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, DeploymentValidation) {
  auto create = [&](DeploymentSpec spec) {
    return Write([spec](WriteTxn& txn) { return txn.CreateDeployment(spec); }).status();
  };
  DeploymentSpec no_name = Spec("");
  EXPECT_EQ(create(no_name).code(), StatusCode::kInvalidArgument);
  DeploymentSpec no_path = Spec("x");
  no_path.model_path = "";
  EXPECT_EQ(create(no_path).code(), StatusCode::kInvalidArgument);
  DeploymentSpec zero_tp = Spec("x", 0);
  Status tp_status = create(zero_tp);
  EXPECT_EQ(tp_status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(tp_status.message(), HasSubstr("tp must be at least 1"));
  DeploymentSpec bad_json = Spec("x");
  bad_json.options_json = "nope";
  EXPECT_EQ(create(bad_json).code(), StatusCode::kInvalidArgument);

  STORE_ASSERT_OK(create(Spec("x")));
  Status duplicate = create(Spec("x"));
  EXPECT_EQ(duplicate.code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(duplicate.message(), HasSubstr("'x' already exists"));
}

TEST_F(StoreTest, DeletedDeploymentIsHiddenAndRevivedWithItsGenerationCounter) {
  STORE_ASSERT_OK_AND_ASSIGN(
      DeploymentRecord d, Write([&](WriteTxn& txn) { return txn.CreateDeployment(Spec("m", 1)); }));
  // Two runs: generation 2.
  for (int i = 0; i < 2; ++i) {
    STORE_ASSERT_OK(Write([](WriteTxn& txn) -> Status {
      SPARK_ASSIGN_OR_RETURN(RunDetail run, txn.CreateRun("m", {"n1"}));
      return txn.EndRun(run.run.id, "test").status();
    }));
  }
  // Delete while a run is open: reviving must wait until the run has ended.
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail open,
                             Write([](WriteTxn& txn) { return txn.CreateRun("m", {"n1"}); }));
  STORE_ASSERT_OK(Write([](WriteTxn& txn) {
    return txn.UpdateDeployment(
        "m", {.desired = Desired::kStopped, .state = DeploymentState::kStopping, .deleted = true});
  }));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<DeploymentRecord> visible,
                             Read([](ReadTxn& txn) { return txn.ListDeployments(); }));
  EXPECT_TRUE(visible.empty());
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<DeploymentRecord> with_deleted,
                             Read([](ReadTxn& txn) { return txn.ListDeployments(true); }));
  ASSERT_EQ(with_deleted.size(), 1u);
  EXPECT_TRUE(with_deleted[0].deleted);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.CreateRun("m", {"n1"}); }).status().code(),
            StatusCode::kFailedPrecondition);

  Status early = Write([&](WriteTxn& txn) { return txn.CreateDeployment(Spec("m", 2)); }).status();
  EXPECT_EQ(early.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.message(), HasSubstr("still being stopped"));

  STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.EndRun(open.run.id, "undeployed"); }));
  STORE_ASSERT_OK(Write([](WriteTxn& txn) {
    return txn.UpdateDeployment("m", {.state = DeploymentState::kStopped});
  }));
  clock_.Advance(std::chrono::seconds(1));
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord revived, Write([&](WriteTxn& txn) {
                               return txn.CreateDeployment(Spec("m", 2));
                             }));
  EXPECT_EQ(revived.id, d.id);
  EXPECT_EQ(revived.generation, 3);  // kept: the next run is generation 4
  EXPECT_EQ(revived.tp, 2);
  EXPECT_FALSE(revived.deleted);
  EXPECT_EQ(revived.desired, Desired::kRunning);
  EXPECT_EQ(revived.state, DeploymentState::kPending);
  EXPECT_EQ(revived.created_at_ms, WallMs(clock_));
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail next, Write([](WriteTxn& txn) {
                               return txn.CreateRun("m", {"a", "b"});
                             }));
  EXPECT_EQ(next.run.generation, 4);
}

// --- runs ---

TEST_F(StoreTest, RunLifecycle) {
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.CreateDeployment(Spec("glm", 2)); }));
  const int64_t t0 = WallMs(clock_);
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail run, Write([](WriteTxn& txn) {
                               return txn.CreateRun("glm", {"n1", "n2"});
                             }));
  EXPECT_GT(run.run.id, 0);
  EXPECT_EQ(run.run.deployment, "glm");
  EXPECT_EQ(run.run.generation, 1);
  EXPECT_EQ(run.run.state, RunState::kStarting);
  EXPECT_EQ(run.run.started_at_ms, t0);
  EXPECT_EQ(run.run.ready_at_ms, 0);
  EXPECT_EQ(run.run.ended_at_ms, 0);
  EXPECT_THAT(run.run.placement, ElementsAre("n1", "n2"));
  ASSERT_EQ(run.members.size(), 2u);
  for (int rank = 0; rank < 2; ++rank) {
    const RunMemberRecord& m = run.members[static_cast<size_t>(rank)];
    EXPECT_EQ(m.run_id, run.run.id);
    EXPECT_EQ(m.rank, rank);
    EXPECT_EQ(m.node_name, rank == 0 ? "n1" : "n2");
    EXPECT_EQ(m.phase, MemberPhase::kAssigned);
    EXPECT_EQ(m.pid, 0);
    EXPECT_FALSE(m.exit_status.has_value());
    EXPECT_FALSE(m.signal.has_value());
    EXPECT_EQ(m.updated_at_ms, t0);
  }
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord d,
                             Read([](ReadTxn& txn) { return txn.GetDeployment("glm"); }));
  EXPECT_EQ(d.generation, 1);

  // A second open run of the same deployment is refused.
  Status second = Write([](WriteTxn& txn) { return txn.CreateRun("glm", {"n1", "n2"}); }).status();
  EXPECT_EQ(second.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.message(), HasSubstr("generation 1"));

  clock_.Advance(std::chrono::milliseconds(100));
  STORE_ASSERT_OK_AND_ASSIGN(RunMemberRecord m1, Write([&](WriteTxn& txn) {
                               return txn.UpdateRunMember(
                                   run.run.id, 1, {.pid = 4242, .phase = MemberPhase::kLoading});
                             }));
  EXPECT_EQ(m1.pid, 4242);
  EXPECT_EQ(m1.phase, MemberPhase::kLoading);
  EXPECT_EQ(m1.updated_at_ms, t0 + 100);
  EXPECT_EQ(Write([&](WriteTxn& txn) {
              return txn.UpdateRunMember(run.run.id, 2, {.phase = MemberPhase::kReady});
            })
                .status()
                .code(),
            StatusCode::kNotFound);

  clock_.Advance(std::chrono::milliseconds(100));
  STORE_ASSERT_OK_AND_ASSIGN(RunRecord ready,
                             Write([&](WriteTxn& txn) { return txn.MarkRunReady(run.run.id); }));
  EXPECT_EQ(ready.state, RunState::kReady);
  EXPECT_EQ(ready.ready_at_ms, t0 + 200);
  STORE_ASSERT_OK_AND_ASSIGN(std::optional<RunDetail> open,
                             Read([](ReadTxn& txn) { return txn.GetOpenRun("glm"); }));
  ASSERT_TRUE(open.has_value());
  EXPECT_EQ(open->run, ready);
  EXPECT_EQ(open->members[1], m1);

  clock_.Advance(std::chrono::milliseconds(100));
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) {
    return txn.UpdateRunMember(
        run.run.id, 1,
        {.phase = MemberPhase::kFailed, .signal = 9, .failure_reason = "killed by SIGKILL"});
  }));
  STORE_ASSERT_OK_AND_ASSIGN(RunRecord ended, Write([&](WriteTxn& txn) {
                               return txn.EndRun(run.run.id, "rank 1 exited (signal 9)");
                             }));
  EXPECT_EQ(ended.state, RunState::kEnded);
  EXPECT_EQ(ended.ended_at_ms, t0 + 300);
  EXPECT_EQ(ended.end_reason, "rank 1 exited (signal 9)");
  // Ending again keeps the first reason; an ended run cannot become ready.
  STORE_ASSERT_OK_AND_ASSIGN(RunRecord again,
                             Write([&](WriteTxn& txn) { return txn.EndRun(run.run.id, "later"); }));
  EXPECT_EQ(again, ended);
  EXPECT_EQ(Write([&](WriteTxn& txn) { return txn.MarkRunReady(run.run.id); }).status().code(),
            StatusCode::kFailedPrecondition);

  STORE_ASSERT_OK_AND_ASSIGN(RunDetail stored,
                             Read([&](ReadTxn& txn) { return txn.GetRun(run.run.id); }));
  EXPECT_EQ(stored.run, ended);
  EXPECT_EQ(stored.members[1].signal, 9);
  EXPECT_FALSE(stored.members[1].exit_status.has_value());
  EXPECT_EQ(stored.members[1].failure_reason, "killed by SIGKILL");
  EXPECT_EQ(stored.members[1].pid, 4242);  // kept from the earlier patch
  STORE_ASSERT_OK_AND_ASSIGN(open, Read([](ReadTxn& txn) { return txn.GetOpenRun("glm"); }));
  EXPECT_FALSE(open.has_value());

  // The next run is generation 2.
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail next, Write([](WriteTxn& txn) {
                               return txn.CreateRun("glm", {"n2", "n3"});
                             }));
  EXPECT_EQ(next.run.generation, 2);
  EXPECT_EQ(Read([](ReadTxn& txn) { return txn.GetRun(999); }).status().code(),
            StatusCode::kNotFound);
}

TEST_F(StoreTest, CreateRunValidatesPlacement) {
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.CreateDeployment(Spec("glm", 2)); }));
  Status short_placement =
      Write([](WriteTxn& txn) { return txn.CreateRun("glm", {"n1"}); }).status();
  EXPECT_EQ(short_placement.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(short_placement.message(), HasSubstr("tp 2"));
  EXPECT_EQ(Write([](WriteTxn& txn) {
              return txn.CreateRun("glm", {"n1", ""});
            })
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.CreateRun("nope", {"n1"}); }).status().code(),
            StatusCode::kNotFound);
  // Nothing of the failed attempts was stored.
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<RunRecord> runs,
                             Read([](ReadTxn& txn) { return txn.ListRuns(); }));
  EXPECT_TRUE(runs.empty());
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord d,
                             Read([](ReadTxn& txn) { return txn.GetDeployment("glm"); }));
  EXPECT_EQ(d.generation, 0);
}

TEST_F(StoreTest, ListRunsFiltersNewestFirstAndListOpenRuns) {
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) -> Status {
    SPARK_RETURN_IF_ERROR(txn.CreateDeployment(Spec("a", 1)).status());
    return txn.CreateDeployment(Spec("b", 1)).status();
  }));
  std::vector<int64_t> a_runs;
  for (int i = 0; i < 3; ++i) {
    STORE_ASSERT_OK_AND_ASSIGN(RunDetail a,
                               Write([](WriteTxn& txn) { return txn.CreateRun("a", {"n1"}); }));
    a_runs.push_back(a.run.id);
    if (i < 2) STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.EndRun(a.run.id, "x"); }));
  }
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail b,
                             Write([](WriteTxn& txn) { return txn.CreateRun("b", {"n2"}); }));

  STORE_ASSERT_OK_AND_ASSIGN(std::vector<RunRecord> all,
                             Read([](ReadTxn& txn) { return txn.ListRuns(); }));
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].id, b.run.id);
  EXPECT_EQ(all[3].id, a_runs[0]);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<RunRecord> a_only, Read([](ReadTxn& txn) {
                               return txn.ListRuns({.deployment = "a", .limit = 2});
                             }));
  ASSERT_EQ(a_only.size(), 2u);
  EXPECT_EQ(a_only[0].id, a_runs[2]);
  EXPECT_EQ(a_only[0].generation, 3);
  EXPECT_EQ(a_only[1].id, a_runs[1]);
  EXPECT_EQ(Read([](ReadTxn& txn) { return txn.ListRuns({.limit = 0}); }).status().code(),
            StatusCode::kInvalidArgument);

  STORE_ASSERT_OK_AND_ASSIGN(std::vector<RunDetail> open,
                             Read([](ReadTxn& txn) { return txn.ListOpenRuns(); }));
  ASSERT_EQ(open.size(), 2u);
  EXPECT_EQ(open[0].run.id, a_runs[2]);
  EXPECT_EQ(open[1].run.id, b.run.id);
  ASSERT_EQ(open[1].members.size(), 1u);
  EXPECT_EQ(open[1].members[0].node_name, "n2");
}

// --- events ---

TEST_F(StoreTest, EventsAppendListFilterPrune) {
  STORE_ASSERT_OK_AND_ASSIGN(int64_t empty_last,
                             Read([](ReadTxn& txn) { return txn.LastEventId(); }));
  EXPECT_EQ(empty_last, 0);
  std::vector<EventRecord> appended;
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(std::chrono::milliseconds(10));
    EventRecord e{.id = 777,   // ignored
                  .ts_ms = 1,  // ignored
                  .kind = i % 2 == 0 ? "run_started" : "node_dead",
                  .deployment = i % 2 == 0 ? "glm" : "",
                  .node = i % 2 == 0 ? "" : "n1",
                  .run_id = i,
                  .generation = i + 1,
                  .message = "event " + std::to_string(i),
                  .data_json = i == 0 ? "" : R"({"i":)" + std::to_string(i) + "}"};
    STORE_ASSERT_OK_AND_ASSIGN(EventRecord stored,
                               Write([e](WriteTxn& txn) { return txn.AppendEvent(e); }));
    EXPECT_EQ(stored.id, i + 1);
    EXPECT_EQ(stored.ts_ms, WallMs(clock_));
    appended.push_back(stored);
  }
  EXPECT_EQ(appended[0].data_json, "{}");

  STORE_ASSERT_OK_AND_ASSIGN(std::vector<EventRecord> all,
                             Read([](ReadTxn& txn) { return txn.ListEvents(0, 100); }));
  EXPECT_EQ(all, appended);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<EventRecord> page,
                             Read([](ReadTxn& txn) { return txn.ListEvents(3, 4); }));
  ASSERT_EQ(page.size(), 4u);
  EXPECT_EQ(page.front().id, 4);
  EXPECT_EQ(page.back().id, 7);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<EventRecord> glm,
                             Read([](ReadTxn& txn) { return txn.ListEvents(2, 100, "glm"); }));
  ASSERT_EQ(glm.size(), 4u);  // ids 3, 5, 7, 9
  EXPECT_EQ(glm[0].id, 3);
  EXPECT_EQ(glm[3].id, 9);
  EXPECT_EQ(Read([](ReadTxn& txn) { return txn.ListEvents(0, 0); }).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Read([](ReadTxn& txn) { return txn.ListEvents(0, 10001); }).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = ""}); }).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "k", .data_json = "{"}); })
                .status()
                .code(),
            StatusCode::kInvalidArgument);

  STORE_ASSERT_OK_AND_ASSIGN(int64_t pruned,
                             Write([](WriteTxn& txn) { return txn.PruneEvents(3); }));
  EXPECT_EQ(pruned, 7);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<EventRecord> kept,
                             Read([](ReadTxn& txn) { return txn.ListEvents(0, 100); }));
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_EQ(kept[0].id, 8);
  STORE_ASSERT_OK_AND_ASSIGN(int64_t nothing,
                             Write([](WriteTxn& txn) { return txn.PruneEvents(3); }));
  EXPECT_EQ(nothing, 0);
  // Ids are never reused, even after everything was pruned.
  STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.PruneEvents(0); }));
  STORE_ASSERT_OK_AND_ASSIGN(EventRecord next, Write([](WriteTxn& txn) {
                               return txn.AppendEvent({.kind = "k", .message = "m"});
                             }));
  EXPECT_EQ(next.id, 11);
  STORE_ASSERT_OK_AND_ASSIGN(int64_t last, Read([](ReadTxn& txn) { return txn.LastEventId(); }));
  EXPECT_EQ(last, 11);
  EXPECT_EQ(Write([](WriteTxn& txn) { return txn.PruneEvents(-1); }).status().code(),
            StatusCode::kInvalidArgument);
}

// --- kernel tunings ---

TEST_F(StoreTest, KernelTuningsUpsertGetList) {
  KernelTuning t{.device_class = "H100/sm90",
                 .key = "moe_gemm:e160:k5120:n1536:bf16:b16",
                 .config_json = R"({"block_m":64,"stages":4})",
                 .measured_us = 12.5};
  STORE_ASSERT_OK_AND_ASSIGN(KernelTuning stored,
                             Write([&](WriteTxn& txn) { return txn.UpsertKernelTuning(t); }));
  EXPECT_EQ(stored.updated_at_ms, WallMs(clock_));
  STORE_ASSERT_OK(Write([](WriteTxn& txn) {
    return txn.UpsertKernelTuning(
        {.device_class = "H100/sm90", .key = "a_first", .config_json = "{}", .measured_us = 1});
  }));
  STORE_ASSERT_OK(Write([](WriteTxn& txn) {
    return txn.UpsertKernelTuning(
        {.device_class = "H200/sm90", .key = "other", .config_json = "{}", .measured_us = 2});
  }));
  clock_.Advance(std::chrono::seconds(5));
  t.config_json = R"({"block_m":128})";
  t.measured_us = 9.25;
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) { return txn.UpsertKernelTuning(t); }));

  STORE_ASSERT_OK_AND_ASSIGN(KernelTuning got, Read([&](ReadTxn& txn) {
                               return txn.GetKernelTuning("H100/sm90", t.key);
                             }));
  EXPECT_EQ(got.config_json, R"({"block_m":128})");
  EXPECT_DOUBLE_EQ(got.measured_us, 9.25);
  EXPECT_EQ(got.updated_at_ms, WallMs(clock_));
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<KernelTuning> h100,
                             Read([](ReadTxn& txn) { return txn.ListKernelTunings("H100/sm90"); }));
  ASSERT_EQ(h100.size(), 2u);
  EXPECT_EQ(h100[0].key, "a_first");
  EXPECT_EQ(h100[1], got);
  EXPECT_EQ(
      Read([](ReadTxn& txn) { return txn.GetKernelTuning("H100/sm90", "x"); }).status().code(),
      StatusCode::kNotFound);
  EXPECT_EQ(
      Write([](WriteTxn& txn) { return txn.UpsertKernelTuning({.device_class = "", .key = "k"}); })
          .status()
          .code(),
      StatusCode::kInvalidArgument);
}

// --- transactions ---

TEST_F(StoreTest, FailedBodyRollsBackEverything) {
  Status failed = Write([&](WriteTxn& txn) -> Status {
    SPARK_RETURN_IF_ERROR(txn.CreateDeployment(Spec("glm", 1)).status());
    SPARK_RETURN_IF_ERROR(txn.UpsertNode({.name = "n1"}).status());
    SPARK_RETURN_IF_ERROR(txn.AppendEvent({.kind = "deployed"}).status());
    // Inside the transaction the body sees its own writes.
    SPARK_ASSIGN_OR_RETURN(DeploymentRecord d, txn.GetDeployment("glm"));
    if (d.name != "glm") return Internal("own write not visible");
    return Unavailable("agent went away");
  });
  EXPECT_EQ(failed, Unavailable("agent went away"));
  STORE_ASSERT_OK(Read([](ReadTxn& txn) -> Status {
    SPARK_ASSIGN_OR_RETURN(std::vector<DeploymentRecord> ds, txn.ListDeployments(true));
    SPARK_ASSIGN_OR_RETURN(std::vector<NodeRecord> ns, txn.ListNodes());
    SPARK_ASSIGN_OR_RETURN(int64_t last, txn.LastEventId());
    if (!ds.empty() || !ns.empty() || last != 0) return Internal("rolled-back rows are visible");
    return Status();
  }));
}

TEST_F(StoreTest, ThrowingBodyRollsBackAndReportsInternal) {
  Result<int> thrown = Write([](WriteTxn& txn) -> Result<int> {
    txn.UpsertNode({.name = "n1"}).status().IgnoreError();
    throw std::runtime_error("boom");
  });
  EXPECT_EQ(thrown.status().code(), StatusCode::kInternal);
  EXPECT_THAT(thrown.status().message(), HasSubstr("boom"));
  EXPECT_EQ(Read([](ReadTxn& txn) { return txn.GetNode("n1"); }).status().code(),
            StatusCode::kNotFound);
  // The writer is still alive.
  STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.UpsertNode({.name = "n2"}); }));
}

TEST_F(StoreTest, AllStampsOfOneTransactionAgree) {
  STORE_ASSERT_OK_AND_ASSIGN(RunDetail run, Write([&](WriteTxn& txn) -> Result<RunDetail> {
                               SPARK_RETURN_IF_ERROR(txn.CreateDeployment(Spec("g", 2)).status());
                               return txn.CreateRun("g", {"a", "b"});
                             }));
  STORE_ASSERT_OK_AND_ASSIGN(DeploymentRecord d,
                             Read([](ReadTxn& txn) { return txn.GetDeployment("g"); }));
  EXPECT_EQ(d.created_at_ms, run.run.started_at_ms);
  EXPECT_EQ(d.updated_at_ms, run.run.started_at_ms);
  EXPECT_EQ(run.members[1].updated_at_ms, run.run.started_at_ms);
}

TEST_F(StoreTest, ReopenKeepsEverything) {
  STORE_ASSERT_OK(Write([&](WriteTxn& txn) -> Status {
    SPARK_RETURN_IF_ERROR(
        txn.UpsertNode({.name = "n1", .boot_id = "b", .facts_json = "[1]"}).status());
    SPARK_RETURN_IF_ERROR(txn.CreateDeployment(Spec("glm", 2)).status());
    SPARK_ASSIGN_OR_RETURN(RunDetail run, txn.CreateRun("glm", {"n1", "n1"}));
    SPARK_RETURN_IF_ERROR(
        txn.UpdateRunMember(run.run.id, 0, {.pid = 11, .phase = MemberPhase::kReady}).status());
    SPARK_RETURN_IF_ERROR(txn.MarkRunReady(run.run.id).status());
    SPARK_RETURN_IF_ERROR(txn.AppendEvent({.kind = "ready", .deployment = "glm"}).status());
    return txn.UpsertKernelTuning({.device_class = "c", .key = "k", .measured_us = 3}).status();
  }));
  auto snapshot = [&] {
    return Read([](ReadTxn& txn) -> Result<std::string> {
      SPARK_ASSIGN_OR_RETURN(std::vector<NodeRecord> nodes, txn.ListNodes());
      SPARK_ASSIGN_OR_RETURN(std::vector<DeploymentRecord> ds, txn.ListDeployments(true));
      SPARK_ASSIGN_OR_RETURN(std::vector<RunDetail> runs, txn.ListOpenRuns());
      SPARK_ASSIGN_OR_RETURN(std::vector<EventRecord> events, txn.ListEvents(0, 100));
      SPARK_ASSIGN_OR_RETURN(std::vector<KernelTuning> tunings, txn.ListKernelTunings("c"));
      if (nodes.size() != 1 || ds.size() != 1 || runs.size() != 1 || events.size() != 1 ||
          tunings.size() != 1) {
        return Internal("unexpected row counts");
      }
      return nodes[0].facts_json + "|" + ds[0].name + "|" + std::to_string(ds[0].generation) + "|" +
             std::to_string(runs[0].members[0].pid) + "|" +
             std::string(RunStateName(runs[0].run.state)) + "|" + events[0].kind + "|" +
             std::to_string(tunings[0].measured_us);
    });
  };
  STORE_ASSERT_OK_AND_ASSIGN(std::string before, snapshot());
  EXPECT_EQ(before, "[1]|glm|1|11|ready|ready|3.000000");
  Reopen();
  STORE_ASSERT_OK_AND_ASSIGN(std::string after, snapshot());
  EXPECT_EQ(after, before);
}

TEST_F(StoreTest, DestructorRunsQueuedWrites) {
  std::vector<std::future<Result<EventRecord>>> futures;
  for (int i = 0; i < 200; ++i) {
    futures.push_back(store_->Write([i](WriteTxn& txn) {
      return txn.AppendEvent({.kind = "k", .message = std::to_string(i)});
    }));
  }
  store_.reset();
  for (auto& f : futures) STORE_ASSERT_OK(f.get());
  Reopen();
  STORE_ASSERT_OK_AND_ASSIGN(int64_t last, Read([](ReadTxn& txn) { return txn.LastEventId(); }));
  EXPECT_EQ(last, 200);
}

TEST_F(StoreTest, FullQueueResolvesAtOnceWithResourceExhausted) {
  store_.reset();
  Result<std::unique_ptr<Store>> opened =
      Store::Open({.path = db_path(), .max_queued_writes = 1}, clock_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Store> store = std::move(opened).value();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> entered;
  // Holds the writer (bodies must not block; this test does it on purpose).
  auto blocker = store->Write([&](WriteTxn&) {
    entered.set_value();
    released.wait();
    return Status();
  });
  entered.get_future().wait();
  auto queued = store->Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "queued"}); });
  auto rejected = store->Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "x"}); });
  ASSERT_EQ(rejected.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_EQ(rejected.get().status().code(), StatusCode::kResourceExhausted);
  release.set_value();
  STORE_ASSERT_OK(blocker.get());
  STORE_ASSERT_OK_AND_ASSIGN(EventRecord e, queued.get());
  EXPECT_EQ(e.id, 1);
}

TEST_F(StoreTest, CheckpointTruncatesTheWal) {
  for (int i = 0; i < 50; ++i) {
    STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "k"}); }));
  }
  const std::string wal = db_path() + "-wal";
  ASSERT_TRUE(std::filesystem::exists(wal));
  EXPECT_GT(std::filesystem::file_size(wal), 0u);
  STORE_ASSERT_OK(store_->Checkpoint().get());
  EXPECT_EQ(std::filesystem::file_size(wal), 0u);
  STORE_ASSERT_OK_AND_ASSIGN(int64_t last, Read([](ReadTxn& txn) { return txn.LastEventId(); }));
  EXPECT_EQ(last, 50);
}

TEST_F(StoreTest, AutomaticCheckpointEveryNWrites) {
  store_.reset();
  Result<std::unique_ptr<Store>> opened =
      Store::Open({.path = db_path(), .checkpoint_every_writes = 10}, clock_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Store> store = std::move(opened).value();
  for (int i = 0; i < 10; ++i) {
    STORE_ASSERT_OK(
        store->Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "k"}); }).get());
  }
  // The 10th commit was followed by a TRUNCATE checkpoint; an empty transaction shows that the
  // writer has finished it.
  STORE_ASSERT_OK(store->Write([](WriteTxn&) { return Status(); }).get());
  EXPECT_EQ(std::filesystem::file_size(db_path() + "-wal"), 0u);
}

TEST_F(StoreTest, FullDiskFailsTheWriteAndAcknowledgesNothing) {
  STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.UpsertNode({.name = "n1"}); }));
  store_.reset();
  // The database may not grow past its current size: any write needing a new page fails.
  Result<std::unique_ptr<Store>> opened =
      Store::Open({.path = db_path(), .writer_sql_for_test = "PRAGMA max_page_count=1"}, clock_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Store> store = std::move(opened).value();
  Result<EventRecord> big =
      store
          ->Write([](WriteTxn& txn) {
            return txn.AppendEvent({.kind = "big", .message = std::string(200000, 'x')});
          })
          .get();
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("disk is full"));
  EXPECT_EQ(store->Read([](ReadTxn& txn) { return txn.LastEventId(); }).value(), 0);
  // An update in place still fits, and the writer goes on.
  clock_.Advance(std::chrono::seconds(1));
  STORE_ASSERT_OK(store->Write([](WriteTxn& txn) { return txn.TouchNode("n1"); }).get());
  EXPECT_EQ(store->Read([](ReadTxn& txn) { return txn.GetNode("n1"); })->last_seen_at_ms,
            WallMs(clock_));
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.committed, 1);
  EXPECT_EQ(stats.failed, 1);
  EXPECT_EQ(stats.queued_writes, 0u);
}

TEST_F(StoreTest, StatsAndIntegrityCheck) {
  for (int i = 0; i < 5; ++i) {
    STORE_ASSERT_OK(Write([](WriteTxn& txn) { return txn.AppendEvent({.kind = "k"}); }));
  }
  EXPECT_EQ(Write([](WriteTxn&) { return Cancelled("no"); }).code(), StatusCode::kCancelled);
  StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.committed, 5);
  EXPECT_EQ(stats.failed, 1);
  EXPECT_GT(stats.wal_bytes, 0);
  STORE_ASSERT_OK(store_->CheckIntegrity());
  STORE_ASSERT_OK(store_->CheckIntegrity(/*full=*/true));
  STORE_ASSERT_OK(store_->Checkpoint().get());
  EXPECT_EQ(store_->Stats().wal_bytes, 0);
}

// --- opening errors ---

TEST_F(StoreTest, SecondOpenOfTheSameFileIsRefused) {
  Result<std::unique_ptr<Store>> second = Store::Open({.path = db_path()}, clock_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another process"));
  EXPECT_THAT(second.status().message(), HasSubstr(db_path()));
}

TEST(StoreOpenTest, GarbageFileIsNotADatabase) {
  TempDir dir;
  const std::string path = dir.File("garbage.db");
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>((i * 131 + 7) % 251));
  }
  ManualClock clock;
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_THAT(store.status().message(), HasSubstr("not an SQLite database"));
}

TEST(StoreOpenTest, CorruptDatabaseFailsTheCheck) {
  TempDir dir;
  const std::string path = dir.File("corrupt.db");
  ManualClock clock;
  {
    Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    for (int i = 0; i < 20; ++i) {
      STORE_ASSERT_OK((*store)
                          ->Write([i](WriteTxn& txn) {
                            return txn.AppendEvent(
                                {.kind = "k", .message = std::string(2000, 'a' + i % 26)});
                          })
                          .get());
    }
    STORE_ASSERT_OK((*store)->Checkpoint().get());
  }
  // Overwrite the middle of the file (table pages of the events) with garbage.
  const auto size = std::filesystem::file_size(path);
  ASSERT_GT(size, 8 * 4096u);
  {
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    for (uint64_t page = 4; page < size / 4096 - 1; page += 2) {
      file.seekp(static_cast<std::streamoff>(page * 4096));
      for (int i = 0; i < 4096; ++i) file.put(static_cast<char>(0xA5 ^ i));
    }
  }
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_THAT(store.status().message(), HasSubstr("move it aside"));
}

TEST(StoreOpenTest, InconsistentIndexFailsQuickCheck) {
  TempDir dir;
  const std::string path = dir.File("index.db");
  ManualClock clock;
  {
    Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    for (int i = 0; i < 5; ++i) {
      STORE_ASSERT_OK((*store)
                          ->Write([](WriteTxn& txn) {
                            return txn.AppendEvent({.kind = "k", .deployment = "d"});
                          })
                          .get());
    }
  }
  // Point the events index at another b-tree: every page is sound, but the index's own pages
  // are no longer reachable.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE junk (deployment TEXT, id INTEGER);"
                         "CREATE INDEX junk_index ON junk (deployment, id);"
                         "PRAGMA writable_schema=ON;"
                         "UPDATE sqlite_schema SET rootpage = (SELECT rootpage FROM sqlite_schema "
                         "WHERE name = 'junk_index') WHERE name = 'events_by_deployment';"
                         "DELETE FROM sqlite_schema WHERE name IN ('junk', 'junk_index');",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(store.status().message(), HasSubstr("failed quick_check"));
  EXPECT_THAT(store.status().message(), HasSubstr("2 problems: Page "));
  EXPECT_THAT(store.status().message(), HasSubstr("is never used"));
  EXPECT_THAT(store.status().message(), HasSubstr("restore it from a backup"));
}

TEST(StoreOpenTest, MissingDirectoryNamesTheFix) {
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.File("no/such/dir/controller.db");
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("directory exists"));
}

TEST(StoreOpenTest, BadOptions) {
  ManualClock clock;
  EXPECT_EQ(Store::Open({.path = ""}, clock).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Store::Open({.path = "/tmp/x.db", .read_connections = 0}, clock).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(StoreOpenTest, ForeignDatabaseIsRefused) {
  TempDir dir;
  const std::string path = dir.File("other.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE photos (id INTEGER)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  ManualClock clock;
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("not a spark-controller database"));
  EXPECT_THAT(store.status().message(), HasSubstr("photos"));
}

TEST(StoreOpenTest, NewerSchemaIsRefused) {
  TempDir dir;
  const std::string path = dir.File("newer.db");
  ManualClock clock;
  { ASSERT_TRUE(Store::Open({.path = path}, clock).ok()); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string insert = "INSERT INTO schema_version VALUES (" +
                             std::to_string(LatestSchemaVersion() + 1) + ", 'future', 0)";
  ASSERT_EQ(sqlite3_exec(db, insert.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(),
              HasSubstr("schema version " + std::to_string(LatestSchemaVersion() + 1)));
}

// --- records ---

TEST(RecordsTest, EnumNamesRoundTrip) {
  for (NodeState s : {NodeState::kAlive, NodeState::kDead}) {
    EXPECT_EQ(ParseNodeState(NodeStateName(s)).value(), s);
  }
  for (Desired d : {Desired::kRunning, Desired::kStopped}) {
    EXPECT_EQ(ParseDesired(DesiredName(d)).value(), d);
  }
  const std::vector<std::string> deployment_names = {"pending", "loading",  "ready",  "recovering",
                                                     "failed",  "stopping", "stopped"};
  for (const std::string& name : deployment_names) {
    EXPECT_EQ(DeploymentStateName(ParseDeploymentState(name).value()), name);
  }
  for (RunState s : {RunState::kStarting, RunState::kReady, RunState::kEnded}) {
    EXPECT_EQ(ParseRunState(RunStateName(s)).value(), s);
  }
  const std::vector<std::string> phases = {"assigned", "starting", "rendezvous", "loading",
                                           "ready",    "failed",   "stopped"};
  for (const std::string& name : phases) {
    EXPECT_EQ(MemberPhaseName(ParseMemberPhase(name).value()), name);
  }
  Result<DeploymentState> bad = ParseDeploymentState("Ready");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("pending, loading, ready"));
}

}  // namespace
}  // namespace spark::store
