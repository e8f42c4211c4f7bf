// NcclCommunicator on real GPUs: ranks are threads of this process, one CUDA device each (tests
// that need two devices skip on a one-GPU machine). Collective results are checked against
// values computed on the host; the init deadline and the hung-collective abort against their
// Status.
#include "engine/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/comm/gloo_communicator.h"
#include "engine/comm/rank_order_sum.h"
#include "tests/gpu/device_buffer.h"

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;
using cuda::DeviceBuffer;

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

std::string Prefix(const std::string& name) {
  return "nccl_test_" + name + "_" + std::to_string(::getpid());
}

NcclOptions Options(int device, const std::string& prefix) {
  NcclOptions o;
  o.device = device;
  o.prefix = prefix;
  o.init_timeout_ms = 30000;
  o.op_timeout_ms = 30000;
  return o;
}

// Runs `body(rank, comm)` on two threads, rank r on device r.
void RunTwoRanks(const std::string& name, const std::function<void(int, NcclCommunicator&)>& body,
                 int64_t op_timeout_ms = 30000, int64_t one_shot_max_bytes = 0) {
  LocalKeyValueStore store;
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      NcclOptions o = Options(r, Prefix(name));
      o.op_timeout_ms = op_timeout_ms;
      o.one_shot_max_bytes = one_shot_max_bytes;
      auto comm = NcclCommunicator::Create(r, 2, &store, o);
      if (!comm.ok()) {
        errors[r] = comm.status().ToString();
        return;
      }
      body(r, **comm);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(NcclCommunicatorTest, SingleRankCollectivesAreIdentity) {
  ASSERT_GE(DeviceCount(), 1);
  LocalKeyValueStore store;
  auto comm = NcclCommunicator::Create(0, 1, &store, Options(0, Prefix("single")));
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  std::vector<float> host = {1.5f, -2.0f, 3.25f};
  DeviceBuffer<float> dev(host);
  ASSERT_TRUE((*comm)->AllReduceSum(dev.get(), host.size()).ok());
  ASSERT_TRUE((*comm)->Synchronize().ok());
  EXPECT_EQ(dev.Download(), host);
  std::vector<float> copy = host;
  ASSERT_TRUE((*comm)->AllReduceSum(copy.data(), copy.size()).ok());
  EXPECT_EQ(copy, host);
  ASSERT_TRUE((*comm)->Barrier().ok());
}

TEST(NcclCommunicatorTest, BadArgumentsAreNamed) {
  LocalKeyValueStore store;
  auto bad_rank = NcclCommunicator::Create(2, 2, &store, Options(0, Prefix("bad")));
  ASSERT_FALSE(bad_rank.ok());
  EXPECT_EQ(bad_rank.status().code(), StatusCode::kInvalidArgument);
  NcclOptions too_big = Options(0, Prefix("bad_one_shot"));
  too_big.one_shot_max_bytes = kOneShotMaxBytesLimit + 1;
  auto bad_one_shot = NcclCommunicator::Create(0, 1, &store, too_big);
  ASSERT_FALSE(bad_one_shot.ok());
  EXPECT_NE(bad_one_shot.status().message().find("one_shot_max_bytes"), std::string::npos);
  auto bad_device = NcclCommunicator::Create(0, 1, &store, Options(DeviceCount() + 3, "x"));
  ASSERT_FALSE(bad_device.ok());
  EXPECT_NE(bad_device.status().message().find("CUDA_VISIBLE_DEVICES"), std::string::npos)
      << bad_device.status().message();
}

TEST(NcclCommunicatorTest, TwoRanksCollectivesMatchHostArithmetic) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs";
  for (size_t count : {size_t{1}, size_t{1000}, size_t{3000001}}) {
    RunTwoRanks("coll" + std::to_string(count), [&](int rank, NcclCommunicator& comm) {
      std::vector<float> mine(count);
      for (size_t i = 0; i < count; ++i) mine[i] = static_cast<float>((i % 97) * (rank + 1));
      // Device all-reduce (stream-ordered, then synchronised).
      DeviceBuffer<float> dev(mine);
      ASSERT_TRUE(comm.AllReduceSum(dev.get(), count).ok());
      ASSERT_TRUE(comm.Synchronize().ok());
      std::vector<float> sum = dev.Download();
      for (size_t i = 0; i < count; ++i) ASSERT_EQ(sum[i], static_cast<float>((i % 97) * 3));
      // Host all-reduce (staged).
      std::vector<float> host = mine;
      ASSERT_TRUE(comm.AllReduceSum(host.data(), count).ok());
      EXPECT_EQ(host, sum);
      // Device all-gather: rank order.
      DeviceBuffer<float> in(mine);
      DeviceBuffer<float> out(static_cast<int64_t>(2 * count));
      ASSERT_TRUE(comm.AllGather(in.get(), count, out.get()).ok());
      std::vector<float> gathered = out.Download();
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(gathered[i], static_cast<float>(i % 97));
        ASSERT_EQ(gathered[count + i], static_cast<float>((i % 97) * 2));
      }
      // Host all-gather.
      std::vector<float> host_out(2 * count);
      ASSERT_TRUE(comm.AllGather(mine.data(), count, host_out.data()).ok());
      EXPECT_EQ(host_out, gathered);
      // Broadcast of host bytes from rank 0 (the step message path) and from rank 1.
      for (int root : {0, 1}) {
        std::vector<uint8_t> bytes(count + 13);
        for (size_t i = 0; i < bytes.size(); ++i) {
          bytes[i] = rank == root ? static_cast<uint8_t>(i * 31 + root) : 0;
        }
        ASSERT_TRUE(comm.Broadcast(bytes.data(), bytes.size(), root).ok());
        for (size_t i = 0; i < bytes.size(); ++i) {
          ASSERT_EQ(bytes[i], static_cast<uint8_t>(i * 31 + root));
        }
      }
      ASSERT_TRUE(comm.Barrier().ok());
      EXPECT_TRUE(comm.health().ok());
    });
  }
}

// The one-shot all-reduce's reduction: every rank's vector summed in rank order, exactly.
TEST(NcclCommunicatorTest, RankOrderSumAddsTheRanksInOrder) {
  ASSERT_GE(DeviceCount(), 1);
  for (const int world : {1, 2, 3, 8}) {
    const size_t count = 5000;
    std::vector<float> gathered(static_cast<size_t>(world) * count);
    for (size_t i = 0; i < gathered.size(); ++i) {
      gathered[i] = static_cast<float>(static_cast<int>(i * 7919 % 2003) - 1001) * 1.0e-3f;
    }
    DeviceBuffer<float> dg(gathered);
    DeviceBuffer<float> out(static_cast<int64_t>(count));
    ASSERT_EQ(RankOrderSum(dg.get(), world, count, out.get(), nullptr), cudaSuccess);
    const std::vector<float> got = out.Download();
    for (size_t i = 0; i < count; ++i) {
      float want = gathered[i];
      for (int r = 1; r < world; ++r) want += gathered[static_cast<size_t>(r) * count + i];
      ASSERT_EQ(got[i], want) << "world " << world << " element " << i;
    }
  }
  EXPECT_EQ(RankOrderSum(nullptr, 2, 4, nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(RankOrderSum(nullptr, 2, 0, nullptr, nullptr), cudaSuccess);
}

// Device all-reduces up to one_shot_max_bytes run as all-gather + rank-order sum, larger ones on
// ncclAllReduce: both give the host's sums (two ranks: one addition, exact). With -1 both ranks
// time the two at every calibration size and agree on the limit.
TEST(NcclCommunicatorTest, OneShotAllReduceMatchesHostArithmetic) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs";
  RunTwoRanks(
      "oneshot",
      [&](int rank, NcclCommunicator& comm) {
        EXPECT_EQ(comm.one_shot_max_bytes(), 64 << 10);
        for (size_t count :
             {size_t{1}, size_t{5120}, size_t{16384}, size_t{16385}, size_t{100000}}) {
          std::vector<float> mine(count);
          for (size_t i = 0; i < count; ++i) {
            mine[i] = static_cast<float>((i % 89) * (rank + 1)) * 0.37f;
          }
          DeviceBuffer<float> dev(mine);
          ASSERT_TRUE(comm.AllReduceSum(dev.get(), count).ok());
          ASSERT_TRUE(comm.Synchronize().ok());
          const std::vector<float> sum = dev.Download();
          for (size_t i = 0; i < count; ++i) {
            const float a = static_cast<float>(i % 89) * 0.37f;
            const float b = static_cast<float>((i % 89) * 2) * 0.37f;
            ASSERT_EQ(sum[i], a + b) << "count " << count << " element " << i;
          }
        }
        // Up to 64 KB (16,384 floats) the one-shot path ran, above it NCCL's all-reduce.
        EXPECT_EQ(comm.one_shot_all_reduces(), 3);
        EXPECT_EQ(comm.nccl_all_reduces(), 2);
        EXPECT_TRUE(comm.health().ok());
      },
      30000, 64 << 10);
  std::vector<int64_t> limits(2, -2);
  RunTwoRanks(
      "oneshot_calibrated",
      [&](int rank, NcclCommunicator& comm) {
        limits[static_cast<size_t>(rank)] = comm.one_shot_max_bytes();
        const std::vector<AllReduceTiming>& t = comm.all_reduce_timings();
        ASSERT_EQ(t.size(), std::size(kAllReduceCalibrationBytes));
        for (const AllReduceTiming& row : t) {
          EXPECT_GT(row.nccl_us, 0.0);
          EXPECT_GT(row.one_shot_us, 0.0);
          if (rank == 0) {
            std::printf("[all-reduce] %7lld bytes  nccl %7.2f us  one-shot %7.2f us\n",
                        static_cast<long long>(row.bytes), row.nccl_us, row.one_shot_us);
          }
        }
      },
      30000, -1);
  EXPECT_EQ(limits[0], limits[1]);
  std::printf("[all-reduce] one-shot up to %lld bytes\n", static_cast<long long>(limits[0]));
}

TEST(NcclCommunicatorTest, InitDeadlineNamesTheMissingRank) {
  ASSERT_GE(DeviceCount(), 1);
  LocalKeyValueStore store;
  NcclOptions o = Options(0, Prefix("missing"));
  o.init_timeout_ms = 3000;
  const auto start = Clock::now();
  auto comm = NcclCommunicator::Create(0, 2, &store, o);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kDeadlineExceeded) << comm.status().ToString();
  EXPECT_NE(comm.status().message().find("rank 1 never joined"), std::string::npos)
      << comm.status().message();
  EXPECT_LT(seconds, 20.0);

  // A rank other than 0 waiting for rank 0's unique id.
  NcclOptions o1 = Options(0, Prefix("no_root"));
  o1.init_timeout_ms = 1000;
  auto worker = NcclCommunicator::Create(1, 2, &store, o1);
  ASSERT_FALSE(worker.ok());
  EXPECT_EQ(worker.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(worker.status().message().find("rank 0"), std::string::npos)
      << worker.status().message();
}

TEST(NcclCommunicatorTest, HungCollectiveIsAbortedWithAClearStatus) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs";
  std::atomic<bool> rank0_done{false};
  RunTwoRanks(
      "hang",
      [&](int rank, NcclCommunicator& comm) {
        if (rank == 1) {
          // Never joins the collective; waits for rank 0 to give up.
          while (!rank0_done.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
          return;
        }
        struct Done {
          std::atomic<bool>* flag;
          ~Done() { flag->store(true); }
        } done{&rank0_done};
        DeviceBuffer<float> dev(std::vector<float>(1024, 1.0f));
        const auto start = Clock::now();
        // The all-reduce is enqueued and the wait ends with the watchdog's abort (or, while NCCL
        // still waits for the peer to connect, the enqueue itself fails after the same time).
        Status waited = comm.AllReduceSum(dev.get(), 1024);
        if (waited.ok()) waited = comm.Synchronize();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        EXPECT_EQ(waited.code(), StatusCode::kDeadlineExceeded) << waited.ToString();
        EXPECT_NE(waited.message().find("all-reduce did not complete within 2000 ms"),
                  std::string::npos)
            << waited.message();
        EXPECT_GE(seconds, 1.9);
        EXPECT_LT(seconds, 15.0);
        // The group stays broken: every later call returns the same Status.
        Status again = comm.Barrier();
        EXPECT_EQ(again.code(), StatusCode::kDeadlineExceeded);
        EXPECT_EQ(comm.health().code(), StatusCode::kDeadlineExceeded);
        std::vector<float> host(4, 1.0f);
        EXPECT_FALSE(comm.AllReduceSum(host.data(), host.size()).ok());
      },
      /*op_timeout_ms=*/2000);
}

}  // namespace
}  // namespace spark::engine
