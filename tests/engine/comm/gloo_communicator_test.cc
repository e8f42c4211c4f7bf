#include "engine/comm/gloo_communicator.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;

GlooOptions TestOptions(const std::string& prefix) {
  GlooOptions o;
  o.host = "127.0.0.1";
  o.connect_timeout_ms = 10000;
  o.op_timeout_ms = 10000;
  o.prefix = prefix;
  return o;
}

// Runs `body(rank, comm)` on `world` threads, each with its own communicator.
void RunRanks(int world, KeyValueStore* store, const GlooOptions& options,
              const std::function<void(int, GlooCommunicator&)>& body) {
  std::vector<std::thread> threads;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto comm = GlooCommunicator::Create(r, world, store, options);
      if (!comm.ok()) {
        errors[r] = comm.status().ToString();
        return;
      }
      body(r, **comm);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, AllReduceSumIsExact) {
  const int world = GetParam();
  LocalKeyValueStore store;
  // Small and large (several ring segments of 1 MiB) buffers.
  for (size_t count : {size_t{7}, size_t{600000}}) {
    RunRanks(world, &store, TestOptions("allreduce" + std::to_string(count)),
             [&](int rank, GlooCommunicator& comm) {
               EXPECT_EQ(comm.rank(), rank);
               EXPECT_EQ(comm.world_size(), world);
               std::vector<float> data(count);
               for (size_t i = 0; i < count; ++i) {
                 data[i] = static_cast<float>((rank + 1) * 1000 + static_cast<int>(i % 97));
               }
               ASSERT_TRUE(comm.AllReduceSum(data.data(), count).ok());
               // sum over r of (r+1)*1000 + i%97 = 1000*w(w+1)/2 + w*(i%97): exact in float.
               for (size_t i = 0; i < count; ++i) {
                 float want = static_cast<float>(1000 * world * (world + 1) / 2 +
                                                 world * static_cast<int>(i % 97));
                 ASSERT_EQ(data[i], want) << "rank " << rank << " index " << i;
               }
             });
  }
}

TEST_P(CollectivesTest, AllGatherConcatenatesInRankOrder) {
  const int world = GetParam();
  LocalKeyValueStore store;
  const size_t count = 5;
  RunRanks(world, &store, TestOptions("allgather"), [&](int rank, GlooCommunicator& comm) {
    std::vector<float> in(count);
    for (size_t i = 0; i < count; ++i) in[i] = static_cast<float>(rank * 10 + i);
    std::vector<float> out(count * world, -1.0f);
    ASSERT_TRUE(comm.AllGather(in.data(), count, out.data()).ok());
    for (int r = 0; r < world; ++r) {
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(out[r * count + i], static_cast<float>(r * 10 + i));
      }
    }
  });
}

TEST_P(CollectivesTest, BroadcastCopiesRootBytes) {
  const int world = GetParam();
  LocalKeyValueStore store;
  const int root = world - 1;
  RunRanks(world, &store, TestOptions("broadcast"), [&](int rank, GlooCommunicator& comm) {
    std::string msg =
        rank == root ? std::string("hello from the root rank!") : std::string(25, '?');
    ASSERT_TRUE(comm.Broadcast(msg.data(), msg.size(), root).ok());
    EXPECT_EQ(msg, "hello from the root rank!");
    // Odd byte count, second collective on the same group.
    std::vector<uint8_t> bytes(1001);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = rank == 0 ? uint8_t(i * 7) : 0;
    ASSERT_TRUE(comm.Broadcast(bytes.data(), bytes.size(), 0).ok());
    for (size_t i = 0; i < bytes.size(); ++i) ASSERT_EQ(bytes[i], uint8_t(i * 7));
    EXPECT_EQ(comm.Broadcast(bytes.data(), 1, world).code(), StatusCode::kInvalidArgument);
  });
}

TEST_P(CollectivesTest, BarrierWaitsForTheSlowestRank) {
  const int world = GetParam();
  LocalKeyValueStore store;
  std::vector<Clock::time_point> passed(world);
  Clock::time_point slow_arrival;
  RunRanks(world, &store, TestOptions("barrier"), [&](int rank, GlooCommunicator& comm) {
    ASSERT_TRUE(comm.Barrier().ok());
    if (rank == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      slow_arrival = Clock::now();
    }
    ASSERT_TRUE(comm.Barrier().ok());
    passed[rank] = Clock::now();
  });
  for (int r = 0; r < world; ++r) EXPECT_GE(passed[r], slow_arrival) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(Worlds, CollectivesTest, ::testing::Values(2, 4));

TEST(GlooCommunicatorTest, SingleRankNeedsNoPeers) {
  LocalKeyValueStore store;
  auto comm = GlooCommunicator::Create(0, 1, &store, TestOptions("single"));
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  float v[2] = {1.5f, 2.5f};
  ASSERT_TRUE((*comm)->AllReduceSum(v, 2).ok());
  EXPECT_EQ(v[0], 1.5f);
  float out[2];
  ASSERT_TRUE((*comm)->AllGather(v, 2, out).ok());
  EXPECT_EQ(out[1], 2.5f);
  EXPECT_TRUE((*comm)->Barrier().ok());
}

TEST(GlooCommunicatorTest, InvalidRankIsRejected) {
  LocalKeyValueStore store;
  EXPECT_EQ(GlooCommunicator::Create(2, 2, &store, TestOptions("x")).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(GlooCommunicator::Create(0, 2, nullptr, TestOptions("x")).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(GlooCommunicatorTest, MissingRankIsNamedWithinTheDeadline) {
  LocalKeyValueStore store;
  GlooOptions options = TestOptions("missing");
  options.connect_timeout_ms = 1500;
  const int world = 4;  // ranks 0 and 2 start; 1 and 3 never do
  std::vector<Status> results(world);
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int r : {0, 2}) {
    threads.emplace_back(
        [&, r] { results[r] = GlooCommunicator::Create(r, world, &store, options).status(); });
  }
  for (auto& t : threads) t.join();
  auto elapsed = Clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(6));
  for (int r : {0, 2}) {
    EXPECT_EQ(results[r].code(), StatusCode::kDeadlineExceeded) << results[r].ToString();
    EXPECT_NE(results[r].message().find("ranks 1, 3 never joined"), std::string::npos)
        << results[r].ToString();
    EXPECT_NE(results[r].message().find("rank " + std::to_string(r) + " of 4"), std::string::npos)
        << results[r].ToString();
  }
}

TEST(GlooCommunicatorTest, StalledCollectiveFailsWithDeadlineNamingTheOperation) {
  LocalKeyValueStore store;
  GlooOptions options = TestOptions("stall");
  options.op_timeout_ms = 500;
  Status rank0;
  Clock::duration elapsed{};
  RunRanks(2, &store, options, [&](int rank, GlooCommunicator& comm) {
    ASSERT_TRUE(comm.Barrier().ok());
    if (rank == 0) {
      std::vector<float> v(16, 1.0f);
      auto start = Clock::now();
      rank0 = comm.AllReduceSum(v.data(), v.size());
      elapsed = Clock::now() - start;
      // The group is broken afterwards; later calls fail fast instead of hanging.
      EXPECT_FALSE(comm.Barrier().ok());
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // never joins the all-reduce
    }
  });
  EXPECT_FALSE(rank0.ok());
  EXPECT_EQ(rank0.code(), StatusCode::kDeadlineExceeded) << rank0.ToString();
  EXPECT_NE(rank0.message().find("rank 0"), std::string::npos) << rank0.ToString();
  EXPECT_NE(rank0.message().find("AllReduceSum"), std::string::npos) << rank0.ToString();
  EXPECT_LT(elapsed, std::chrono::seconds(3));
}

TEST(GlooCommunicatorTest, GroupsWithDifferentPrefixesShareAStore) {
  LocalKeyValueStore store;
  std::thread a([&] {
    RunRanks(2, &store, TestOptions("gen1"), [](int rank, GlooCommunicator& comm) {
      float v = 1.0f;
      ASSERT_TRUE(comm.AllReduceSum(&v, 1).ok());
      EXPECT_EQ(v, 2.0f);
    });
  });
  std::thread b([&] {
    RunRanks(3, &store, TestOptions("gen2"), [](int rank, GlooCommunicator& comm) {
      float v = 1.0f;
      ASSERT_TRUE(comm.AllReduceSum(&v, 1).ok());
      EXPECT_EQ(v, 3.0f);
    });
  });
  a.join();
  b.join();
}

TEST(LocalKeyValueStoreTest, GetBlocksUntilSetOrDeadline) {
  LocalKeyValueStore store;
  auto missing = store.Get("nope", 50);
  EXPECT_EQ(missing.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(store.Set("k", std::string("v\0w", 3)).ok());
  });
  auto value = store.Get("k", 5000);
  setter.join();
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, std::string("v\0w", 3));
}

class FileKeyValueStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("spark_kv_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(FileKeyValueStoreTest, RoundTripsBinaryValuesAndOddKeys) {
  auto store = FileKeyValueStore::Open((dir_ / "sub").string());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  std::string binary("\0\x01\xff/..", 6);
  ASSERT_TRUE((*store)->Set("gen/3/rank_0", binary).ok());
  ASSERT_TRUE((*store)->Set("../escape", "x").ok());
  ASSERT_TRUE((*store)->Set("a.b", "1").ok());
  ASSERT_TRUE((*store)->Set("a.b", "2").ok());  // overwrite
  EXPECT_EQ(*(*store)->Get("gen/3/rank_0", 0), binary);
  EXPECT_EQ(*(*store)->Get("../escape", 0), "x");
  EXPECT_EQ(*(*store)->Get("a.b", 0), "2");
  // Every file stays inside the directory, and no temporary file is left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_ / "sub")) {
    ++files;
    EXPECT_EQ(e.path().filename().string().rfind("k_", 0), 0u) << e.path();
  }
  EXPECT_EQ(files, 3);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "escape"));
}

TEST_F(FileKeyValueStoreTest, GetTimesOutNamingTheKey) {
  auto store = FileKeyValueStore::Open(dir_.string());
  ASSERT_TRUE(store.ok());
  auto start = Clock::now();
  auto v = (*store)->Get("never", 100);
  EXPECT_EQ(v.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(v.status().message().find("never"), std::string::npos);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
}

TEST_F(FileKeyValueStoreTest, ServesAGlooRendezvous) {
  auto store = FileKeyValueStore::Open(dir_.string());
  ASSERT_TRUE(store.ok());
  RunRanks(3, store->get(), TestOptions("filegroup"), [](int rank, GlooCommunicator& comm) {
    float v[2] = {static_cast<float>(rank), 1.0f};
    ASSERT_TRUE(comm.AllReduceSum(v, 2).ok());
    EXPECT_EQ(v[0], 3.0f);
    EXPECT_EQ(v[1], 3.0f);
  });
}

TEST_F(FileKeyValueStoreTest, PeerProcessExitFailsTheCollectiveInsteadOfHanging) {
  auto store = FileKeyValueStore::Open(dir_.string());
  ASSERT_TRUE(store.ok());
  GlooOptions options = TestOptions("procs");
  options.op_timeout_ms = 3000;
  // The child exits once rank 0's side of the group is up too (a byte on `go`): exiting while
  // rank 0 still connects would fail Create instead of the collective.
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Rank 1: joins the group, then exits without taking part in any collective.
    close(go[1]);
    auto child_store = FileKeyValueStore::Open(dir_.string());
    if (!child_store.ok()) _exit(2);
    auto comm = GlooCommunicator::Create(1, 2, child_store->get(), options);
    char byte = 0;
    const bool told = read(go[0], &byte, 1) == 1;
    _exit(comm.ok() && told ? 0 : 3);
  }
  close(go[0]);
  auto comm = GlooCommunicator::Create(0, 2, store->get(), options);
  const char byte = 1;
  EXPECT_EQ(write(go[1], &byte, 1), 1);
  close(go[1]);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus));
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);
  std::vector<float> v(1024, 1.0f);
  auto start = Clock::now();
  Status s = (*comm)->AllReduceSum(v.data(), v.size());
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
      << s.ToString();
  EXPECT_NE(s.message().find("AllReduceSum"), std::string::npos) << s.ToString();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace spark::engine
