#include "engine/bench/engine_throughput.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <ostream>
#include <sstream>
#include <thread>
#include <utility>

#include "engine/bench/thread_tp_group.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/loader.h"
#include "engine/model/weights.h"
#if defined(SPARK_HAVE_CUDA)
#include "engine/bench/cuda_rank.h"
#endif

namespace spark::bench {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string QuantName(const engine::ModelConfig& c) {
  switch (c.quant.method) {
    case engine::QuantMethod::kFp8PerChannel:
      return "fp8-channel";
    case engine::QuantMethod::kFp8Block:
      return "fp8-block";
    case engine::QuantMethod::kNone:
      break;
  }
  return "bf16";
}

// Bytes of a [rows, cols] linear as stored: FP8 (1 byte + scales) or BF16.
double LinearBytes(const engine::ModelConfig& c, double rows, double cols, bool quantized) {
  if (!quantized || c.quant.method == engine::QuantMethod::kNone) return rows * cols * 2;
  if (c.quant.method == engine::QuantMethod::kFp8PerChannel) return rows * cols + rows * 4;
  const double blocks =
      std::ceil(rows / c.quant.block_n) * std::ceil(cols / std::max(1, c.quant.block_k));
  return rows * cols + blocks * 4;
}

// Read bandwidth of this machine's memory with `threads` threads (best of three passes over
// 512 MiB), in GB/s.
double MeasureCpuReadGbs(int threads) {
  const size_t n = (size_t{512} << 20) / sizeof(uint64_t);
  std::vector<uint64_t> data(n, 1);
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    std::atomic<uint64_t> sink{0};
    const auto start = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = n * t / threads;
        const size_t end = n * (t + 1) / threads;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = begin;
        for (; i + 4 <= end; i += 4) {
          s0 += data[i];
          s1 += data[i + 1];
          s2 += data[i + 2];
          s3 += data[i + 3];
        }
        for (; i < end; ++i) s0 += data[i];
        sink += s0 + s1 + s2 + s3;
      });
    }
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (sink.load() == n)
      best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s / 1e9);
  }
  return best;
}

// KV bytes per token (all layers) of one rank: the CPU caches fp32, the CUDA backend BF16.
int64_t KvBytesPerToken(const engine::ModelConfig& c, int tp, int element_bytes) {
  const int64_t local_kv = std::max(1, c.num_key_value_heads / tp);
  return int64_t{c.num_hidden_layers} * 2 * local_kv * c.head_dim * element_bytes;
}

std::string UniquePrefix() {
  static std::atomic<uint64_t> counter{0};
  return "spark-bench/" + std::to_string(Clock::now().time_since_epoch().count()) + "-" +
         std::to_string(counter.fetch_add(1));
}

// Prefills `batch` sequences of `input_len` tokens in steps of at most `max_tokens` tokens.
Status Prefill(engine::Backend* b, int batch, int input_len, int64_t max_tokens, int64_t vocab) {
  std::vector<int> done(static_cast<size_t>(batch), 0);
  int seq = 0;
  while (seq < batch) {
    engine::ForwardBatch step;
    int64_t tokens = 0;
    while (seq < batch && tokens < max_tokens) {
      const int take = static_cast<int>(
          std::min<int64_t>(input_len - done[static_cast<size_t>(seq)], max_tokens - tokens));
      engine::SequenceChunk chunk;
      chunk.seq_id = static_cast<uint64_t>(seq + 1);
      chunk.start_pos = done[static_cast<size_t>(seq)];
      for (int i = 0; i < take; ++i) {
        chunk.tokens.push_back(
            static_cast<int32_t>((int64_t{seq} * 7919 + chunk.start_pos + i) * 104729 % vocab));
      }
      step.chunks.push_back(std::move(chunk));
      tokens += take;
      done[static_cast<size_t>(seq)] += take;
      if (done[static_cast<size_t>(seq)] == input_len) ++seq;
    }
    SPARK_RETURN_IF_ERROR(b->Forward(step).status());
  }
  return Status::Ok();
}

}  // namespace

StepBytes DecodeStepBytes(const engine::ModelConfig& c, int tp, int batch, double context,
                          int kv_element_bytes) {
  StepBytes s;
  const double h = static_cast<double>(c.hidden_size);
  const double t = static_cast<double>(std::max(1, tp));
  double w = 0;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    // Attention: q, k, v, o (column / row parallel).
    w += LinearBytes(c, static_cast<double>(c.q_size()) / t, h, true);
    const double kv_rows = static_cast<double>(std::max(1, c.num_key_value_heads / tp)) *
                           static_cast<double>(c.head_dim);
    w += 2 * LinearBytes(c, kv_rows, h, true);
    w += LinearBytes(c, h, static_cast<double>(c.q_size()) / t, true);
    if (c.IsMoeLayer(layer)) {
      const double e = c.n_routed_experts;
      const double k = c.num_experts_per_tok;
      const double im = static_cast<double>(c.moe_intermediate_size) / t;
      const double expected = e > 0 ? e * (1.0 - std::pow(1.0 - k / e, batch)) : 0.0;
      s.expected_experts = expected;
      const double expert = 2 * LinearBytes(c, im, h, true) + LinearBytes(c, h, im, true);
      w += expected * expert;
      w += c.n_shared_experts * expert;
      w += e * h * 4;  // router (fp32), replicated
    } else {
      const double im = static_cast<double>(c.intermediate_size) / t;
      w += 2 * LinearBytes(c, im, h, true) + LinearBytes(c, h, im, true);
    }
  }
  w += LinearBytes(c, static_cast<double>(c.vocab_size) / t, h, false);  // lm_head
  s.weight_bytes = w;
  s.kv_bytes = static_cast<double>(batch) * context *
               static_cast<double>(KvBytesPerToken(c, tp, kv_element_bytes));
  return s;
}

double DecodeStepFlops(const engine::ModelConfig& c, int tp, int batch, double context) {
  const double h = static_cast<double>(c.hidden_size);
  const double t = static_cast<double>(std::max(1, tp));
  const double q_local = static_cast<double>(c.q_size()) / t;
  const double kv_local = static_cast<double>(std::max(1, c.num_key_value_heads / tp)) *
                          static_cast<double>(c.head_dim);
  double per_token = 0;  // multiply-adds per token
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    per_token += h * (q_local + 2 * kv_local) + q_local * h;  // q, k, v, o
    per_token += 2 * context * q_local;                       // scores and values
    if (c.IsMoeLayer(layer)) {
      const double im = static_cast<double>(c.moe_intermediate_size) / t;
      per_token += (c.num_experts_per_tok + c.n_shared_experts) * 3 * h * im;
      per_token += c.n_routed_experts * h;  // router
    } else {
      per_token += 3 * h * static_cast<double>(c.intermediate_size) / t;
    }
  }
  per_token += h * static_cast<double>(c.vocab_size) / t;  // lm_head
  return 2 * per_token * batch;
}

Result<engine::ModelConfig> ResolveBenchConfig(const EngineBenchOptions& o) {
  if (!o.model_dir.empty() && !o.config.empty()) {
    return InvalidArgument("give either --model DIR or --config NAME|PATH, not both");
  }
  if (!o.model_dir.empty()) return engine::LoadModelConfig(o.model_dir);
  if (o.config.empty()) {
    return InvalidArgument(
        "no model: pass --model DIR, or --config with a built-in name (glm-4.7, glm-4.6, "
        "glm-4.5, glm-4.5-air) or a config.json path together with --load-format dummy");
  }
  if (!o.dummy) {
    return InvalidArgument("--config has no weights: add --load-format dummy");
  }
  std::filesystem::path path(o.config);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return engine::LoadModelConfig(path);
  if (std::filesystem::is_regular_file(path, ec)) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    Result<engine::ModelConfig> parsed = engine::ParseModelConfig(text.str());
    if (!parsed.ok()) return parsed.status().WithContext(path.string());
    return parsed;
  }
  return engine::BuiltinConfig(o.config);
}

Result<EngineBenchReport> RunEngineBench(const EngineBenchOptions& o, std::ostream* log) {
  if (o.tp < 1) return InvalidArgument("--tp must be >= 1");
  if (o.input_len < 1 || o.output_len < 1) {
    return InvalidArgument("--input-len and --output-len must be >= 1");
  }
  if (o.batch_sizes.empty()) return InvalidArgument("--batch-sizes is empty");
  for (int b : o.batch_sizes) {
    if (b < 1) return InvalidArgument("--batch-sizes: every size must be >= 1");
  }
  if (o.backend != "cpu" && o.backend != "cuda") {
    return InvalidArgument("--backend must be cpu or cuda, got '" + o.backend + "'");
  }
  if (o.kv_cache_dtype != "bf16" && o.kv_cache_dtype != "fp8") {
    return InvalidArgument("--kv-cache-dtype must be bf16 or fp8, got '" + o.kv_cache_dtype + "'");
  }
  if (o.kv_cache_dtype == "fp8" && o.backend != "cuda") {
    return Unimplemented(
        "--kv-cache-dtype fp8 is not supported on the CPU backend yet (its cache is fp32); use "
        "--backend cuda");
  }
  if (o.one_shot_all_reduce_bytes != 0 && (o.backend != "cuda" || o.tp < 2)) {
    return InvalidArgument(
        "--one-shot-all-reduce-bytes chooses the NCCL all-reduce of a CUDA group; use it with "
        "--backend cuda and --tp 2 or more");
  }
  // Options of the CUDA backend only: set with another backend, each names itself and the fix.
  struct CudaOnly {
    bool set;
    const char* what;
  };
  for (const CudaOnly& c : {
           CudaOnly{o.moe_tune, "--moe-tune tunes the CUDA MoE kernels"},
           CudaOnly{o.attention_tensor_cores,
                    "--attention-tensor-cores selects a CUDA attention kernel"},
           CudaOnly{o.programmatic_launch, "--programmatic-launch is a CUDA launch mode"},
           CudaOnly{o.moe_grouped_max_tokens >= 0,
                    "--moe-grouped-max-tokens selects a CUDA MoE kernel"},
           CudaOnly{o.smem_cap_bytes > 0, "--smem-cap-bytes caps a GPU's shared memory per block"},
           CudaOnly{o.l2_prefetch_percent >= 0, "--l2-prefetch-percent prefetches into a GPU's L2"},
           CudaOnly{o.gemv_row_sweep, "--gemv-row-sweep selects the CUDA GEMV kernels"},
           CudaOnly{o.gemv_tensor_cores, "--gemv-tensor-cores selects the CUDA GEMV kernels"},
           CudaOnly{o.gemv_fp8_auto, "--gemv-fp8-auto times the CUDA GEMV kernels"},
           CudaOnly{o.moe_gemv_max_tokens >= 0, "--moe-gemv-max-tokens selects a CUDA MoE kernel"},
           CudaOnly{o.fuse_shared_experts,
                    "--fuse-shared-experts selects the CUDA MoE kernels' layout"},
       }) {
    if (c.set && o.backend != "cuda") {
      return InvalidArgument(std::string(c.what) + "; use it with --backend cuda");
    }
  }
#if !defined(SPARK_HAVE_CUDA)
  if (o.backend == "cuda") {
    return Unimplemented(
        "--backend cuda: this spark-bench was built without CUDA; build with the cuda preset "
        "(cmake --preset cuda)");
  }
#endif
  SPARK_ASSIGN_OR_RETURN(engine::ModelConfig config, ResolveBenchConfig(o));
  if (o.layers > 0 && o.layers < config.num_hidden_layers) config.num_hidden_layers = o.layers;
  SPARK_RETURN_IF_ERROR(engine::ValidateTensorParallel(config, o.tp));

  EngineBenchReport report;
  report.model = o.model_dir.empty() ? o.config : o.model_dir.string();
  report.layers = config.num_hidden_layers;
  report.quant = QuantName(config);

  const int max_batch = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  const int64_t tokens_needed = int64_t{max_batch} * (o.input_len + o.output_len + 32) + 64;
  const int cpu_threads =
      o.threads > 0 ? o.threads
                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / o.tp);

  engine::LocalKeyValueStore store;
  const std::string prefix = UniquePrefix();
  RankFactory factory;
  if (o.backend == "cpu") {
    const int64_t kv_bytes = tokens_needed * KvBytesPerToken(config, o.tp, 4) + (16 << 20);
    factory = [&, kv_bytes](int rank, int tp, RankParts* parts) -> Status {
      if (tp > 1) {
        engine::GlooOptions gloo;
        gloo.prefix = prefix;
        gloo.op_timeout_ms = 600000;
        SPARK_ASSIGN_OR_RETURN(parts->comm,
                               engine::GlooCommunicator::Create(rank, tp, &store, gloo));
      }
      engine::LoadOptions load;
      load.tp_rank = rank;
      load.tp_size = tp;
      load.dummy = o.dummy;
      load.seed = o.seed;
      load.max_layers = config.num_hidden_layers;
      Result<engine::ModelWeights> weights = o.model_dir.empty()
                                                 ? engine::MakeDummyWeights(config, load)
                                                 : engine::LoadModelWeights(o.model_dir, load);
      if (!weights.ok()) return weights.status();
      engine::CpuBackendOptions cpu;
      cpu.threads = cpu_threads;
      cpu.kv_cache_bytes = kv_bytes;
      SPARK_ASSIGN_OR_RETURN(parts->backend, engine::CpuBackend::Create(std::move(weights).value(),
                                                                        parts->comm.get(), cpu));
      return Status::Ok();
    };
    report.device = "CPU (" + std::to_string(cpu_threads) + " threads per rank)";
  } else {
#if defined(SPARK_HAVE_CUDA)
    CudaRankSpec spec;
    spec.config = config;
    spec.model_dir = o.model_dir;
    spec.dummy = o.dummy || o.model_dir.empty();
    spec.seed = o.seed;
    spec.max_layers = config.num_hidden_layers;
    spec.kv_cache_fp8 = o.kv_cache_dtype == "fp8";
    spec.kv_cache_bytes =
        tokens_needed * KvBytesPerToken(config, o.tp, spec.kv_cache_fp8 ? 1 : 2) + (64 << 20);
    spec.max_batch_tokens = o.max_batch_tokens;
    spec.prefix = prefix;
    spec.cuda_graphs = o.cuda_graphs;
    spec.sample_rows = max_batch;
    spec.attention_tensor_cores = o.attention_tensor_cores;
    spec.fuse_shared_experts = o.fuse_shared_experts;
    spec.programmatic_launch = o.programmatic_launch;
    spec.moe_gemv_max_tokens = o.moe_gemv_max_tokens;
    spec.gemv_tensor_cores = o.gemv_tensor_cores;
    spec.gemv_row_sweep = o.gemv_row_sweep;
    spec.gemv_fp8_auto = o.gemv_fp8_auto;
    spec.dense_gemv = &report.dense_gemv;
    spec.moe_grouped_max_tokens = o.moe_grouped_max_tokens;
    spec.l2_prefetch_percent = o.l2_prefetch_percent;
    spec.smem_cap_bytes = o.smem_cap_bytes;
    spec.moe_tune = o.moe_tune;
    spec.moe_tune_seconds = &report.moe_tune_s;
    spec.one_shot_all_reduce_bytes = o.one_shot_all_reduce_bytes;
    spec.all_reduce = &report.all_reduce;
    spec.one_shot_max_bytes = &report.one_shot_max_bytes;
    factory = [spec, &store](int rank, int tp, RankParts* parts) {
      return MakeCudaRank(spec, rank, tp, &store, parts);
    };
    SPARK_ASSIGN_OR_RETURN(report.device, CudaDeviceName());
    if (o.tp > 1) report.device += " x" + std::to_string(o.tp);
    report.device += o.cuda_graphs ? ", CUDA graphs" : ", eager";
    report.device += ", GPU sampling";
    if (spec.kv_cache_fp8) report.device += ", FP8 KV cache";
    if (spec.attention_tensor_cores) report.device += ", tensor-core attention";
    if (spec.fuse_shared_experts) report.device += ", shared expert in the MoE kernels";
    if (spec.programmatic_launch) report.device += ", programmatic launch";
    if (spec.gemv_tensor_cores) report.device += ", one-token FP8 GEMVs on tensor cores";
    if (spec.gemv_row_sweep) report.device += ", one-token FP8 GEMVs as row sweeps";
    if (spec.gemv_fp8_auto) report.device += ", dense one-token FP8 GEMVs tuned at load";
    if (spec.smem_cap_bytes > 0) {
      report.device +=
          ", shared memory capped at " + std::to_string(spec.smem_cap_bytes) + " bytes per block";
    }
    if (spec.l2_prefetch_percent > 0) {
      report.device +=
          ", weight prefetch into L2 (" + std::to_string(spec.l2_prefetch_percent) + "% each)";
    }
    if (spec.moe_grouped_max_tokens > 0) {
      report.device +=
          ", expert-grouped MoE up to " + std::to_string(spec.moe_grouped_max_tokens) + " tokens";
    }
    if (spec.moe_gemv_max_tokens >= 0) {
      report.device += ", MoE GEMV up to " + std::to_string(spec.moe_gemv_max_tokens) + " tokens";
    }
#endif
  }

  if (o.peak_bandwidth_gbs > 0) {
    report.peak_bandwidth_gbs = o.peak_bandwidth_gbs;
    report.peak_source = "--peak-bandwidth-gbs";
  } else if (o.backend == "cpu") {
    report.peak_bandwidth_gbs = MeasureCpuReadGbs(cpu_threads * o.tp);
    report.peak_source = "measured read rate";
  } else {
#if defined(SPARK_HAVE_CUDA)
    report.peak_bandwidth_gbs = CudaPeakBandwidthGbs();
    report.peak_source = "device attributes";
#endif
    if (report.peak_bandwidth_gbs <= 0) {
      return InvalidArgument(
          "the device does not report its memory bandwidth; pass --peak-bandwidth-gbs");
    }
  }
  if (o.peak_tflops > 0) {
    report.peak_tflops = o.peak_tflops;
    report.tflops_source = "--peak-tflops";
  } else if (o.backend == "cuda") {
#if defined(SPARK_HAVE_CUDA)
    // FP8 weights run FP8 GEMMs (W8A8); BF16 weights BF16 ones.
    report.peak_tflops = CudaPeakTflops(config.quant.method != engine::QuantMethod::kNone);
    report.tflops_source = "device attributes";
#endif
  }

  if (log)
    *log << "loading " << report.model << " (" << report.layers << " layers, " << report.quant
         << ") on " << report.device << " tp=" << o.tp << "\n";
  const auto load_start = Clock::now();
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<ThreadTpGroup> group,
                         ThreadTpGroup::Create(o.tp, factory));
  report.load_s = MsSince(load_start) / 1000.0;
  engine::Backend* backend = group->backend();
  engine::BatchSampler* sampler = group->sampler();
  const int64_t vocab = config.vocab_size;
  engine::SamplingParams greedy;
  greedy.temperature = 0.0f;

  // Warm-up: kernels, cuBLASLt heuristics, thread pools.
  SPARK_RETURN_IF_ERROR(Prefill(backend, 1, std::min(o.input_len, 16), o.max_batch_tokens, vocab));
  backend->Release(1);

  for (int batch : o.batch_sizes) {
    BatchResult r;
    r.batch = batch;
    const auto prefill_start = Clock::now();
    SPARK_RETURN_IF_ERROR(Prefill(backend, batch, o.input_len, o.max_batch_tokens, vocab));
    r.prefill_ms = MsSince(prefill_start);
    r.ttft_ms = r.prefill_ms;
    r.prefill_tokens_per_s = batch * o.input_len / (r.prefill_ms / 1000.0);
    std::vector<double> steps;
    double issue_sum_ms = 0;
    // Step -1 is the untimed first decode step (it captures this bucket's CUDA graph).
    for (int step = -1; step < o.output_len; ++step) {
      engine::ForwardBatch fb;
      for (int s = 0; s < batch; ++s) {
        engine::SequenceChunk chunk;
        chunk.seq_id = static_cast<uint64_t>(s + 1);
        chunk.start_pos = o.input_len + 1 + step;
        chunk.tokens = {static_cast<int32_t>((int64_t{s} * 131 + (step + 1) * 7 + 1) % vocab)};
        fb.chunks.push_back(std::move(chunk));
      }
      // A step as serving runs it: the forward pass, then (with a sampler) greedy sampling of
      // every row, from the device logits where the sampler takes them.
      fb.logits_on_device = sampler != nullptr && sampler->SamplesDeviceRows();
      const auto t0 = Clock::now();
      SPARK_ASSIGN_OR_RETURN(engine::ForwardOutput out, backend->Forward(fb));
      if (step >= 0) issue_sum_ms += MsSince(t0);
      if (sampler != nullptr) {
        std::vector<engine::BatchSampleRow> rows(static_cast<size_t>(batch));
        for (int s = 0; s < batch; ++s) {
          rows[static_cast<size_t>(s)].logits = out.ChunkLogits(static_cast<size_t>(s));
          rows[static_cast<size_t>(s)].on_device = out.device_logits != nullptr;
          rows[static_cast<size_t>(s)].params = &greedy;
        }
        SPARK_RETURN_IF_ERROR(sampler->SampleBatch(vocab, rows).status());
      }
      if (step < 0) {
        r.first_step_ms = MsSince(t0);
      } else {
        steps.push_back(MsSince(t0));
      }
    }
    for (int s = 0; s < batch; ++s) backend->Release(static_cast<uint64_t>(s + 1));
    double sum = 0;
    for (double v : steps) sum += v;
    r.itl_ms = sum / static_cast<double>(steps.size());
    std::vector<double> sorted = steps;
    std::sort(sorted.begin(), sorted.end());
    r.itl_p50_ms = sorted[sorted.size() / 2];
    r.issue_ms = issue_sum_ms / static_cast<double>(steps.size());
    r.decode_tokens_per_s = batch / (r.itl_ms / 1000.0);
    const double context =
        o.input_len + (o.output_len - 1) / 2.0 + 2;  // keys of a timed step, mean
    r.bytes = DecodeStepBytes(config, o.tp, batch, context,
                              o.backend == "cuda" && o.kv_cache_dtype == "fp8" ? 1 : 2);
    r.roofline_ms = r.bytes.total() / (report.peak_bandwidth_gbs * 1e9) * 1000.0;
    r.achieved_gbs = r.bytes.total() / (r.itl_ms / 1000.0) / 1e9;
    r.bandwidth_ratio = r.achieved_gbs / report.peak_bandwidth_gbs;
    r.step_flops = DecodeStepFlops(config, o.tp, batch, context);
    r.achieved_tflops = r.step_flops / (r.itl_ms / 1000.0) / 1e12;
    if (report.peak_tflops > 0) {
      r.compute_roofline_ms = r.step_flops / (report.peak_tflops * 1e12) * 1000.0;
      r.compute_ratio = r.achieved_tflops / report.peak_tflops;
    }
    if (log) *log << "batch " << batch << " done\n";
    report.batches.push_back(r);
  }
  SPARK_RETURN_IF_ERROR(group->Shutdown());
  return report;
}

void PrintEngineBenchReport(const EngineBenchReport& r, bool json, std::ostream& out) {
  char line[1024];
  if (json) {
    for (const BatchResult& b : r.batches) {
      std::snprintf(line, sizeof(line),
                    "{\"model\":\"%s\",\"device\":\"%s\",\"layers\":%d,\"quant\":\"%s\","
                    "\"batch\":%d,\"prefill_tokens_per_s\":%.1f,\"ttft_ms\":%.3f,"
                    "\"decode_tokens_per_s\":%.1f,\"itl_ms\":%.3f,\"itl_p50_ms\":%.3f,"
                    "\"step_bytes\":%.0f,\"roofline_ms\":%.4f,\"achieved_gbs\":%.1f,"
                    "\"peak_gbs\":%.1f,\"bandwidth_ratio\":%.4f,\"step_flops\":%.0f,"
                    "\"achieved_tflops\":%.3f,\"peak_tflops\":%.1f,"
                    "\"compute_roofline_ms\":%.4f,\"compute_ratio\":%.4f,\"issue_ms\":%.3f,\"moe_"
                    "tune_s\":%.1f,\"first_step_ms\":%.3f}\n",
                    r.model.c_str(), r.device.c_str(), r.layers, r.quant.c_str(), b.batch,
                    b.prefill_tokens_per_s, b.ttft_ms, b.decode_tokens_per_s, b.itl_ms,
                    b.itl_p50_ms, b.bytes.total(), b.roofline_ms, b.achieved_gbs,
                    r.peak_bandwidth_gbs, b.bandwidth_ratio, b.step_flops, b.achieved_tflops,
                    r.peak_tflops, b.compute_roofline_ms, b.compute_ratio, b.issue_ms, r.moe_tune_s,
                    b.first_step_ms);
      out << line;
    }
    return;
  }
  std::snprintf(line, sizeof(line),
                "model %s: %d layers, %s; device %s; peak %.0f GB/s (%s); load %.1f s\n",
                r.model.c_str(), r.layers, r.quant.c_str(), r.device.c_str(), r.peak_bandwidth_gbs,
                r.peak_source.c_str(), r.load_s);
  out << line;
  if (r.moe_tune_s >= 0) {
    std::snprintf(line, sizeof(line), "MoE tile configs tuned in %.1f s (within the load)\n",
                  r.moe_tune_s);
    out << line;
  }
  for (const AllReduceRow& a : r.all_reduce) {
    std::snprintf(line, sizeof(line),
                  "all-reduce of %lld bytes: NCCL %.2f us, one-shot %.2f us (slowest rank)\n",
                  static_cast<long long>(a.bytes), a.nccl_us, a.one_shot_us);
    out << line;
  }
  for (const std::string& d : r.dense_gemv) out << "dense GEMV " << d << "\n";
  if (r.one_shot_max_bytes > 0) {
    std::snprintf(line, sizeof(line), "one-shot all-reduce up to %lld bytes\n",
                  static_cast<long long>(r.one_shot_max_bytes));
    out << line;
  }
  if (r.peak_tflops > 0) {
    std::snprintf(line, sizeof(line), "compute peak %.0f TFLOP/s (%s)\n", r.peak_tflops,
                  r.tflops_source.c_str());
    out << line;
  }
  out << "batch  prefill tok/s   TTFT ms  decode tok/s    ITL ms   p50 ms  step MB  experts"
         "  roofline ms  achieved GB/s  of peak  TFLOP/s  compute ms  of compute  issue ms"
         "  first ms\n";
  for (const BatchResult& b : r.batches) {
    char compute[64] = "        -           -";
    if (r.peak_tflops > 0) {
      std::snprintf(compute, sizeof(compute), "%10.3f  %9.1f%%", b.compute_roofline_ms,
                    100.0 * b.compute_ratio);
    }
    std::snprintf(line, sizeof(line),
                  "%5d  %13.1f  %8.2f  %12.1f  %8.3f  %7.3f  %7.1f  %7.1f  %11.3f  %13.1f  "
                  "%6.1f%%  %7.2f  %s  %8.3f  %8.2f\n",
                  b.batch, b.prefill_tokens_per_s, b.ttft_ms, b.decode_tokens_per_s, b.itl_ms,
                  b.itl_p50_ms, b.bytes.total() / 1e6, b.bytes.expected_experts, b.roofline_ms,
                  b.achieved_gbs, 100.0 * b.bandwidth_ratio, b.achieved_tflops, compute, b.issue_ms,
                  b.first_step_ms);
    out << line;
  }
}

}  // namespace spark::bench
