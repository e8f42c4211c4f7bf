// ThreadTpGroup with CPU backends over Gloo: two ranks match one; a rank that fails to build
// fails Create() with its own error at once (no rendezvous or collective timeout).
#include "engine/bench/thread_tp_group.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>

#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/loader.h"

namespace spark::bench {
namespace {

namespace fs = std::filesystem;

const fs::path kModel = fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models" / "glm_base";

RankFactory CpuFactory(engine::KeyValueStore* store, const std::string& prefix, int fail_rank) {
  return [store, prefix, fail_rank](int rank, int tp, RankParts* parts) -> Status {
    if (tp > 1) {
      engine::GlooOptions gloo;
      gloo.prefix = prefix;
      SPARK_ASSIGN_OR_RETURN(parts->comm, engine::GlooCommunicator::Create(rank, tp, store, gloo));
    }
    if (rank == fail_rank) return ResourceExhausted("rank " + std::to_string(rank) + " is full");
    engine::LoadOptions load;
    load.tp_rank = rank;
    load.tp_size = tp;
    SPARK_ASSIGN_OR_RETURN(engine::ModelWeights w, engine::LoadModelWeights(kModel, load));
    engine::CpuBackendOptions cpu;
    cpu.threads = 1;
    cpu.kv_cache_bytes = 8 << 20;
    SPARK_ASSIGN_OR_RETURN(parts->backend,
                           engine::CpuBackend::Create(std::move(w), parts->comm.get(), cpu));
    return Status::Ok();
  };
}

std::vector<float> Logits(engine::Backend* b) {
  engine::ForwardBatch batch;
  batch.chunks.push_back({.seq_id = 1, .start_pos = 0, .tokens = {3, 17, 42, 5}});
  Result<engine::ForwardOutput> out = b->Forward(batch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  b->Release(1);
  return out.ok() ? out->logits : std::vector<float>{};
}

TEST(ThreadTpGroupTest, TwoRanksMatchOneRank) {
  engine::LocalKeyValueStore store;
  auto one = ThreadTpGroup::Create(1, CpuFactory(&store, "tp1", -1));
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  const std::vector<float> want = Logits((*one)->backend());
  auto two = ThreadTpGroup::Create(2, CpuFactory(&store, "tp2", -1));
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  const std::vector<float> got = Logits((*two)->backend());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-3) << i;
  EXPECT_TRUE((*two)->Shutdown().ok());
  EXPECT_TRUE((*two)->Shutdown().ok());  // idempotent
}

TEST(ThreadTpGroupTest, AFailingRankFailsCreateWithItsOwnError) {
  for (int fail : {0, 1}) {
    engine::LocalKeyValueStore store;
    const auto start = std::chrono::steady_clock::now();
    auto g = ThreadTpGroup::Create(2, CpuFactory(&store, "fail" + std::to_string(fail), fail));
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted) << g.status().ToString();
    EXPECT_NE(g.status().message().find("rank " + std::to_string(fail) + " is full"),
              std::string::npos);
    EXPECT_LT(s, 20.0);
  }
}

}  // namespace
}  // namespace spark::bench
