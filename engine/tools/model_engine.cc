#include "engine/tools/model_engine.h"

#include <atomic>
#include <chrono>
#include <string>
#include <utility>

#include "engine/runtime/local_tp_group.h"
#if defined(SPARK_HAVE_CUDA)
#include "engine/bench/cuda_rank.h"
#include "engine/bench/thread_tp_group.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/loader.h"
#endif

namespace spark::tools {
namespace {

class CpuModelEngine final : public ModelEngine {
 public:
  explicit CpuModelEngine(std::unique_ptr<engine::LocalTpGroup> group) : group_(std::move(group)) {}
  engine::Backend* backend() override { return group_->backend(); }
  const engine::ModelConfig& config() const override { return group_->config(); }
  Status Shutdown() override { return group_->Shutdown(); }

 private:
  std::unique_ptr<engine::LocalTpGroup> group_;
};

#if defined(SPARK_HAVE_CUDA)

class CudaModelEngine final : public ModelEngine {
 public:
  CudaModelEngine(engine::ModelConfig config, std::unique_ptr<engine::LocalKeyValueStore> store,
                  std::unique_ptr<bench::ThreadTpGroup> group)
      : config_(std::move(config)), store_(std::move(store)), group_(std::move(group)) {}
  ~CudaModelEngine() override { Shutdown().IgnoreError(); }
  engine::Backend* backend() override { return group_->backend(); }
  const engine::ModelConfig& config() const override { return config_; }
  Status Shutdown() override { return group_->Shutdown(); }

 private:
  engine::ModelConfig config_;
  std::unique_ptr<engine::LocalKeyValueStore> store_;  // outlives the group's ranks
  std::unique_ptr<bench::ThreadTpGroup> group_;
};

// Rank `rank` of `tp`: CUDA device `rank`, its NCCL communicator (tp > 1) and its CudaBackend.
Status MakeRank(const std::filesystem::path& dir, const engine::ModelConfig& config,
                const engine::OfflineEngineOptions& o, const std::string& prefix,
                engine::KeyValueStore* store, int rank, int tp, bench::RankParts* parts) {
  cuda::CudaBackendOptions options;
  options.kv_cache_bytes = o.kv_cache_bytes;
  engine::NcclOptions n;
  n.prefix = prefix;
  n.op_timeout_ms = 600000;  // another rank may still be loading a large checkpoint
  SPARK_ASSIGN_OR_RETURN(engine::Communicator * comm,
                         bench::JoinCudaRank(rank, tp, n, store, &options, parts));
  if (o.dummy_weights) {
    cuda::DummyWeightsSpec spec;
    spec.tp_rank = rank;
    spec.tp_size = tp;
    spec.seed = o.dummy_seed;
    SPARK_ASSIGN_OR_RETURN(parts->backend,
                           cuda::CudaBackend::CreateDummy(config, spec, comm, options));
  } else {
    engine::LoadOptions load;
    load.tp_rank = rank;
    load.tp_size = tp;
    load.load_mtp = o.load_mtp;
    SPARK_ASSIGN_OR_RETURN(parts->backend, cuda::CudaBackend::Load(dir, load, comm, options));
  }
  return Status::Ok();
}

Result<std::unique_ptr<ModelEngine>> OpenCuda(const std::filesystem::path& dir,
                                              const engine::OfflineEngineOptions& o) {
  SPARK_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(dir));
  SPARK_RETURN_IF_ERROR(engine::ValidateTensorParallel(config, o.tp_size));
  static std::atomic<uint64_t> groups{0};
  const std::string prefix =
      "spark-model/" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
      "-" + std::to_string(groups.fetch_add(1));
  auto store = std::make_unique<engine::LocalKeyValueStore>();
  engine::KeyValueStore* raw_store = store.get();
  bench::RankFactory factory = [dir, config, o, prefix, raw_store](int rank, int tp,
                                                                   bench::RankParts* parts) {
    return MakeRank(dir, config, o, prefix, raw_store, rank, tp, parts);
  };
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<bench::ThreadTpGroup> group,
                         bench::ThreadTpGroup::Create(o.tp_size, factory));
  return std::unique_ptr<ModelEngine>(
      new CudaModelEngine(config, std::move(store), std::move(group)));
}

#endif

}  // namespace

Result<std::unique_ptr<ModelEngine>> OpenModelEngine(const std::filesystem::path& model_dir,
                                                     const engine::OfflineEngineOptions& options) {
  if (options.backend == "cuda") {
    if (options.tp_size < 1) {
      return InvalidArgument("--tp " + std::to_string(options.tp_size) + ": must be >= 1");
    }
    if (options.kv_cache_bytes <= 0) return InvalidArgument("the KV cache size must be > 0 bytes");
#if defined(SPARK_HAVE_CUDA)
    return OpenCuda(model_dir, options);
#else
    return Unimplemented(
        "--backend cuda: not supported yet: the CUDA backend is not built into this spark-model; "
        "build it with the cuda preset (cmake --preset cuda) or use --backend cpu");
#endif
  }
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::LocalTpGroup> group,
                         engine::OpenOfflineEngine(model_dir, options));
  return std::unique_ptr<ModelEngine>(new CpuModelEngine(std::move(group)));
}

}  // namespace spark::tools
