#include "engine/shard/moe_autotune.h"

#include "common/log.h"
#include "engine/cuda/device_info.h"
#include "engine/model/config.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::shard {

Result<MoeAutotuneOutcome> PrepareMoeTuning(const spark::v1::ShardAssignment& a,
                                            const MoeAutotuneSetup& setup) {
  MoeAutotuneOutcome out;
  SPARK_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(a.model_path()));
  if (config.n_routed_experts <= 0) return out;
  SPARK_ASSIGN_OR_RETURN(cuda::MoeShape shape,
                         cuda::MoeShapeOfModel(config, setup.tp, setup.fuse_shared_experts));
  const cuda::MoeWeightFormat format = cuda::MoeWeightFormatOfModel(config);
  SPARK_ASSIGN_OR_RETURN(cuda::DeviceInfo device, cuda::QueryDevice(setup.device));
  SPARK_ASSIGN_OR_RETURN(cuda::MoeConfigTable table,
                         cuda::MoeConfigTable::Create(device, setup.smem_cap_bytes));
  table.SetGemvMaxTokens(setup.gemv_max_tokens);
  const int64_t gemv_limit = cuda::MoeGemvBatchLimit(table, shape, format);
  const engine::MoeDeviceClass device_class = cuda::MoeDeviceClassOf(device, table);
  const engine::MoeGemmShape gemm_shape = cuda::MoeGemmShapeOf(shape, format);
  const std::vector<int64_t> batches = engine::MoeBatchBuckets(setup.max_batch_tokens);
  out.buckets = static_cast<int>(batches.size());

  engine::MoeTuningCache cache;
  for (const spark::v1::MoeTuningRecord& wire : a.moe_tunings()) {
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromProto(wire);
    if (!r.ok()) {
      SPARK_LOG(WARN).With("error", r.status()) << "skipped a MoE tuning record of the assignment";
      continue;
    }
    cache.Add(*r).status().IgnoreError();
  }
  out.from_assignment = static_cast<int>(cache.ForShape(device_class, gemm_shape, batches).size());
  if (!setup.cache_file.empty()) {
    Result<engine::MoeTuningCache> file = engine::MoeTuningCache::Load(setup.cache_file);
    if (file.ok()) {
      out.from_file = static_cast<int>(file->ForShape(device_class, gemm_shape, batches).size());
      cache.Merge(*file);
    } else {
      SPARK_LOG(WARN).With("error", file.status())
          << "ignoring the MoE tuning cache file; tuning what the controller did not send";
    }
  }
  // Records of tiles this build cannot launch here (an older build's, or above the limit) count
  // as missing: they are tuned again.
  engine::MoeTuningCache usable;
  for (const engine::MoeTuningRecord& r : cache.ForShape(device_class, gemm_shape, batches)) {
    Status st;
    if (r.gemm == "gemv") {
      st = cuda::MoeGemvTilingOf(r.gemv).status();
    } else {
      Result<cuda::MoeTileConfig> config = cuda::MoeTileConfigOf(r.config, format);
      st = config.ok() ? table.Check(format, *config) : config.status();
    }
    if (!st.ok()) {
      SPARK_LOG(WARN).With("record", r.Key()).With("error", st)
          << "skipped a MoE tuning record this build cannot launch";
      continue;
    }
    usable.Add(r).status().IgnoreError();
  }
  // Records measured with older kernels are retuned (and replaced) unless tuning is off.
  const std::vector<int64_t> missing = usable.MissingBatches(
      device_class, gemm_shape, batches, gemv_limit, engine::kMoeKernelGeneration);
  if (!missing.empty() && !setup.autotune) {
    SPARK_LOG(INFO).With("device_class", device_class.Key()).With("untuned_buckets", missing.size())
        << "MoE autotuning is off (moe_autotune=off): batch buckets without a record of this "
           "kernel generation keep an older record or the heuristic";
  } else if (!missing.empty()) {
    SPARK_LOG(INFO)
            .With("device_class", device_class.Key())
            .With("shape", "E=" + std::to_string(shape.num_experts) +
                               " H=" + std::to_string(shape.hidden) +
                               " Im=" + std::to_string(shape.inter) + " " + gemm_shape.format)
            .With("buckets", missing.size())
        << "tuning the MoE tile configs of this device class (first load)";
    cuda::MoeTunerOptions options;
    options.batches = missing;
    options.max_seconds = setup.max_seconds;
    options.progress = [](const std::string& line) { SPARK_LOG(INFO) << "MoE tuning: " << line; };
    SPARK_ASSIGN_OR_RETURN(cuda::MoeTuneResult tuned,
                           cuda::TuneMoe(device, table, shape, format, options));
    for (const engine::MoeTuningRecord& r : tuned.records) usable.Add(r).status().IgnoreError();
    out.tuned_buckets = static_cast<int>(missing.size() - tuned.skipped_batches.size());
    out.tune_seconds = tuned.seconds;
    SPARK_LOG(INFO)
            .With("seconds", tuned.seconds)
            .With("buckets", out.tuned_buckets)
            .With("timed_forwards", tuned.timed_forwards)
            .With("skipped_buckets", tuned.skipped_batches.size())
        << "MoE tuning done";
    if (setup.cache_file.empty()) {
      SPARK_LOG(WARN) << "SPARK_MOE_TUNING_FILE is not set (no spark-agent): the tuned MoE "
                         "configs are used by this shard only";
    } else {
      Result<int> written = engine::UpdateMoeTuningFile(setup.cache_file, tuned.records);
      if (!written.ok()) {
        SPARK_LOG(WARN).With("error", written.status())
            << "cannot write the MoE tuning cache file; the next load tunes again";
      }
    }
  }
  SPARK_ASSIGN_OR_RETURN(out.choices,
                         cuda::MoeTunedChoicesOf(usable.ForShape(device_class, gemm_shape, batches),
                                                 device_class, shape, format, table));
  SPARK_LOG(INFO)
          .With("device_class", device_class.Key())
          .With("tuned_choices", out.choices.size())
          .With("buckets", out.buckets)
          .With("from_controller", out.from_assignment)
          .With("from_file", out.from_file)
          .With("tuned_now", out.tuned_buckets)
      << "MoE tile configs";
  return out;
}

}  // namespace spark::shard
