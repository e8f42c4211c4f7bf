#include "engine/shard/shard_settings.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace spark::shard {
namespace {

constexpr int64_t kDefaultKvCacheBytes = int64_t{256} << 20;
constexpr const char* kExtraKeys =
    "threads, max_batch_tokens, step_timeout_ms, keepalive_ms, kv_block_tokens, sampler, "
    "moe_autotune, cuda_graphs, kv_cache_dtype, moe_grouped_max_tokens, gemv_fp8, "
    "l2_prefetch_percent, one_shot_all_reduce_bytes";

Result<int64_t> ParseExtraInt(const std::string& key, const std::string& value, int64_t min,
                              int64_t max) {
  int64_t parsed = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), parsed);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || parsed < min ||
      parsed > max) {
    return InvalidArgument("engine option " + key + "=\"" + value + "\": must be an integer in [" +
                           std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return parsed;
}

}  // namespace

Result<spark::v1::ShardAssignment> ReadAssignmentFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFound("cannot read the assignment file " + path.string() +
                    "; spark-agent writes it before starting the shard (check --assignment)");
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  spark::v1::ShardAssignment assignment;
  if (!assignment.ParseFromString(buffer.str())) {
    return DataLoss("the assignment file " + path.string() +
                    " is not a serialized spark.v1.ShardAssignment; it is corrupt or was written "
                    "by an incompatible spark-agent");
  }
  return assignment;
}

std::string ShardSenderId(const spark::v1::ShardAssignment& assignment) {
  return "shard/" + assignment.deployment() + "/" + std::to_string(assignment.generation()) + "/" +
         std::to_string(assignment.rank());
}

Status ValidateAssignment(const spark::v1::ShardAssignment& a) {
  if (a.deployment().empty()) return InvalidArgument("assignment: deployment is empty");
  if (a.world_size() == 0) return InvalidArgument("assignment: world_size is 0");
  if (a.rank() >= a.world_size()) {
    return InvalidArgument("assignment: rank " + std::to_string(a.rank()) +
                           " is outside world_size " + std::to_string(a.world_size()));
  }
  if (a.options().tp() != 0 && a.options().tp() != a.world_size()) {
    return InvalidArgument("assignment: options.tp " + std::to_string(a.options().tp()) +
                           " differs from world_size " + std::to_string(a.world_size()));
  }
  if (ShardSenderId(a).size() > 255) {
    return InvalidArgument("assignment: deployment name too long (the shard id '" +
                           ShardSenderId(a) + "' must fit 255 bytes)");
  }
  if (a.model_path().empty()) return InvalidArgument("assignment: model_path is empty");
  return Status::Ok();
}

Result<EngineSettings> ResolveEngineSettings(const spark::v1::EngineOptions& options) {
  EngineSettings s;
  if (options.max_batch() > 0) s.max_running = static_cast<int>(options.max_batch());
  s.max_model_len = options.max_seq_len();
  bool keepalive_set = false;
  for (const auto& [key, value] : options.extra()) {
    if (key == "threads") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 0, 4096));
      s.threads = static_cast<int>(v);
    } else if (key == "max_batch_tokens") {
      SPARK_ASSIGN_OR_RETURN(s.max_batch_tokens, ParseExtraInt(key, value, 1, int64_t{1} << 24));
    } else if (key == "step_timeout_ms") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 100, 24 * 3600 * 1000));
      s.step_timeout = std::chrono::milliseconds(v);
    } else if (key == "keepalive_ms") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 10, 3600 * 1000));
      s.keepalive = std::chrono::milliseconds(v);
      keepalive_set = true;
    } else if (key == "kv_block_tokens") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 1, 4096));
      s.kv_block_tokens = static_cast<int>(v);
    } else if (key == "sampler") {
      if (value != "gpu" && value != "cpu") {
        return InvalidArgument("engine option sampler must be gpu or cpu, got '" + value + "'");
      }
      s.gpu_sampling = value == "gpu";
    } else if (key == "moe_autotune") {
      if (value != "on" && value != "off") {
        return InvalidArgument("engine option moe_autotune must be on or off, got '" + value + "'");
      }
      s.moe_autotune = value == "on";
    } else if (key == "cuda_graphs") {
      if (value != "on" && value != "off" && value != "auto") {
        return InvalidArgument("engine option cuda_graphs must be on, off or auto, got '" + value +
                               "'");
      }
      if (value == "auto") {
        s.cuda_graphs.reset();
      } else {
        s.cuda_graphs = value == "on";
      }
    } else if (key == "kv_cache_dtype") {
      if (value != "bf16" && value != "fp8") {
        return InvalidArgument("engine option kv_cache_dtype must be bf16 or fp8, got '" + value +
                               "'");
      }
      s.kv_cache_fp8 = value == "fp8";
    } else if (key == "moe_grouped_max_tokens") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 0, int64_t{1} << 20));
      s.moe_grouped_max_tokens = static_cast<int>(v);
    } else if (key == "gemv_fp8") {
      if (value != "convert" && value != "row_sweep" && value != "tensor_cores" &&
          value != "auto") {
        return InvalidArgument(
            "engine option gemv_fp8 must be convert, row_sweep, tensor_cores or auto, got '" +
            value + "'");
      }
      s.gemv_fp8 = value;
    } else if (key == "l2_prefetch_percent") {
      SPARK_ASSIGN_OR_RETURN(int64_t v, ParseExtraInt(key, value, 0, 100));
      s.l2_prefetch_percent = static_cast<int>(v);
    } else if (key == "one_shot_all_reduce_bytes") {
      SPARK_ASSIGN_OR_RETURN(s.one_shot_all_reduce_bytes,
                             ParseExtraInt(key, value, -1, int64_t{16} << 20));
    } else {
      return InvalidArgument("unknown engine option '" + key + "'; known options: " + kExtraKeys);
    }
  }
  const spark::v1::SpeculativeOptions& spec = options.speculative();
  if (spec.steps() > 0) {
    engine::SpeculativeOptions given;
    given.steps = static_cast<int>(std::min<uint32_t>(spec.steps(), 1u << 20));
    given.topk = spec.topk() == 0 ? 1 : static_cast<int>(std::min<uint32_t>(spec.topk(), 1u << 20));
    given.draft_tokens = static_cast<int>(std::min<uint32_t>(spec.draft_tokens(), 1u << 20));
    Result<engine::SpeculativeOptions> resolved = engine::ResolveSpeculativeOptions(given);
    if (!resolved.ok()) {
      return InvalidArgument("engine option speculative: " + resolved.status().message());
    }
    s.speculative = *resolved;
  } else if (spec.topk() != 0 || spec.draft_tokens() != 0) {
    return InvalidArgument(
        "engine option speculative: topk and draft_tokens need steps >= 1; set steps, or mode "
        "off to deploy without speculative decoding");
  } else {
    s.speculative_auto = spec.mode() == spark::v1::SPECULATIVE_MODE_AUTO;
  }
  if (!keepalive_set) {
    s.keepalive = std::min(std::chrono::milliseconds(1000), s.step_timeout / 4);
  }
  if (s.keepalive >= s.step_timeout) {
    return InvalidArgument("engine option keepalive_ms (" + std::to_string(s.keepalive.count()) +
                           ") must be shorter than step_timeout_ms (" +
                           std::to_string(s.step_timeout.count()) + "), or idle workers time out");
  }
  s.max_batch_tokens = std::max<int64_t>(s.max_batch_tokens, 1);
  s.max_running = static_cast<int>(std::min<int64_t>(s.max_running, s.max_batch_tokens));
  return s;
}

engine::SpeculativeOptions AutoSpeculativeOptions() {
  engine::SpeculativeOptions o;
  o.steps = 3;
  o.topk = 1;
  o.draft_tokens = 4;
  return o;
}

bool AutoSpeculation(spark::v1::Backend backend, const engine::ModelConfig& config,
                     size_t mtp_layers_present, bool dummy_weights) {
  return backend == spark::v1::BACKEND_CUDA && config.num_nextn_predict_layers > 0 &&
         (dummy_weights || mtp_layers_present > 0);
}

Status CheckSpeculativeModel(const engine::ModelConfig& config, const std::string& model) {
  if (config.num_nextn_predict_layers > 0) return Status::Ok();
  return FailedPrecondition("model " + model +
                            " has no MTP layer (num_nextn_predict_layers = 0): deploy without "
                            "speculative");
}

Status CheckMtpWeightsLoaded(const engine::ModelConfig& config, const std::string& model,
                             size_t mtp_layers_present) {
  if (mtp_layers_present > 0) return Status::Ok();
  return FailedPrecondition(
      "model " + model + " declares " + std::to_string(config.num_nextn_predict_layers) +
      " MTP layer(s) (num_nextn_predict_layers) but its checkpoint has no MTP weights "
      "(model.layers." +
      std::to_string(config.num_hidden_layers) +
      ".*, often stripped from released checkpoints): deploy without speculative, or use a "
      "checkpoint that keeps the MTP layer");
}

Status CheckSpeculationSupported(const engine::Backend& backend, spark::v1::Backend kind) {
  if (backend.SupportsSpeculation()) return Status::Ok();
  const std::string name = kind == spark::v1::BACKEND_CUDA ? "cuda" : "cpu";
  return Unimplemented("speculative decoding is not supported yet on the " + name +
                       " backend; deploy without speculative");
}

spark::v1::SpeculativeStats SpeculativeStatsToProto(const engine::SpeculativeStats& stats) {
  spark::v1::SpeculativeStats out;
  out.set_verify_steps(static_cast<uint64_t>(std::max<int64_t>(stats.verify_steps, 0)));
  out.set_drafted_tokens(static_cast<uint64_t>(std::max<int64_t>(stats.drafted_tokens, 0)));
  out.set_accepted_tokens(static_cast<uint64_t>(std::max<int64_t>(stats.accepted_tokens, 0)));
  out.set_emitted_tokens(static_cast<uint64_t>(std::max<int64_t>(stats.emitted_tokens, 0)));
  out.set_draft_ms(stats.draft_ms);
  out.set_verify_ms(stats.verify_ms);
  return out;
}

Result<int64_t> ResolveKvCacheBytes(const spark::v1::EngineOptions& options,
                                    const engine::ModelConfig& config, int tp_size,
                                    int64_t mem_available_bytes) {
  if (options.kv_cache_bytes() > 0) return static_cast<int64_t>(options.kv_cache_bytes());
  const double fraction = options.kv_cache_fraction();
  if (fraction < 0.0 || fraction > 1.0) {
    return InvalidArgument("engine option kv_cache_fraction " + std::to_string(fraction) +
                           " is outside (0, 1]");
  }
  if (fraction == 0.0) return kDefaultKvCacheBytes;
  const int64_t local_kv_heads =
      std::max<int64_t>(1, config.num_key_value_heads / std::max(tp_size, 1));
  const int64_t bytes_per_token = int64_t{config.num_hidden_layers} * 2 * local_kv_heads *
                                  config.head_dim * static_cast<int64_t>(sizeof(float));
  int64_t max_len =
      options.max_seq_len() > 0 ? options.max_seq_len() : config.max_position_embeddings;
  if (max_len <= 0) max_len = 4096;
  const int64_t max_batch = options.max_batch() > 0 ? options.max_batch() : 64;
  const int64_t useful = bytes_per_token * max_len * max_batch;
  const auto from_fraction =
      static_cast<int64_t>(fraction * static_cast<double>(mem_available_bytes));
  int64_t bytes = std::min(useful, from_fraction);
  if (bytes <= 0) bytes = kDefaultKvCacheBytes;
  return bytes;
}

int64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t kib = 0;
    if (fields >> kib) return kib * 1024;
  }
  return 0;
}

bool CudaGraphsFor(const EngineSettings& settings, int world_size) {
  return settings.cuda_graphs.value_or(world_size == 1);
}

}  // namespace spark::shard
