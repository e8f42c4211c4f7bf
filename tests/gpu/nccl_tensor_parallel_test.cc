// Tensor parallelism over NCCL on two GPUs: CudaBackend ranks as threads (one device each),
// collectives on the device (CollectiveMode::kDevice), step messages through TpLeaderBackend /
// RunTpWorker, against one rank on one GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/comm/gloo_communicator.h"
#include "engine/comm/nccl_communicator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/model/loader.h"
#include "engine/runtime/tp_engine.h"

namespace spark::engine {
namespace {

namespace fs = std::filesystem;

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

NcclOptions Options(int device, const std::string& prefix) {
  NcclOptions o;
  o.device = device;
  o.prefix = prefix;
  return o;
}

std::string Prefix(const std::string& name) {
  return "nccl_tp_test_" + name + "_" + std::to_string(::getpid());
}

fs::path ModelsDir() {
  if (const char* env = std::getenv("SPARK_REFERENCE_MODELS_DIR"); env != nullptr && *env) {
    return env;
  }
  return fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models";
}

// Prompt logits, then 6 greedy steps; logits of every step are returned.
Result<std::vector<std::vector<float>>> RunSteps(Backend& backend) {
  const int64_t vocab = backend.config().vocab_size;
  std::vector<std::vector<float>> out;
  ForwardBatch batch;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 11; ++i) prompt.push_back(static_cast<int32_t>((i * 7919 + 3) % vocab));
  batch.chunks.push_back({.seq_id = 7, .start_pos = 0, .tokens = prompt});
  for (int step = 0; step < 6; ++step) {
    SPARK_ASSIGN_OR_RETURN(ForwardOutput o, backend.Forward(batch));
    const float* row = o.logits.data();
    int32_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (row[i] > row[best]) best = static_cast<int32_t>(i);
    }
    batch.chunks[0].start_pos += static_cast<int64_t>(batch.chunks[0].tokens.size());
    batch.chunks[0].tokens = {best};
    out.push_back(std::move(o.logits));
  }
  backend.Release(7);
  return out;
}

TEST(NcclCommunicatorTest, TensorParallelOverNcclMatchesOneRank) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two GPUs";
  const fs::path dir = ModelsDir() / "glm_base";
  cuda::CudaBackendOptions opts;
  opts.kv_cache_bytes = int64_t{64} << 20;
  opts.max_batch_tokens = 256;
  Result<ModelWeights> w = LoadModelWeights(dir, {});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Result<std::unique_ptr<cuda::CudaBackend>> one =
      cuda::CudaBackend::Create(std::move(*w), nullptr, opts);
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  Result<std::vector<std::vector<float>>> want = RunSteps(**one);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  one->reset();

  LocalKeyValueStore store;
  std::vector<std::string> errors(2);
  std::vector<std::vector<std::vector<float>>> got(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      auto fail = [&](const Status& s) { errors[rank] = s.ToString(); };
      SPARK_CUDA_CHECK(cudaSetDevice(rank));
      auto comm = NcclCommunicator::Create(rank, 2, &store, Options(rank, Prefix("tp")));
      if (!comm.ok()) return fail(comm.status());
      LoadOptions load;
      load.tp_rank = rank;
      load.tp_size = 2;
      Result<ModelWeights> rw = LoadModelWeights(dir, load);
      if (!rw.ok()) return fail(rw.status());
      cuda::CudaBackendOptions ro = opts;
      ro.device = rank;
      ro.stream = (*comm)->stream();
      ro.collectives = cuda::CollectiveMode::kDevice;
      auto b = cuda::CudaBackend::Create(std::move(*rw), comm->get(), ro);
      if (!b.ok()) return fail(b.status());
      if (rank == 0) {
        TpLeaderBackend leader(b->get(), comm->get());
        Result<std::vector<std::vector<float>>> r = RunSteps(leader);
        Status stopped = leader.Stop();
        if (!r.ok()) return fail(r.status());
        if (!stopped.ok()) return fail(stopped);
        got[0] = std::move(*r);
      } else {
        Status worked = RunTpWorker(b->get(), comm->get());
        if (!worked.ok()) return fail(worked);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
  ASSERT_EQ(got[0].size(), want->size());
  double max_ref = 0;
  double max_diff = 0;
  for (size_t s = 0; s < want->size(); ++s) {
    ASSERT_EQ(got[0][s].size(), (*want)[s].size());
    for (size_t i = 0; i < got[0][s].size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(static_cast<double>((*want)[s][i])));
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[0][s][i]) - (*want)[s][i]));
    }
  }
  std::printf("[nccl-tp] glm_base tp=2 over NCCL vs tp=1: max|diff|/max|ref| = %.3e\n",
              max_diff / max_ref);
  EXPECT_LE(max_diff / max_ref, 2e-2);
}

}  // namespace
}  // namespace spark::engine
