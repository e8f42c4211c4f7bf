// bench_moe: the fused MoE kernel alone (engine/cuda/moe.h) at GLM-4.7 tp=4 and GLM-4.5-Air
// expert shapes, per batch size, with and without GB10's 101,376-byte shared-memory cap.
//
// Prints, per (shape, format, cap, batch): time of the whole routed-expert forward, time of the
// two expert GEMMs (with their FP8 activation quantisation), the expert bytes actually read
// (distinct routed experts x their weight and scale bytes), and the ratio of the roofline time
// (bytes / peak copy bandwidth measured in the same run) to the GEMM time. With --tune it also
// searches every tile config within the limit per GEMM (the autotuner's search) and reports the
// best. Random weights are generated on the GPU; the L2 cache is flushed before every timed run.
//
//   bench_moe [--shapes glm47-tp4,glm45-air] [--formats fp8-per-channel,bf16,fp8-block128]
//             [--batches 1,8,64,256,1024] [--iters 20] [--tune] [--caps 0,101376]
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

namespace spark::cuda {
namespace {

struct BenchShape {
  std::string name;
  int experts, hidden, inter, top_k;
  float scaling;
};

__device__ __forceinline__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
__device__ __forceinline__ float HashUniform(uint64_t i, uint32_t seed) {
  return static_cast<float>(Hash(i, seed) >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

__global__ void FillFloat(float* p, int64_t n, float amp, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = HashUniform(i, seed) * amp;
}
__global__ void FillBf16(__nv_bfloat16* p, int64_t n, float amp, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = __float2bfloat16(HashUniform(i, seed) * amp);
}
__global__ void FillFp8(uint8_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<uint8_t>(
        __nv_cvt_float_to_fp8(HashUniform(i, seed) * 448.f, __NV_SATFINITE, __NV_E4M3));
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

struct Layer {
  MoeLayerDevice view;
  std::vector<void*> buffers;
  int64_t expert_bytes = 0;  // one expert's weights and scales
  ~Layer() {
    for (void* p : buffers) cudaFree(p);
  }
};

void* Alloc(Layer& l, int64_t bytes) {
  void* p = nullptr;
  Check(cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 4))), "cudaMalloc weights");
  l.buffers.push_back(p);
  return p;
}

void MakeLayer(Layer& l, const BenchShape& s, MoeWeightFormat format) {
  MoeShape& sh = l.view.shape;
  sh.num_experts = s.experts;
  sh.hidden = s.hidden;
  sh.inter = s.inter;
  sh.top_k = s.top_k;
  sh.routed_scaling_factor = s.scaling;
  l.view.format = format;
  const int64_t e = s.experts, h = s.hidden, im = s.inter;
  const int64_t w13 = e * 2 * im * h, w2 = e * h * im;
  auto* router = static_cast<float*>(Alloc(l, e * h * 4));
  FillFloat<<<1024, 256>>>(router, e * h, 4.0f / std::sqrt(static_cast<float>(h)), 1);
  auto* bias = static_cast<float*>(Alloc(l, e * 4));
  FillFloat<<<1, 256>>>(bias, e, 0.05f, 2);
  l.view.router = router;
  l.view.router_bias = bias;
  if (format == MoeWeightFormat::kBf16) {
    auto* a = static_cast<__nv_bfloat16*>(Alloc(l, w13 * 2));
    auto* b = static_cast<__nv_bfloat16*>(Alloc(l, w2 * 2));
    FillBf16<<<4096, 256>>>(a, w13, std::sqrt(3.0f / h), 3);
    FillBf16<<<4096, 256>>>(b, w2, std::sqrt(3.0f / im), 4);
    l.view.w13 = a;
    l.view.w2 = b;
    l.expert_bytes = (2 * im * h + h * im) * 2;
  } else {
    auto* a = static_cast<uint8_t*>(Alloc(l, w13));
    auto* b = static_cast<uint8_t*>(Alloc(l, w2));
    FillFp8<<<4096, 256>>>(a, w13, 3);
    FillFp8<<<4096, 256>>>(b, w2, 4);
    l.view.w13 = a;
    l.view.w2 = b;
    const bool block = format == MoeWeightFormat::kFp8Block;
    const int64_t s13 = block ? e * 2 * (im / 128) * (h / 128) : e * 2 * im;
    const int64_t s2 = block ? e * (h / 128) * (im / 128) : e * h;
    auto* sa = static_cast<float*>(Alloc(l, s13 * 4));
    auto* sb = static_cast<float*>(Alloc(l, s2 * 4));
    FillFloat<<<256, 256>>>(sa, s13, 0.5f / (448.f * std::sqrt(static_cast<float>(h))), 5);
    FillFloat<<<256, 256>>>(sb, s2, 0.5f / (448.f * std::sqrt(static_cast<float>(im))), 6);
    l.view.w13_scale = sa;
    l.view.w2_scale = sb;
    l.expert_bytes = 2 * im * h + h * im + (s13 + s2) / e * 4;
  }
  Check(cudaGetLastError(), "init kernels");
  Check(cudaDeviceSynchronize(), "init");
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
  double total_us = 0, gemm_us = 0;
};

struct Runner {
  const Layer& layer;
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
      const __nv_bfloat16* xi = x + (i % inputs) * max_tokens * layer.view.shape.hidden;
      cudaError_t err =
          gu != nullptr
              ? MoeForwardWithConfigs(layer.view, xi, tokens, out, ws, table, *gu, *dn, nullptr)
              : MoeForward(layer.view, xi, tokens, out, nullptr, ws, table, nullptr);
      Check(err, "MoeForward");
      auto pt = ws.PhaseTimes();
      if (!pt.ok()) {
        std::fprintf(stderr, "%s\n", pt.status().ToString().c_str());
        std::exit(1);
      }
      if (i == 0) continue;  // warm-up
      t.total_us += 1e3 * (pt->route_ms + pt->gate_up_ms + pt->down_ms + pt->combine_ms);
      t.gemm_us += 1e3 * (pt->gate_up_ms + pt->down_ms);
    }
    t.total_us /= iters;
    t.gemm_us /= iters;
    return t;
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
    } else {
      std::fprintf(stderr,
                   "usage: bench_moe [--shapes glm47-tp4,glm45-air] [--formats "
                   "fp8-per-channel,bf16,fp8-block128] [--batches 1,8,...] [--caps 0,101376] "
                   "[--iters N] [--tune]\n");
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
      Layer layer;
      MakeLayer(layer, s, format);
      auto ws = MoeWorkspace::Create(layer.view.shape, format, max_tokens);
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
      std::printf("\n%s, %s weights\n", s.name.c_str(), fname.c_str());
      std::printf("%-7s %-6s %10s %10s %9s %8s  %s\n", "smem", "batch", "total_us", "gemms_us",
                  "MB_read", "roofl%", "configs (gate_up | down)");
      for (int64_t cap : caps) {
        auto table = MoeConfigTable::Create(*dev, cap);
        if (!table.ok()) {
          std::fprintf(stderr, "bench_moe: %s\n", table.status().ToString().c_str());
          return 1;
        }
        const std::string cap_name = cap > 0 ? std::to_string(cap) : "device";
        for (int64_t b : batches) {
          const Timing t = runner.Time(b, *table, nullptr, nullptr, iters);
          const MoePlan plan = ws->last_plan();
          const int64_t experts = DistinctExperts(*ws, b, s.top_k);
          const double bytes = static_cast<double>(experts * layer.expert_bytes);
          const double roof_us = bytes / copy_bw * 1e6;
          std::printf("%-7s %-6lld %10.1f %10.1f %9.1f %7.1f%%  %s | %s\n", cap_name.c_str(),
                      static_cast<long long>(b), t.total_us, t.gemm_us, bytes / 1e6,
                      100.0 * roof_us / t.gemm_us, plan.gate_up.ToString().c_str(),
                      plan.down.ToString().c_str());
          if (!tune) continue;
          // Autotuner search: per block_m, the best gate/up config (down fixed), then the best
          // down config (gate/up at its best); keep the best pair.
          const auto cands = table->Candidates(format);
          double best_us = 1e30;
          MoeTileConfig best_gu, best_dn;
          for (int bm : {16, 32, 64, 128}) {
            std::vector<MoeTileConfig> mine;
            for (const auto& c : cands)
              if (c.block_m == bm) mine.push_back(c);
            if (mine.empty()) continue;
            MoeTileConfig gu = mine.front(), dn = mine.front();
            double gu_us = 1e30;
            for (const auto& c : mine) {
              MoeTileConfig d = dn;
              auto pt = runner.Time(b, *table, &c, &d, 2);
              (void)pt;
              auto times = ws->PhaseTimes();
              const double us = 1e3 * times->gate_up_ms;
              if (us < gu_us) {
                gu_us = us;
                gu = c;
              }
            }
            double dn_us = 1e30;
            for (const auto& c : mine) {
              runner.Time(b, *table, &gu, &c, 2);
              auto times = ws->PhaseTimes();
              const double us = 1e3 * times->down_ms;
              if (us < dn_us) {
                dn_us = us;
                dn = c;
              }
            }
            const Timing tt = runner.Time(b, *table, &gu, &dn, iters);
            if (tt.gemm_us < best_us) {
              best_us = tt.gemm_us;
              best_gu = gu;
              best_dn = dn;
            }
          }
          const Timing tt = runner.Time(b, *table, &best_gu, &best_dn, iters);
          std::printf("%-7s %-6lld %10.1f %10.1f %9.1f %7.1f%%  tuned: %s | %s\n", cap_name.c_str(),
                      static_cast<long long>(b), tt.total_us, tt.gemm_us, bytes / 1e6,
                      100.0 * roof_us / tt.gemm_us, best_gu.ToString().c_str(),
                      best_dn.ToString().c_str());
        }
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
