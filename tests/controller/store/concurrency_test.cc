// The store under concurrent use: writes from many threads are serialised on one writer thread in
// posting order, and readers on other threads see only whole committed transactions.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "controller/store/store.h"
#include "tests/controller/store/test_util.h"

namespace spark::store {
namespace {

using ::spark::store::testing::TempDir;

class StoreConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<Store>> store =
        Store::Open({.path = dir_.File("controller.db"), .read_connections = 3}, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
  }

  TempDir dir_;
  RealClock& clock_ = RealClock::Get();
  std::unique_ptr<Store> store_;
};

TEST_F(StoreConcurrencyTest, WritesFromManyThreadsAreSerialisedOnOneThread) {
  STORE_ASSERT_OK(store_
                      ->Write([](WriteTxn& txn) {
                        return txn.CreateDeployment({.name = "counter", .model_path = "/m"});
                      })
                      .get());
  constexpr int kThreads = 8;
  constexpr int kWritesPerThread = 50;
  std::mutex ids_mu;
  std::set<std::thread::id> writer_ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::future<Status>> pending;
      for (int i = 0; i < kWritesPerThread; ++i) {
        // Read-modify-write of one counter plus an event carrying the thread's sequence number:
        // lost updates or reordering within a thread would show below.
        pending.push_back(store_->Write([&, t, i](WriteTxn& txn) -> Status {
          {
            std::lock_guard lock(ids_mu);
            writer_ids.insert(std::this_thread::get_id());
          }
          SPARK_ASSIGN_OR_RETURN(DeploymentRecord d, txn.GetDeployment("counter"));
          SPARK_RETURN_IF_ERROR(
              txn.UpdateDeployment("counter", {.restarts = d.restarts + 1}).status());
          return txn
              .AppendEvent({.kind = "seq",
                            .node = "t" + std::to_string(t),
                            .generation = i,
                            .message = std::to_string(d.restarts)})
              .status();
        }));
      }
      for (auto& f : pending) EXPECT_TRUE(f.get().ok());
    });
  }
  for (auto& thread : threads) thread.join();

  EXPECT_EQ(writer_ids.size(), 1u);
  EXPECT_EQ(writer_ids.count(std::this_thread::get_id()), 0u);
  STORE_ASSERT_OK_AND_ASSIGN(
      DeploymentRecord d, store_->Read([](ReadTxn& txn) { return txn.GetDeployment("counter"); }));
  EXPECT_EQ(d.restarts, kThreads * kWritesPerThread);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<EventRecord> events,
                             store_->Read([](ReadTxn& txn) { return txn.ListEvents(0, 10000); }));
  ASSERT_EQ(events.size(), static_cast<size_t>(kThreads * kWritesPerThread));
  std::map<std::string, int64_t> next_seq;
  for (size_t i = 0; i < events.size(); ++i) {
    // The counter value seen by the i-th transaction is i: one transaction at a time.
    EXPECT_EQ(events[i].message, std::to_string(i));
    // Per thread, transactions committed in posting order.
    EXPECT_EQ(events[i].generation, next_seq[events[i].node]++) << events[i].node;
  }
}

TEST_F(StoreConcurrencyTest, ReadersSeeOnlyWholeTransactionsWhileWriting) {
  constexpr int kTp = 4;
  constexpr int kRuns = 150;
  STORE_ASSERT_OK(store_
                      ->Write([](WriteTxn& txn) {
                        return txn.CreateDeployment({.name = "glm", .model_path = "/m", .tp = kTp});
                      })
                      .get());
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::vector<std::string> violations;
  std::mutex violations_mu;
  auto violation = [&](std::string what) {
    std::lock_guard lock(violations_mu);
    violations.push_back(std::move(what));
  };
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      int64_t last_generation = 0;
      int64_t last_event = 0;
      while (!done.load()) {
        Status status = store_->Read([&](ReadTxn& txn) -> Status {
          SPARK_ASSIGN_OR_RETURN(DeploymentRecord d, txn.GetDeployment("glm"));
          SPARK_ASSIGN_OR_RETURN(std::vector<RunRecord> runs, txn.ListRuns({.limit = 1000}));
          SPARK_ASSIGN_OR_RETURN(int64_t last_id, txn.LastEventId());
          // Every transaction writes one run (with all members) and one event and bumps the
          // generation: within one snapshot the three always agree.
          if (static_cast<int64_t>(runs.size()) != d.generation || last_id != d.generation) {
            violation("snapshot mixes transactions: generation " + std::to_string(d.generation) +
                      ", runs " + std::to_string(runs.size()) + ", last event " +
                      std::to_string(last_id));
          }
          if (d.generation < last_generation || last_id < last_event) {
            violation("time went backwards for a reader");
          }
          last_generation = d.generation;
          last_event = last_id;
          if (!runs.empty()) {
            SPARK_ASSIGN_OR_RETURN(std::vector<RunMemberRecord> members,
                                   txn.ListRunMembers(runs.front().id));
            if (members.size() != static_cast<size_t>(kTp)) {
              violation("run " + std::to_string(runs.front().id) + " has " +
                        std::to_string(members.size()) + " members");
            }
          }
          return Status();
        });
        if (!status.ok()) violation(status.ToString());
        reads.fetch_add(1);
      }
    });
  }
  std::vector<std::future<Status>> writes;
  for (int i = 0; i < kRuns; ++i) {
    writes.push_back(store_->Write([](WriteTxn& txn) -> Status {
      SPARK_ASSIGN_OR_RETURN(std::optional<RunDetail> open, txn.GetOpenRun("glm"));
      if (open.has_value()) SPARK_RETURN_IF_ERROR(txn.EndRun(open->run.id, "next").status());
      SPARK_ASSIGN_OR_RETURN(RunDetail run, txn.CreateRun("glm", {"a", "b", "c", "d"}));
      return txn.AppendEvent({.kind = "run", .run_id = run.run.id}).status();
    }));
  }
  for (auto& w : writes) STORE_ASSERT_OK(w.get());
  // Let the readers observe the final state too.
  const int reads_at_end = reads.load();
  while (reads.load() < reads_at_end + 6) std::this_thread::yield();
  done = true;
  for (auto& reader : readers) reader.join();
  EXPECT_THAT(violations, ::testing::IsEmpty());
  EXPECT_GT(reads.load(), 6);
  STORE_ASSERT_OK_AND_ASSIGN(std::vector<RunDetail> open,
                             store_->Read([](ReadTxn& txn) { return txn.ListOpenRuns(); }));
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].run.generation, kRuns);
}

TEST_F(StoreConcurrencyTest, ReadsWaitForAFreeConnection) {
  // 3 connections, 12 threads reading at once: all reads succeed.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (store_->Read([](ReadTxn& txn) { return txn.ListNodes(); }).ok()) ok.fetch_add(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), 12 * 50);
}

}  // namespace
}  // namespace spark::store
