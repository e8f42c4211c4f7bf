// spark-bench: benchmarks of the engine. Subcommands:
//   engine  - prefill / decode throughput of a backend and its memory-bandwidth roofline
//             (engine/bench/engine_throughput.h).
//   speculative - acceptance length and decode speed-up of speculative decoding (MTP draft)
//             against plain decoding (engine/bench/speculative_bench.h).
#include <CLI/CLI.hpp>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/bench/engine_throughput.h"
#include "engine/bench/self_draft_model.h"
#include "engine/bench/speculative_bench.h"

namespace {

std::vector<int> ParseSizes(const std::string& text, bool* ok) {
  std::vector<int> sizes;
  std::stringstream in(text);
  std::string item;
  *ok = true;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v < 1) *ok = false;
      sizes.push_back(v);
    } catch (...) {
      *ok = false;
    }
  }
  if (sizes.empty()) *ok = false;
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"spark-bench: engine benchmarks"};
  app.require_subcommand(1);

  spark::bench::EngineBenchOptions o;
  std::string model_dir;
  std::string load_format = "auto";
  std::string batch_sizes = "1";
  CLI::App* engine = app.add_subcommand(
      "engine", "prefill and decode throughput of one backend, next to the bandwidth roofline");
  engine->add_option("--model", model_dir, "checkpoint directory (config.json + safetensors)");
  engine->add_option("--config", o.config,
                     "built-in config (glm-4.7, glm-4.6, glm-4.5, glm-4.5-air) or a config.json "
                     "path; needs --load-format dummy");
  engine->add_option("--load-format", load_format, "auto (the checkpoint) or dummy")
      ->check(CLI::IsMember({"auto", "dummy"}));
  engine->add_option("--backend", o.backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  engine->add_option("--layers", o.layers, "benchmark the first N decoder layers only");
  engine->add_option("--tp", o.tp, "tensor-parallel ranks (threads; one GPU each with cuda)");
  engine->add_option("--batch-sizes", batch_sizes, "comma-separated batch sizes, e.g. 1,8,32");
  engine->add_option("--input-len", o.input_len, "prompt tokens per sequence");
  engine->add_option("--output-len", o.output_len, "decode steps per sequence");
  engine->add_option("--threads", o.threads, "CPU backend threads per rank (0 = cores / tp)");
  engine->add_option("--max-batch-tokens", o.max_batch_tokens, "tokens per prefill step");
  engine->add_option("--peak-bandwidth-gbs", o.peak_bandwidth_gbs,
                     "memory bandwidth peak for the roofline (default: the device's, or a "
                     "measured read rate on CPU)");
  engine->add_option("--peak-tflops", o.peak_tflops,
                     "dense compute peak for the compute roofline (default: the device's where "
                     "known, Hopper)");
  engine->add_option("--seed", o.seed, "dummy weights seed");
  engine->add_flag("--json", o.json, "one JSON object per batch size");
  CLI::Option* graphs_flag =
      engine->add_flag("--cuda-graphs,!--no-cuda-graphs", o.cuda_graphs,
                       "CUDA: replay decode steps from CUDA graphs (default: with --tp 1, as a "
                       "shard's cuda_graphs=auto)");
  engine->add_option("--kv-cache-dtype", o.kv_cache_dtype, "CUDA: KV cache element type")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  engine->add_flag("--moe-tune", o.moe_tune,
                   "CUDA: tune the MoE tile configs on the GPU before measuring, as a shard does "
                   "at its first load (the time is printed; default: the heuristic configs)");
  CLI::Option* tc_flag = engine->add_flag(
      "--attention-tensor-cores,!--no-attention-tensor-cores", o.attention_tensor_cores,
      "CUDA: attention on tensor cores where it applies (head_dim 128; default: on with "
      "--backend cuda, as a shard)");
  CLI::Option* fuse_flag = engine->add_flag(
      "--fuse-shared-experts,!--no-fuse-shared-experts", o.fuse_shared_experts,
      "CUDA: run a MoE layer's shared expert inside the fused MoE kernels as one more expert "
      "slot for batches up to 256 tokens (default: on with --backend cuda, as a shard)");
  engine
      ->add_option("--moe-gemv-max-tokens", o.moe_gemv_max_tokens,
                   "CUDA: MoE forwards of at most N tokens run the expert GEMMs as GEMVs over the "
                   "(token, expert) pairs, larger ones the grouped tile GEMMs (default: the "
                   "backend's, as a shard; 0 = never)")
      ->check(CLI::NonNegativeNumber);
  engine
      ->add_option("--moe-grouped-max-tokens", o.moe_grouped_max_tokens,
                   "CUDA: MoE forwards above the GEMV path's token count and up to N tokens run "
                   "the expert-grouped tensor-core kernels (each expert's FP8 weights read once "
                   "for up to 8 of its tokens, BF16 activations; default: the backend's, as a "
                   "shard; 0 = never)")
      ->check(CLI::NonNegativeNumber);
  engine
      ->add_option("--one-shot-all-reduce-bytes", o.one_shot_all_reduce_bytes,
                   "CUDA, --tp 2+: fp32 all-reduces up to N bytes run one-shot (all-gather + "
                   "rank-order sum); -1 times both at 4 KB..1 MB at start, prints the times and "
                   "keeps one-shot where it wins (default 0: NCCL's all-reduce only)")
      ->check(CLI::Range(int64_t{-1}, int64_t{16} << 20));
  engine
      ->add_option("--smem-cap-bytes", o.smem_cap_bytes,
                   "CUDA: cap the shared memory per block every kernel may use (101376 emulates "
                   "GB10 on an H100/H200; default 0: the device's limit)")
      ->check(CLI::NonNegativeNumber);
  engine
      ->add_option("--l2-prefetch-percent", o.l2_prefetch_percent,
                   "CUDA: steps of up to 64 tokens prefetch the next weights into L2 beside the "
                   "latency-bound kernels (norms, RoPE, attention, router), each prefetch up to "
                   "this percentage of the device's L2 (default: the backend's, as a shard; 0 = "
                   "off)")
      ->check(CLI::Range(0, 100));
  engine->add_flag("--gemv-row-sweep,!--no-gemv-row-sweep", o.gemv_row_sweep,
                   "CUDA: dense one-token FP8 GEMVs with whole rows per block swept by a "
                   "persistent grid (default: off, as a shard)");
  engine->add_flag("--gemv-fp8-auto,!--no-gemv-fp8-auto", o.gemv_fp8_auto,
                   "CUDA: time each dense FP8 weight shape's one-token GEMV variants at load and "
                   "keep the fastest (engine option gemv_fp8=auto; default: off, as a shard)");
  engine->add_flag("--gemv-tensor-cores,!--no-gemv-tensor-cores", o.gemv_tensor_cores,
                   "CUDA: one-token FP8 GEMVs (dense and MoE) on the tensor cores, E4M3 weights as "
                   "f16 mma fragments (default: off, as a shard)");
  CLI::Option* pdl_flag = engine->add_flag(
      "--programmatic-launch,!--no-programmatic-launch", o.programmatic_launch,
      "CUDA: launch kernels with programmatic dependent launch (sm_90+), each scheduled while "
      "its predecessor finishes (default: on with --backend cuda, as a shard)");

  spark::bench::SpeculativeBenchOptions so;
  std::string spec_model;
  CLI::App* spec = app.add_subcommand(
      "speculative", "acceptance length and decode speed-up of speculative decoding (MTP draft)");
  spec->add_option("--model", spec_model,
                   "checkpoint with an MTP layer (default: a tiny GLM whose MTP layer is derived "
                   "from the model, see engine/bench/self_draft_model.h)");
  spec->add_option("--layers", so.layers, "self-draft model: target decoder layers")
      ->capture_default_str();
  spec->add_option("--residual-scale", so.residual_scale,
                   "self-draft model: output scale of layers 1..L-1 (0 = the draft agrees)")
      ->capture_default_str();
  spec->add_option("--steps", so.speculative.steps, "draft steps")->capture_default_str();
  spec->add_option("--topk", so.speculative.topk, "draft branching (1 = chain)")
      ->capture_default_str();
  spec->add_option("--draft-tokens", so.speculative.draft_tokens,
                   "tree nodes verified per step (topk 1: steps + 1)");
  spec->add_option("--tp", so.tp, "tensor-parallel ranks (threads)")->capture_default_str();
  spec->add_option("--threads", so.threads, "CPU threads per rank (0 = cores / tp)");
  spec->add_option("--requests", so.requests, "concurrent requests")->capture_default_str();
  spec->add_option("--prompt-tokens", so.prompt_tokens, "random prompt tokens per request")
      ->capture_default_str();
  spec->add_option("--max-tokens", so.max_tokens, "tokens generated per request")
      ->capture_default_str();
  spec->add_option("--temperature", so.temperature, "0 = greedy (outputs compared)")
      ->capture_default_str();
  spec->add_option("--seed", so.seed, "model and prompt seed")->capture_default_str();
  spec->add_flag("--json", so.json, "one JSON object");
  std::string write_model;
  spec->add_option("--write-model", write_model,
                   "only write the self-draft model (--layers, --residual-scale, --seed) to DIR");

  CLI11_PARSE(app, argc, argv);

  if (spec->parsed() && !write_model.empty()) {
    spark::bench::SelfDraftModelOptions m;
    m.layers = so.layers;
    m.residual_scale = so.residual_scale;
    m.seed = so.seed;
    spark::Status written = spark::bench::WriteSelfDraftModel(write_model, m);
    if (!written.ok()) {
      std::cerr << "spark-bench speculative: " << written.message() << "\n";
      return 1;
    }
    std::cout << "wrote the self-draft model to " << write_model << "\n";
    return 0;
  }
  if (spec->parsed()) {
    so.model_dir = spec_model;
    spark::Result<spark::bench::SpeculativeBenchReport> report =
        spark::bench::RunSpeculativeBench(so, &std::cerr);
    if (!report.ok()) {
      std::cerr << "spark-bench speculative: " << report.status().message() << "\n";
      return report.status().code() == spark::StatusCode::kInvalidArgument ? 2 : 1;
    }
    spark::bench::PrintSpeculativeBenchReport(*report, so.json, std::cout);
    return 0;
  }

  if (engine->parsed()) {
    if (graphs_flag->count() == 0) o.cuda_graphs = o.tp == 1;
    // CudaBackendOptions' defaults, unless a flag says otherwise.
    if (fuse_flag->count() == 0) o.fuse_shared_experts = o.backend == "cuda";
    if (pdl_flag->count() == 0) o.programmatic_launch = o.backend == "cuda";
    if (tc_flag->count() == 0) o.attention_tensor_cores = o.backend == "cuda";
    o.model_dir = model_dir;
    o.dummy = load_format == "dummy";
    bool ok = false;
    o.batch_sizes = ParseSizes(batch_sizes, &ok);
    if (!ok) {
      std::cerr << "spark-bench engine: --batch-sizes must be positive integers separated by "
                   "commas, got '"
                << batch_sizes << "'\n";
      return 2;
    }
    spark::Result<spark::bench::EngineBenchReport> report =
        spark::bench::RunEngineBench(o, &std::cerr);
    if (!report.ok()) {
      std::cerr << "spark-bench engine: " << report.status().message() << "\n";
      return 1;
    }
    spark::bench::PrintEngineBenchReport(*report, o.json, std::cout);
    return 0;
  }
  return 2;
}
