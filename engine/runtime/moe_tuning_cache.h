// MoE tuning records: the measured best tile config of the fused MoE grouped GEMMs
// (engine/cuda/moe.h) per device class, GEMM shape and batch-size bucket, or, for the buckets the
// MoE GEMV path serves (a few tokens), the best work split of its kernels; their versioned JSON
// file, their wire form (spark.v1.MoeTuningRecord) and the import of SGLang/vLLM fused_moe
// tuning files. Host-only (no CUDA), so the agent, the controller and CPU tests use it.
//
// A device class is (device name, compute capability, shared-memory limit per block the configs
// were restricted to). A record's problem key is (format, GEMM, E, N, K, top_k, batch bucket);
// the batch bucket is the token count rounded up to a power of two. The cache file:
//   {"format": "spark-moe-tuning", "version": 1, "records": [
//     {"device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
//                 "smem_limit_bytes": 232448},
//      "format": "fp8-per-channel", "gemm": "gate_up", "experts": 128, "n": 2816, "k": 4096,
//      "top_k": 8, "batch": 64,
//      "config": {"block_m": 32, "block_n": 128, "block_k_bytes": 128, "warps": 4, "stages": 3,
//                 "split_k": 1},
//      "measured_us": 41.5, "tuned_unix_ms": 1767225600000, "source": "tuner"}]}
// A GEMV-path record has "gemm": "gemv" (both expert GEMMs of the bucket; n = 2*Im, k = H as for
// gate_up) and, in place of "config",
//      "gemv": {"gate_up_k_splits": 1, "gate_up_sweep": 0, "down_outputs": 8, "down_vectors": 1,
//               "fp8_dequant": "convert"}
// with "measured_us" the whole MoE forward of the bucket. Files holding one are version 2 (an
// older build refuses them by version instead of by record); others stay version 1.
// Every record also carries "kernel_generation" (kMoeKernelGeneration when it was measured; a
// record without it is generation 1).
// Merging: of two records with the same device class and problem key the one of the newer kernel
// generation wins, then the newer (tuned_unix_ms), then at equal times the faster one.
//
// The header is C++17 (CUDA sources include it).
// Thread safety: values and pure functions; UpdateMoeTuningFile serialises writers of one file
// (also across processes) with an advisory lock on "<file>.lock".
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::engine {

// Environment variable through which spark-agent tells its shards where the node's cache file
// is (<state-dir>/moe_tuning.json).
inline constexpr char kMoeTuningFileEnv[] = "SPARK_MOE_TUNING_FILE";
// Name of the cache file in the agent's state directory.
inline constexpr char kMoeTuningFileName[] = "moe_tuning.json";
// Generation of the MoE kernels (tiles, GEMV path) and of the tuner's candidates that records are
// measured with. Raised when a change to them can move which choice is fastest; a shard retunes
// (and then replaces) records of an older generation, so an upgrade never keeps measurements of
// kernels it no longer runs. Records from before the field are generation 1.
inline constexpr int kMoeKernelGeneration = 2;

// Newest version of the cache file format this build reads (and writes when a record needs it:
// version 2 adds GEMV-path records).
inline constexpr int kMoeTuningFileVersion = 2;

struct MoeDeviceClass {
  std::string name;  // CUDA device name, "NVIDIA H100 80GB HBM3"
  int cc_major = 0;
  int cc_minor = 0;
  int64_t smem_limit_bytes = 0;  // the device's opt-in limit, or the lower emulation cap

  // "NVIDIA H100 80GB HBM3/sm90/smem232448": the controller's device_class column.
  std::string Key() const;
  bool operator==(const MoeDeviceClass& other) const;
  bool operator!=(const MoeDeviceClass& other) const { return !(*this == other); }
};

// One tile config of the MoE grouped GEMM, as MoeTileConfig (engine/cuda/moe_config.h) without
// the compiled variant's index (that is looked up by shape when the record is applied).
struct MoeTileChoice {
  int block_m = 0;
  int block_n = 0;
  int block_k_bytes = 0;
  int warps = 0;
  int stages = 0;
  int split_k = 1;

  // Dynamic shared memory of the config; the same formula as MoeTileConfig::SmemBytes.
  int64_t SmemBytes() const {
    return (int64_t{block_m} * 16 + 16 + 127) / 128 * 128 +
           int64_t{stages} * (block_m + block_n) * block_k_bytes;
  }
  std::string ToString() const;  // "m32n128k128B w4 s3 split1"
  bool operator==(const MoeTileChoice& other) const;
  bool operator!=(const MoeTileChoice& other) const { return !(*this == other); }
};

// The work split of the MoE GEMV path's kernels, as MoeGemvTiling (engine/cuda/moe_config.h)
// with every field resolved (no zeros) and the FP8 dequantisation by name.
struct MoeGemvChoice {
  int gate_up_k_splits = 1;             // 1, 2, 4, 8
  int gate_up_sweep = 0;                // 0, 1
  int down_outputs = 8;                 // 4, 8, 16
  int down_vectors = 1;                 // 1, 2, 3, 4 (4: every item of a warp in flight)
  std::string fp8_dequant = "convert";  // "convert", "scaled_bits", "half_mma"

  std::string ToString() const;  // "gate_up k1 rows | down o8 v1 | convert"
  bool operator==(const MoeGemvChoice& other) const;
  bool operator!=(const MoeGemvChoice& other) const { return !(*this == other); }
};
// Known names of MoeGemvChoice::fp8_dequant.
bool IsMoeGemvDequant(std::string_view name);

// The routed-expert GEMMs of one model on one tensor-parallel rank.
struct MoeGemmShape {
  std::string format;  // "bf16", "fp8-per-channel", "fp8-block128"
  int experts = 0;     // expert slots of the grouped GEMMs: E, plus fused shared experts
  int64_t hidden = 0;  // H
  int64_t inter = 0;   // Im of this rank
  int top_k = 0;       // (token, expert) pairs per token: top_k, plus fused shared experts
};

struct MoeTuningRecord {
  MoeDeviceClass device;
  std::string format;  // as MoeGemmShape::format
  // "gate_up" (N = 2*Im, K = H), "down" (N = H, K = Im) or "gemv" (the GEMV path's two kernels;
  // N = 2*Im, K = H)
  std::string gemm;
  int experts = 0;
  int64_t n = 0;
  int64_t k = 0;
  int top_k = 0;
  int64_t batch = 0;       // tokens of the bucket, a power of two
  MoeTileChoice config;    // gate_up and down records
  MoeGemvChoice gemv;      // gemv records
  double measured_us = 0;  // 0 = not measured here (imported)
  int64_t tuned_unix_ms = 0;
  std::string source;                            // "tuner", "sglang:<file name>"
  int kernel_generation = kMoeKernelGeneration;  // the kernels it was measured with

  // Problem key within the device class: "moe/fp8-per-channel/gate_up/e128/n2816/k4096/top8/b64"
  // (the controller's key column).
  std::string Key() const;
  // InvalidArgument naming the field, the value and the rule.
  Status Validate() const;
  Status ValidateTile() const;  // the config of a gate_up or down record
  Status ValidateGemv() const;  // the gemv choice of a gemv record
  bool operator==(const MoeTuningRecord& other) const;
  bool operator!=(const MoeTuningRecord& other) const { return !(*this == other); }
};

// Known names of formats and GEMMs ("gate_up", "down", "gemv").
bool IsMoeTuningFormat(std::string_view format);
bool IsMoeTuningGemm(std::string_view gemm);

// The bucket of `tokens` (>= 1): the smallest power of two >= tokens.
int64_t MoeBatchBucket(int64_t tokens);
// Buckets 1, 2, 4, ... up to MoeBatchBucket(max_tokens).
std::vector<int64_t> MoeBatchBuckets(int64_t max_tokens);

// The (gemm, n, k) of both GEMMs of `shape`: {"gate_up", 2*Im, H}, {"down", H, Im}.
struct MoeGemmDims {
  std::string gemm;
  int64_t n = 0;
  int64_t k = 0;
};
std::vector<MoeGemmDims> MoeGemmDimsOf(const MoeGemmShape& shape);
// The (gemm, n, k) a "gemv" record of `shape` is keyed by: {"gemv", 2*Im, H}.
MoeGemmDims MoeGemvDimsOf(const MoeGemmShape& shape);

// One record as JSON (the cache file's element, the controller's config_json) and back.
std::string MoeTuningRecordToJson(const MoeTuningRecord& record);
Result<MoeTuningRecord> MoeTuningRecordFromJson(std::string_view json_text);
// Wire form and back (FromProto validates).
spark::v1::MoeTuningRecord MoeTuningRecordToProto(const MoeTuningRecord& record);
Result<MoeTuningRecord> MoeTuningRecordFromProto(const spark::v1::MoeTuningRecord& proto);

class MoeTuningCache {
 public:
  // Parses a cache file's text; `origin` (a path) prefixes every error. InvalidArgument for a
  // wrong "format", a version newer than this build reads, or a bad record (named by index).
  static Result<MoeTuningCache> Parse(std::string_view json_text, std::string_view origin);
  // Reads a cache file; a missing file is an empty cache.
  static Result<MoeTuningCache> Load(const std::filesystem::path& path);

  std::string Serialize() const;  // records sorted by device class and key
  // Writes the file atomically (temporary file, fsync, rename).
  Status Save(const std::filesystem::path& path) const;

  // Validates and adds `record` under the merge rule; returns whether the cache changed.
  Result<bool> Add(const MoeTuningRecord& record);
  // Adds every record of `other`; returns how many changed the cache.
  int Merge(const MoeTuningCache& other);

  // The record for one problem on one device class, if any.
  std::optional<MoeTuningRecord> Find(const MoeDeviceClass& device, std::string_view format,
                                      std::string_view gemm, int experts, int64_t n, int64_t k,
                                      int top_k, int64_t batch) const;
  // The GEMV-path record of `shape` on `device` for bucket `batch`, if any.
  std::optional<MoeTuningRecord> FindGemv(const MoeDeviceClass& device, const MoeGemmShape& shape,
                                          int64_t batch) const;
  // Every record of `shape` on `device` for the buckets in `batches` (both GEMMs, and the GEMV
  // path's record).
  std::vector<MoeTuningRecord> ForShape(const MoeDeviceClass& device, const MoeGemmShape& shape,
                                        const std::vector<int64_t>& batches) const;
  // The buckets of `batches` that lack a record on `device`: buckets up to `gemv_max_tokens`
  // (the GEMV path's, 0 = none) their "gemv" record, the others either GEMM's. Records of a
  // kernel generation below `min_kernel_generation` count as missing.
  std::vector<int64_t> MissingBatches(const MoeDeviceClass& device, const MoeGemmShape& shape,
                                      const std::vector<int64_t>& batches,
                                      int64_t gemv_max_tokens = 0,
                                      int min_kernel_generation = 0) const;

  const std::vector<MoeTuningRecord>& records() const { return records_; }
  size_t size() const { return records_.size(); }
  bool empty() const { return records_.empty(); }

 private:
  std::vector<MoeTuningRecord> records_;
};

// Merges `records` into the cache file at `path` under an exclusive lock on "<path>.lock"
// (re-reads the file first, so concurrent writers do not lose records); returns how many
// records changed the file. The file is rewritten only when something changed.
Result<int> UpdateMoeTuningFile(const std::filesystem::path& path,
                                const std::vector<MoeTuningRecord>& records);

// A tile shape the MoE kernel has compiled (engine/cuda: MoeKernelVariants()) for the format
// being imported.
struct MoeTileShape {
  int block_m = 0;
  int block_n = 0;
  int block_k_bytes = 0;
  int warps = 0;
};

// Imports an SGLang/vLLM fused_moe tuning file. `file_name` is its base name
// ("E=128,N=1408,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json");
// its E, N (= Im of the rank), dtype/block_shape and device_name must match `shape` and
// `device` (InvalidArgument naming both otherwise). `json_text` maps batch sizes to
// {BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages}. For each bucket
// of `batches` the entry of the nearest batch size is mapped to the nearest compiled tile of
// `tiles` with the deepest pipeline up to num_stages that stays within device.smem_limit_bytes
// (never above it; split-K 1), for both GEMMs (SGLang uses one config for both).
// Records get measured_us 0, tuned_unix_ms `now_unix_ms` and source "sglang:<file name>".
Result<std::vector<MoeTuningRecord>> ImportSglangMoeConfig(
    std::string_view file_name, std::string_view json_text, const MoeDeviceClass& device,
    const MoeGemmShape& shape, const std::vector<MoeTileShape>& tiles,
    const std::vector<int64_t>& batches, int64_t now_unix_ms);

}  // namespace spark::engine
