// bench_moe: the fused MoE kernel alone (engine/cuda/moe.h) at GLM-4.7 tp=4 and GLM-4.5-Air
// expert shapes, per batch size, with and without GB10's 101,376-byte shared-memory cap.
//
// Prints, per (shape, format, cap, batch): time of the whole routed-expert forward, time of the
// two expert GEMMs (with their FP8 activation quantisation; then gate/up and down apart), the
// expert bytes actually read (distinct routed experts x their weight and scale bytes), and the
// ratio of the roofline time (bytes / peak copy bandwidth measured in the same run) to the GEMM
// time. With --tune it also runs the autotuner (engine/cuda/moe_tuner.h) over the batches and
// reports, through the serving path with the tuned table, the GEMM time of the tuned configs and
// the tuning time; --tune-log also prints every candidate the tuner timed. graph_us is the whole
// forward (router included) replayed from a CUDA graph with programmatic launch, as a decode step
// runs it (no events between the kernels). Random weights are generated on the GPU; the L2 cache is
// flushed before every timed run.
//
//   bench_moe [--shapes glm47-tp4,glm45-air] [--formats fp8-per-channel,bf16,fp8-block128]
//             [--batches 1,8,64,256,1024] [--iters 20] [--tune] [--tune-log] [--caps 0,101376]
//             [--gemv-max-tokens N]   (batches up to N on the GEMV path; default: the table's)
//             [--grouped-max-tokens N]  (batches above the GEMV path's and up to N on the
//                                        expert-grouped tensor-core kernels; default 0: off)
//             [--gemv-k-splits 0,1,2,4,8] [--gemv-down-outputs 0,4,8,16]
//             [--gemv-down-vectors 0,1,2,3,4] [--gemv-fp8-dequant 0,1,2,3]
//             [--gemv-gate-up-sweep 0,1]
//                 (the GEMV kernels' work split, every combination in turn; 0 = the default)
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/moe.h"
#include "engine/cuda/moe_tuner.h"
#include "engine/cuda/programmatic_launch.h"

namespace spark::cuda {
namespace {

struct BenchShape {
  std::string name;
  int experts, hidden, inter, top_k;
  float scaling;
};

__global__ void FillBf16(__nv_bfloat16* p, int64_t n, float amp, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint64_t z = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    const auto h = static_cast<uint32_t>(z ^ (z >> 31));
    p[i] = __float2bfloat16((static_cast<float>(h >> 8) * (1.0f / 8388608.0f) - 1.0f) * amp);
  }
}

template <class F>
void Check(F err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "bench_moe: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

// Peak device copy bandwidth (read + write bytes per second) over a 2 GiB copy.
double MeasureCopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  Check(cudaMalloc(&a, bytes), "copy buffer");
  Check(cudaMalloc(&b, bytes), "copy buffer");
  Check(cudaMemset(a, 1, bytes), "memset");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best = 1e30f;
  for (int i = 0; i < 6; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i > 0) best = std::min(best, ms);
  }
  cudaFree(a);
  cudaFree(b);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * static_cast<double>(bytes) / (best * 1e-3);
}

struct Timing {
  double total_us = 0, gemm_us = 0, gate_up_us = 0, down_us = 0;
};

struct Runner {
  const MoeRandomLayer& layer;
  MoeWorkspace& ws;
  __nv_bfloat16* x;  // [inputs, max_tokens, H]
  float* out;
  void* flush;  // L2 flush buffer
  size_t flush_bytes;
  int inputs;
  int64_t max_tokens;

  // Mean over `iters` runs, each after an L2 flush, input rotating over `inputs` sets.
  Timing Time(int64_t tokens, const MoeConfigTable& table, const MoeTileConfig* gu,
              const MoeTileConfig* dn, int iters) {
    Timing t;
    for (int i = 0; i < iters + 1; ++i) {
      Check(cudaMemsetAsync(flush, i, flush_bytes), "flush");
      const __nv_bfloat16* xi = x + (i % inputs) * max_tokens * layer.view().shape.hidden;
      cudaError_t err =
          gu != nullptr
              ? MoeForwardWithConfigs(layer.view(), xi, tokens, out, ws, table, *gu, *dn, nullptr)
              : MoeForward(layer.view(), xi, tokens, out, nullptr, ws, table, nullptr);
      Check(err, "MoeForward");
      auto pt = ws.PhaseTimes();
      if (!pt.ok()) {
        std::fprintf(stderr, "%s\n", pt.status().ToString().c_str());
        std::exit(1);
      }
      if (i == 0) continue;  // warm-up
      t.total_us += 1e3 * (pt->route_ms + pt->gate_up_ms + pt->down_ms + pt->combine_ms);
      t.gemm_us += 1e3 * (pt->gate_up_ms + pt->down_ms);
      t.gate_up_us += 1e3 * pt->gate_up_ms;
      t.down_us += 1e3 * pt->down_ms;
    }
    t.total_us /= iters;
    t.gemm_us /= iters;
    t.gate_up_us /= iters;
    t.down_us /= iters;
    return t;
  }

  // Mean time of the whole forward (router and both GEMMs) as a decode step runs it: captured in
  // a CUDA graph with programmatic launch, no events between the kernels, each replay after an
  // L2 flush.
  double GraphUs(int64_t tokens, const MoeConfigTable& table, int iters) {
    (void)ws.SetPhaseTiming(false);
    cudaStream_t stream;
    Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    {
      ProgrammaticLaunchScope pdl(true);
      Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
      Check(MoeForward(layer.view(), x, tokens, out, nullptr, ws, table, stream), "MoeForward");
      Check(cudaStreamEndCapture(stream, &graph), "end capture");
    }
    Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    double sum_us = 0;
    for (int i = 0; i < iters + 1; ++i) {
      Check(cudaMemsetAsync(flush, i, flush_bytes, stream), "flush");
      cudaEventRecord(a, stream);
      Check(cudaGraphLaunch(exec, stream), "graph launch");
      cudaEventRecord(b, stream);
      Check(cudaEventSynchronize(b), "graph run");
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (i > 0) sum_us += 1e3 * ms;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
    (void)ws.SetPhaseTiming(true);
    return sum_us / iters;
  }
};

int64_t DistinctExperts(const MoeWorkspace& ws, int64_t tokens, int top_k) {
  std::vector<int32_t> ids(tokens * top_k);
  Check(cudaMemcpy(ids.data(), ws.topk_ids(), ids.size() * 4, cudaMemcpyDeviceToHost), "ids");
  return static_cast<int64_t>(std::set<int32_t>(ids.begin(), ids.end()).size());
}

int Main(int argc, char** argv) {
  std::vector<std::string> shapes = {"glm47-tp4", "glm45-air"};
  std::vector<std::string> formats = {"fp8-per-channel"};
  std::vector<int64_t> batches = {1, 8, 64, 256, 1024};
  std::vector<int64_t> caps = {0, 101376};
  int iters = 20;
  bool tune = false;
  bool tune_log = false;
  int gemv_max_tokens = -1;  // the table's default
  int grouped_max_tokens = 0;
  std::vector<int> gemv_k_splits = {0}, gemv_down_outputs = {0}, gemv_down_vectors = {0},
                   gemv_fp8_dequant = {0}, gemv_gate_up_sweep = {0};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_moe: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shapes") {
      shapes = Split(next());
    } else if (a == "--formats") {
      formats = Split(next());
    } else if (a == "--batches") {
      batches.clear();
      for (const auto& b : Split(next())) batches.push_back(std::atoll(b.c_str()));
    } else if (a == "--caps") {
      caps.clear();
      for (const auto& c : Split(next())) caps.push_back(std::atoll(c.c_str()));
    } else if (a == "--iters") {
      iters = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--tune") {
      tune = true;
    } else if (a == "--tune-log") {
      tune = true;
      tune_log = true;
    } else if (a == "--gemv-max-tokens") {
      gemv_max_tokens = std::max(0, std::atoi(next().c_str()));
    } else if (a == "--grouped-max-tokens") {
      grouped_max_tokens = std::max(0, std::atoi(next().c_str()));
    } else if (a == "--gemv-k-splits" || a == "--gemv-down-outputs" || a == "--gemv-down-vectors" ||
               a == "--gemv-fp8-dequant" || a == "--gemv-gate-up-sweep") {
      auto& list = a == "--gemv-k-splits"       ? gemv_k_splits
                   : a == "--gemv-down-outputs" ? gemv_down_outputs
                   : a == "--gemv-down-vectors" ? gemv_down_vectors
                   : a == "--gemv-fp8-dequant"  ? gemv_fp8_dequant
                                                : gemv_gate_up_sweep;
      list.clear();
      for (const auto& v : Split(next())) list.push_back(std::atoi(v.c_str()));
    } else {
      std::fprintf(
          stderr,
          "usage: bench_moe [--shapes glm47-tp4,glm45-air] [--formats "
          "fp8-per-channel,bf16,fp8-block128] [--batches 1,8,...] [--caps 0,101376] "
          "[--iters N] [--tune] [--tune-log] [--gemv-max-tokens N] [--grouped-max-tokens N] "
          "[--gemv-k-splits 0,1,2,4,8] "
          "[--gemv-down-outputs 0,4,8,16] [--gemv-down-vectors 0,1,2,3,4] "
          "[--gemv-fp8-dequant 0,1,2,3] [--gemv-gate-up-sweep 0,1]\n");
      return 2;
    }
  }
  auto dev = QueryDevice(0);
  if (!dev.ok()) {
    std::fprintf(stderr, "bench_moe: %s\n", dev.status().ToString().c_str());
    return 1;
  }
  const double copy_bw = MeasureCopyBandwidth();
  std::printf(
      "device: %s (sm_%d%d, %d SMs, %lld B opt-in smem/block); measured copy bandwidth "
      "%.0f GB/s\n",
      dev->name.c_str(), dev->cc_major, dev->cc_minor, dev->multiprocessors,
      static_cast<long long>(dev->smem_optin_per_block_bytes), copy_bw / 1e9);
  const int64_t max_tokens = *std::max_element(batches.begin(), batches.end());
  const size_t flush_bytes = size_t{256} << 20;
  void* flush = nullptr;
  Check(cudaMalloc(&flush, flush_bytes), "flush buffer");
  for (const std::string& shape_name : shapes) {
    BenchShape s;
    if (shape_name == "glm47-tp4") {
      s = {"GLM-4.7 tp=4 (E=160, H=5120, Im=384, top-8)", 160, 5120, 384, 8, 2.5f};
    } else if (shape_name == "glm45-air") {
      s = {"GLM-4.5-Air tp=1 (E=128, H=4096, Im=1408, top-8)", 128, 4096, 1408, 8, 1.0f};
    } else {
      std::fprintf(stderr, "bench_moe: unknown shape %s (glm47-tp4, glm45-air)\n",
                   shape_name.c_str());
      return 2;
    }
    for (const std::string& fname : formats) {
      MoeWeightFormat format;
      if (fname == "bf16") {
        format = MoeWeightFormat::kBf16;
      } else if (fname == "fp8-per-channel") {
        format = MoeWeightFormat::kFp8PerChannel;
      } else if (fname == "fp8-block128") {
        format = MoeWeightFormat::kFp8Block;
      } else {
        std::fprintf(stderr, "bench_moe: unknown format %s\n", fname.c_str());
        return 2;
      }
      MoeShape shape;
      shape.num_experts = s.experts;
      shape.hidden = s.hidden;
      shape.inter = s.inter;
      shape.top_k = s.top_k;
      shape.routed_scaling_factor = s.scaling;
      auto made = MoeRandomLayer::Create(shape, format);
      if (!made.ok()) {
        std::fprintf(stderr, "bench_moe: %s\n", made.status().ToString().c_str());
        return 1;
      }
      const MoeRandomLayer layer = std::move(made).value();
      auto ws = MoeWorkspace::Create(shape, format, max_tokens);
      if (!ws.ok()) {
        std::fprintf(stderr, "bench_moe: %s\n", ws.status().ToString().c_str());
        return 1;
      }
      (void)ws->SetPhaseTiming(true);
      const int inputs = 4;
      __nv_bfloat16* x = nullptr;
      float* out = nullptr;
      Check(cudaMalloc(&x, inputs * max_tokens * s.hidden * 2), "x");
      Check(cudaMalloc(&out, max_tokens * s.hidden * 4), "out");
      FillBf16<<<4096, 256>>>(x, inputs * max_tokens * s.hidden, 2.0f, 7);
      Check(cudaDeviceSynchronize(), "x init");
      Runner runner{layer, *ws, x, out, flush, flush_bytes, inputs, max_tokens};
      std::vector<double> roof_us(batches.size(), 0.0), mb_read(batches.size(), 0.0);
      std::printf("\n%s, %s weights\n", s.name.c_str(), fname.c_str());
      std::printf("%-7s %-6s %10s %10s %9s %9s %9s %8s %9s  %s\n", "smem", "batch", "total_us",
                  "gemms_us", "gate_up", "down", "MB_read", "roofl%", "graph_us",
                  "configs (gate_up | down)");
      for (int64_t cap : caps) {
        auto table = MoeConfigTable::Create(*dev, cap);
        if (!table.ok()) {
          std::fprintf(stderr, "bench_moe: %s\n", table.status().ToString().c_str());
          return 1;
        }
        if (gemv_max_tokens >= 0) table->SetGemvMaxTokens(gemv_max_tokens);
        table->SetGroupedMaxTokens(grouped_max_tokens);
        const std::string cap_name = cap > 0 ? std::to_string(cap) : "device";
        std::vector<MoeGemvTiling> tilings;
        for (const int k : gemv_k_splits) {
          for (const int d : gemv_down_outputs) {
            for (const int v : gemv_down_vectors) {
              for (const int q : gemv_fp8_dequant) {
                for (const int sw : gemv_gate_up_sweep) {
                  tilings.push_back(MoeGemvTiling{k, d, v, q, sw});
                }
              }
            }
          }
        }
        for (const MoeGemvTiling& tiling : tilings) {
          const Status set = table->SetGemvTiling(tiling);
          if (!set.ok()) {
            std::fprintf(stderr, "bench_moe: %s\n", set.ToString().c_str());
            return 2;
          }
          for (size_t bi = 0; bi < batches.size(); ++bi) {
            const int64_t b = batches[bi];
            const Timing t = runner.Time(b, *table, nullptr, nullptr, iters);
            const MoePlan plan = ws->last_plan();
            const int64_t experts = DistinctExperts(*ws, b, s.top_k);
            const double bytes = static_cast<double>(experts * layer.expert_bytes());
            roof_us[bi] = bytes / copy_bw * 1e6;
            mb_read[bi] = bytes / 1e6;
            const MoeGemvTiling& used = plan.gemv_tiling;
            const std::string configs =
                plan.grouped ? "grouped w" + std::to_string(used.gate_up_k_splits)
                : plan.gemv  ? "GEMV k" + std::to_string(used.gate_up_k_splits) +
                                  (used.gate_up_sweep == 1 ? " sweep" : "") + " | GEMV d" +
                                  std::to_string(used.down_outputs) + " v" +
                                  std::to_string(used.down_vectors) +
                                  (used.fp8_dequant == kMoeGemvScaledBits
                                       ? " scaled-bits"
                                       : (used.fp8_dequant == kMoeGemvHalfMma ? " half-mma" : ""))
                            : plan.gate_up.ToString() + " | " + plan.down.ToString();
            const double graph_us = runner.GraphUs(b, *table, iters);
            std::printf("%-7s %-6lld %10.1f %10.1f %9.1f %9.1f %9.1f %7.1f%% %9.1f  %s\n",
                        cap_name.c_str(), static_cast<long long>(b), t.total_us, t.gemm_us,
                        t.gate_up_us, t.down_us, mb_read[bi], 100.0 * roof_us[bi] / t.gemm_us,
                        graph_us, configs.c_str());
          }
        }
        (void)table->SetGemvTiling(MoeGemvTiling{});
        if (!tune) continue;
        // The autotuner (engine/cuda/moe_tuner.h) over the same buckets, then the serving path
        // with the tuned table.
        MoeTunerOptions options;
        options.batches = batches;
        if (tune_log) {
          options.candidate_log = [&](const std::string& line) {
            std::printf("%-7s   %s\n", cap_name.c_str(), line.c_str());
          };
        }
        auto tuned = TuneMoe(*dev, *table, shape, format, options);
        if (!tuned.ok()) {
          std::fprintf(stderr, "bench_moe: %s\n", tuned.status().ToString().c_str());
          return 1;
        }
        auto tuned_table = MoeConfigTable::Create(*dev, cap);
        auto choices = tuned_table.ok()
                           ? MoeTunedChoicesOf(tuned->records, MoeDeviceClassOf(*dev, *table),
                                               shape, format, *tuned_table)
                           : Result<std::vector<MoeTunedChoice>>(tuned_table.status());
        if (!choices.ok() || !ApplyMoeTunedChoices(*choices, *tuned_table).ok()) {
          std::fprintf(stderr, "bench_moe: cannot apply the tuned configs\n");
          return 1;
        }
        auto compared =
            CompareMoeTables(*table, *tuned_table, *choices, shape, format, batches, iters);
        if (!compared.ok()) {
          std::fprintf(stderr, "bench_moe: %s\n", compared.status().ToString().c_str());
          return 1;
        }
        for (size_t bi = 0; bi < compared->size(); ++bi) {
          const MoeTableComparison& c = (*compared)[bi];
          std::printf("%-7s %-6lld %10s %10.1f %9s %9s %9.1f %7.1f%%  tuned%s: %s | %s\n",
                      cap_name.c_str(), static_cast<long long>(c.batch), "-", c.tuned_gemm_us, "-",
                      "-", mb_read[bi], 100.0 * roof_us[bi] / c.tuned_gemm_us,
                      c.launched_expected ? "" : " (NOT LAUNCHED)",
                      c.gemv ? "GEMV" : c.tuned_gate_up.ToString().c_str(),
                      c.gemv ? "GEMV" : c.tuned_down.ToString().c_str());
        }
        std::printf("%-7s tuning took %.1f s (%lld timed forwards)\n", cap_name.c_str(),
                    tuned->seconds, static_cast<long long>(tuned->timed_forwards));
      }
      cudaFree(x);
      cudaFree(out);
    }
  }
  cudaFree(flush);
  return 0;
}

}  // namespace
}  // namespace spark::cuda

int main(int argc, char** argv) { return spark::cuda::Main(argc, argv); }
