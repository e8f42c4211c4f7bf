// Dense linears on the GPU (split-K GEMV, cuBLASLt BF16 / FP8, dequantise + BF16) against the CPU
// backend's Linear (engine/cpu/kernels.h) over GLM-4.5-Air and GLM-4.7 shapes per TP size, odd
// and decode batch sizes, BF16 / FP8 per-channel / FP8 128x128 block weights. The error is
// max|gpu - cpu| / max|cpu|: for paths that use the exact weights and BF16 activations
// (GEMV, cuBLASLt BF16: <= 1e-4), <= 4e-3 with weights dequantised to BF16 (2^-9 relative per
// weight), <= 6e-2 for cuBLASLt FP8 with per-token FP8 activations (e4m3 has 3 mantissa bits).
// Timings (us, GB/s of weight traffic) of GEMV vs cuBLASLt at decode sizes are printed.
#include "engine/cuda/dense_linear.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cuda/dense_gemv_tuner.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/gemv.h"
#include "engine/model/dtype.h"
#include "engine/model/quantize.h"
#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

using engine::DType;
using engine::LinearWeight;
using engine::ScaleKind;

enum class Fmt { kBf16, kFp8Channel, kFp8Block };
const char* FmtName(Fmt f) {
  return f == Fmt::kBf16 ? "bf16" : (f == Fmt::kFp8Channel ? "fp8_channel" : "fp8_block");
}

LinearWeight MakeWeight(int64_t out, int64_t in, Fmt fmt, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float bound = std::sqrt(3.f / static_cast<float>(in));
  std::vector<float> w(static_cast<size_t>(out * in));
  for (float& v : w) v = dist(rng) * bound;
  LinearWeight lw;
  lw.out = out;
  lw.in = in;
  if (fmt == Fmt::kBf16) {
    lw.dtype = DType::kBF16;
    lw.data.resize(w.size() * 2);
    for (size_t i = 0; i < w.size(); ++i) {
      const uint16_t b = engine::FloatToBf16(w[i]);
      std::memcpy(lw.data.data() + i * 2, &b, 2);
    }
    return lw;
  }
  engine::Fp8Tensor t = fmt == Fmt::kFp8Channel ? engine::QuantizeFp8PerChannel(w, out, in)
                                                : engine::QuantizeFp8Block(w, out, in);
  lw.dtype = DType::kF8E4M3;
  lw.data.resize(t.q.size());
  std::memcpy(lw.data.data(), t.q.data(), t.q.size());
  lw.scale = t.scale;
  lw.scale_kind = fmt == Fmt::kFp8Channel ? ScaleKind::kPerChannel : ScaleKind::kBlock;
  if (fmt == Fmt::kFp8Block) {
    lw.block_n = 128;
    lw.block_k = 128;
  }
  return lw;
}

struct Uploaded {
  DeviceBuffer<uint8_t> data;
  DeviceBuffer<float> scale;
  DeviceLinear view;
};

Uploaded Upload(const LinearWeight& w) {
  Uploaded u{DeviceBuffer<uint8_t>(std::vector<uint8_t>(
                 reinterpret_cast<const uint8_t*>(w.data.data()),
                 reinterpret_cast<const uint8_t*>(w.data.data()) + w.data.size())),
             DeviceBuffer<float>(w.scale.empty() ? std::vector<float>{0.f} : w.scale),
             {}};
  u.view.type = w.dtype == DType::kF8E4M3 ? WeightType::kFP8 : WeightType::kBF16;
  u.view.scale_kind =
      w.scale_kind == ScaleKind::kNone
          ? WeightScale::kNone
          : (w.scale_kind == ScaleKind::kBlock ? WeightScale::kBlock : WeightScale::kPerChannel);
  u.view.out = w.out;
  u.view.in = w.in;
  u.view.data = u.data.get();
  u.view.scale = w.scale.empty() ? nullptr : u.scale.get();
  u.view.block_n = w.block_n;
  u.view.block_k = w.block_k;
  return u;
}

struct Shape {
  const char* name;
  int64_t out, in;
};

// GLM-4.5-Air (H 4096, 96 q / 8 kv heads of 128, I 10944) and GLM-4.7 (H 5120, I 12288).
const Shape kShapes[] = {
    {"air_qkv_tp1", 14336, 4096},   {"air_o_tp2", 4096, 6144},     {"air_gate_up_tp4", 5472, 4096},
    {"air_down_tp1", 4096, 10944},  {"glm47_qkv_tp8", 1792, 5120}, {"glm47_o_tp8", 5120, 1536},
    {"glm47_down_tp8", 5120, 1536}, {"lm_head_tp8", 18944, 5120},  {"odd_out", 1003, 1536},
};

// SPARK_GPU_QUICK=1 (compute-sanitizer runs): two small shapes and two batch sizes.
bool Quick() {
  const char* q = std::getenv("SPARK_GPU_QUICK");
  return q != nullptr && *q == '1';
}

TEST(DenseLinearTest, MatchesCpuOverShapesFormatsAndBatchSizes) {
  Result<DeviceInfo> dev = QueryDevice(0);
  ASSERT_TRUE(dev.ok()) << dev.status().ToString();
  engine::ThreadPool pool(0);
  // Dispatch configurations: GEMV up to 16 rows, the defaults, and no FP8 activations.
  struct Config {
    const char* name;
    int bf16_rows, fp8_rows;
    bool fp8_act;
  };
  const Config configs[] = {
      {"gemv16", 16, 16, true}, {"default", 0, 1, true}, {"no_fp8_act", 0, 1, false}};
  std::vector<std::unique_ptr<DenseLinear>> runners;
  for (const Config& c : configs) {
    DenseLinearLimits limits;
    limits.max_rows = 64;
    limits.max_in = 12288;
    limits.max_out = 20000;
    limits.max_fp8_weight_elems = int64_t{20000} * 12288;
    limits.max_fp8_out = 20000;
    limits.sms = dev->multiprocessors;
    limits.gemv_bf16_rows = c.bf16_rows;
    limits.gemv_fp8_rows = c.fp8_rows;
    limits.fp8_activations = c.fp8_act;
    Result<std::unique_ptr<DenseLinear>> lin = DenseLinear::Create(limits);
    ASSERT_TRUE(lin.ok()) << lin.status().ToString();
    runners.push_back(std::move(*lin));
  }
  for (const Shape& s : kShapes) {
    if (Quick() && std::string(s.name) != "glm47_o_tp8") continue;
    for (Fmt fmt : {Fmt::kBf16, Fmt::kFp8Channel, Fmt::kFp8Block}) {
      LinearWeight w = MakeWeight(s.out, s.in, fmt, static_cast<uint32_t>(s.out + s.in));
      Uploaded dw = Upload(w);
      for (int64_t m : {1, 3, 16, 17, 64}) {
        if (Quick() && m != 3 && m != 17) continue;
        std::mt19937 rng(static_cast<uint32_t>(m));
        std::normal_distribution<float> dist(0.f, 1.f);
        std::vector<float> x(static_cast<size_t>(m * s.in));
        std::vector<__nv_bfloat16> xb(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
          xb[i] = __float2bfloat16(dist(rng));
          x[i] = __bfloat162float(xb[i]);
        }
        std::vector<float> want(static_cast<size_t>(m * s.out));
        engine::Linear(x.data(), m, w, want.data(), &pool);
        double max_ref = 0;
        for (float v : want) max_ref = std::max(max_ref, std::fabs(static_cast<double>(v)));
        DeviceBuffer<__nv_bfloat16> dx(xb);
        for (size_t ci = 0; ci < runners.size(); ++ci) {
          DeviceBuffer<float> dy(m * s.out);
          Status st = runners[ci]->Run(dw.view, dx.get(), m, dy.get(), nullptr);
          ASSERT_TRUE(st.ok()) << st.ToString();
          std::vector<float> got = dy.Download();
          double max_diff = 0;
          for (size_t i = 0; i < want.size(); ++i) {
            max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - want[i]));
          }
          const LinearPath path = runners[ci]->last_path();
          // Exact weights: fp32 rounding only. Dequantised BF16 weights: 2^-9 relative per
          // weight. FP8 activations: e4m3 rounding of x.
          const double tol = path == LinearPath::kLtFp8
                                 ? 6e-2
                                 : (path == LinearPath::kDequantLtBf16 ? 4e-3 : 1e-4);
          std::printf("[linear] %-16s %-11s m=%-3lld %-10s %-24s rel err %.3g\n", s.name,
                      FmtName(fmt), static_cast<long long>(m), configs[ci].name,
                      LinearPathName(path), max_diff / max_ref);
          EXPECT_LE(max_diff / max_ref, tol)
              << s.name << " " << FmtName(fmt) << " m=" << m << " " << configs[ci].name;
          if (!runners[ci]->fp8_fallback_reason().empty()) {
            std::printf("[linear-fp8-fallback] %s\n", runners[ci]->fp8_fallback_reason().c_str());
          }
        }
      }
    }
  }
}

TEST(DenseLinearTest, DecodeTimingsGemvVersusCublasLt) {
  if (Quick()) GTEST_SKIP() << "timings skipped in quick mode";
  Result<DeviceInfo> dev = QueryDevice(0);
  ASSERT_TRUE(dev.ok());
  std::printf("[linear-timing] device %s\n", dev->name.c_str());
  for (bool use_gemv : {true, false}) {
    DenseLinearLimits limits;
    limits.max_rows = 64;
    limits.max_in = 12288;
    limits.max_out = 20000;
    limits.max_fp8_weight_elems = int64_t{20000} * 12288;
    limits.max_fp8_out = 20000;
    limits.sms = dev->multiprocessors;
    limits.gemv_max_rows = use_gemv ? 16 : 0;
    limits.gemv_bf16_rows = use_gemv ? 16 : 0;
    limits.gemv_fp8_rows = use_gemv ? 16 : 0;
    Result<std::unique_ptr<DenseLinear>> lin = DenseLinear::Create(limits);
    ASSERT_TRUE(lin.ok());
    for (const Shape& s : {kShapes[0], kShapes[3], kShapes[7]}) {
      for (Fmt fmt : {Fmt::kBf16, Fmt::kFp8Channel, Fmt::kFp8Block}) {
        LinearWeight w = MakeWeight(s.out, s.in, fmt, 7);
        Uploaded dw = Upload(w);
        for (int64_t m : {1, 8, 16}) {
          DeviceBuffer<__nv_bfloat16> dx(m * s.in);
          DeviceBuffer<float> dy(m * s.out);
          for (int i = 0; i < 3; ++i) (void)(*lin)->Run(dw.view, dx.get(), m, dy.get(), nullptr);
          cudaEvent_t a, b;
          cudaEventCreate(&a);
          cudaEventCreate(&b);
          const int iters = 50;
          cudaEventRecord(a);
          for (int i = 0; i < iters; ++i) {
            ASSERT_TRUE((*lin)->Run(dw.view, dx.get(), m, dy.get(), nullptr).ok());
          }
          cudaEventRecord(b);
          cudaEventSynchronize(b);
          float ms = 0;
          cudaEventElapsedTime(&ms, a, b);
          const double us = ms * 1000.0 / iters;
          const double bytes = static_cast<double>(w.data.size());
          std::printf("[linear-timing] %-14s %-11s m=%-2lld %-24s %8.1f us %7.0f GB/s\n", s.name,
                      FmtName(fmt), static_cast<long long>(m), LinearPathName((*lin)->last_path()),
                      us, bytes / (us * 1e3));
          cudaEventDestroy(a);
          cudaEventDestroy(b);
        }
      }
    }
  }
}

// Largest |ref| and largest |y - ref| of a GEMV output against a reference output.
struct MaxDiff {
  float scale = 0.f, diff = 0.f;
};
MaxDiff Compare(const std::vector<float>& y, const std::vector<float>& ref) {
  MaxDiff d;
  for (size_t i = 0; i < y.size(); ++i) {
    d.scale = std::max(d.scale, std::fabs(ref[i]));
    d.diff = std::max(d.diff, std::fabs(y[i] - ref[i]));
  }
  return d;
}

// n BF16 activations drawn from N(0, magnitude^2) with `seed`; *exact holds their float values.
std::vector<__nv_bfloat16> NormalBf16(int64_t n, uint32_t seed, float magnitude,
                                      std::vector<float>* exact) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, magnitude);
  std::vector<__nv_bfloat16> xb(static_cast<size_t>(n));
  exact->resize(xb.size());
  for (size_t i = 0; i < xb.size(); ++i) {
    xb[i] = __float2bfloat16(dist(rng));
    (*exact)[i] = __bfloat162float(xb[i]);
  }
  return xb;
}

// The one-row FP8 GEMV on the tensor cores (Fp8Dequant::kHalfMma) against the CPU backend's
// Linear: both weight formats, every warp split of a row group and K split (reduced in the kernel
// and by the second kernel), outputs not a multiple of 16, and activations far beyond f16's range
// (|x| ~ 1e6) or far below its normal range (|x| ~ 1e-7), which the power-of-two staging scale
// must bring in exactly. A K that is not a multiple of 64 runs the conversion kernel instead.
TEST(DenseLinearTest, OneRowFp8TensorCoreGemvMatchesCpu) {
  Result<DeviceInfo> dev = QueryDevice(0);
  ASSERT_TRUE(dev.ok());
  engine::ThreadPool pool(0);
  const Shape shapes[] = {{"glm47_o_tp8", 5120, 1536},
                          {"odd_out", 1003, 1536},
                          {"air_o_tp1", 4096, 12288},
                          {"long_k", 512, 24576},
                          {"k_not_64", 200, 1040}};
  constexpr int kCounters = 8192;
  DeviceBuffer<int32_t> counters(std::vector<int32_t>(kCounters, 0));
  for (const Shape& s : shapes) {
    for (const Fmt fmt : {Fmt::kFp8Channel, Fmt::kFp8Block}) {
      if (fmt == Fmt::kFp8Block && s.in % 128 != 0) continue;
      const LinearWeight w = MakeWeight(s.out, s.in, fmt, static_cast<uint32_t>(s.out * 7 + s.in));
      Uploaded dw = Upload(w);
      for (const float magnitude : {1.f, 1e6f, 1e-7f}) {
        std::vector<float> x;
        const std::vector<__nv_bfloat16> xb =
            NormalBf16(s.in, static_cast<uint32_t>(s.in), magnitude, &x);
        std::vector<float> want(static_cast<size_t>(s.out));
        engine::Linear(x.data(), 1, w, want.data(), &pool);
        DeviceBuffer<__nv_bfloat16> dx(xb);
        DeviceBuffer<float> dy(s.out);
        DeviceBuffer<float> partial(8 * s.out);
        const int picked = GemvKSplits(dw.view, dev->multiprocessors, 1, Fp8Dequant::kHalfMma);
        for (const int slices : {0, 1, 2, 4, 8}) {
          for (const int splits : {1, 2, picked}) {
            for (const bool in_kernel : {true, false}) {
              if (splits == 1 && !in_kernel) continue;
              ASSERT_EQ(Gemv(dw.view, dx.get(), 1, nullptr, splits, partial.get(), dy.get(),
                             nullptr, in_kernel ? counters.get() : nullptr,
                             in_kernel ? kCounters : 0, Fp8Dequant::kHalfMma, slices),
                        cudaSuccess);
              ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
              const MaxDiff d = Compare(dy.Download(), want);
              EXPECT_LE(d.diff, 1e-4f * d.scale)
                  << s.name << " " << FmtName(fmt) << " |x|~" << magnitude << " slices " << slices
                  << " splits " << splits << (in_kernel ? " in-kernel" : " reduce-kernel");
              if (slices == 0 && splits == picked && in_kernel) {
                std::printf(
                    "[gemv-mma] %-12s %-11s |x|~%-6g picked splits %d slices %d rel err "
                    "%.3g\n",
                    s.name, FmtName(fmt), magnitude, picked, kGemvMmaSlicesDefault,
                    d.diff / d.scale);
              }
            }
          }
        }
      }
    }
  }
  // The counters are left at zero for the next user.
  std::vector<int32_t> left = counters.Download();
  for (int32_t c : left) ASSERT_EQ(c, 0);
}

// The one-row FP8 GEMV as row sweeps (Fp8Dequant::kConvertSweep) against the CPU backend's
// Linear: both weight formats, 1 to 4 vectors per thread (ragged: K = 5,120 and 1,040), outputs
// not a multiple of the rows per pass, more row groups than the persistent grid holds, and a K
// beyond the sweep (24,576: the conversion kernel runs). Any k_splits is ignored.
TEST(DenseLinearTest, OneRowFp8RowSweepGemvMatchesCpu) {
  engine::ThreadPool pool(0);
  const Shape shapes[] = {{"air_qkv_tp1", 14336, 4096},  {"air_o_tp1", 4096, 12288},
                          {"glm47_qkv_tp4", 3584, 5120}, {"odd_out", 1003, 1536},
                          {"k_16k", 300, 16384},         {"long_k", 512, 24576},
                          {"k_1040", 202, 1040}};
  for (const Shape& s : shapes) {
    for (const Fmt fmt : {Fmt::kFp8Channel, Fmt::kFp8Block}) {
      if (fmt == Fmt::kFp8Block && s.in % 128 != 0) continue;
      const LinearWeight w = MakeWeight(s.out, s.in, fmt, static_cast<uint32_t>(s.out * 3 + s.in));
      Uploaded dw = Upload(w);
      std::vector<float> x;
      const std::vector<__nv_bfloat16> xb =
          NormalBf16(s.in, static_cast<uint32_t>(s.in + 1), 1.f, &x);
      std::vector<float> want(static_cast<size_t>(s.out));
      engine::Linear(x.data(), 1, w, want.data(), &pool);
      std::vector<float> bias(static_cast<size_t>(s.out));
      for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.01f * static_cast<float>(i % 7);
      for (size_t i = 0; i < want.size(); ++i) want[i] += bias[i];
      DeviceBuffer<__nv_bfloat16> dx(xb);
      DeviceBuffer<float> dy(s.out), dbias(bias), partial(4 * s.out);
      for (const int splits : {1, 3}) {
        ASSERT_EQ(Gemv(dw.view, dx.get(), 1, dbias.get(), splits, partial.get(), dy.get(), nullptr,
                       nullptr, 0, Fp8Dequant::kConvertSweep),
                  cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const MaxDiff d = Compare(dy.Download(), want);
        EXPECT_LE(d.diff, 1e-5f * d.scale) << s.name << " " << FmtName(fmt) << " splits " << splits;
      }
      std::printf("[gemv-sweep] %-14s %-11s %lld blocks\n", s.name, FmtName(fmt),
                  static_cast<long long>(GemvBlocks(dw.view, 1, 1, Fp8Dequant::kConvertSweep)));
    }
  }
}

// gemv_fp8=auto (engine/cuda/dense_gemv_tuner.h): one choice per distinct FP8 shape served by the
// one-row GEMV, set on the DenseLinear, no variant refused, and one-row results with the chosen
// variants still matching the CPU; BF16 weights and repeated shapes are not tuned.
TEST(DenseLinearTest, DenseGemvTunerChoosesPerShapeAndKeepsResults) {
  engine::ThreadPool pool(0);
  struct Case {
    Shape shape;
    Fmt fmt;
  };
  const Case cases[] = {{{"air_qkv_tp1", 14336, 4096}, Fmt::kFp8Channel},
                        {{"air_o_tp1", 4096, 12288}, Fmt::kFp8Channel},
                        {{"glm47_qkv_tp4", 3584, 5120}, Fmt::kFp8Block},
                        {{"air_qkv_again", 14336, 4096}, Fmt::kFp8Channel},
                        {{"bf16", 1024, 4096}, Fmt::kBf16}};
  std::vector<LinearWeight> host;
  std::vector<Uploaded> device;
  std::vector<DeviceLinear> views;
  for (const Case& c : cases) {
    host.push_back(MakeWeight(c.shape.out, c.shape.in, c.fmt,
                              static_cast<uint32_t>(c.shape.out + 7 * c.shape.in)));
    device.push_back(Upload(host.back()));
    views.push_back(device.back().view);
  }
  Result<DeviceInfo> info = QueryDevice(0);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  DenseLinearLimits limits;
  limits.max_rows = 1;
  limits.sms = info->multiprocessors;
  for (const DeviceLinear& v : views) {
    limits.max_in = std::max(limits.max_in, v.in);
    limits.max_out = std::max(limits.max_out, v.out);
    if (v.type == WeightType::kFP8) {
      limits.max_fp8_weight_elems = std::max(limits.max_fp8_weight_elems, v.out * v.in);
      limits.max_fp8_out = std::max(limits.max_fp8_out, v.out);
    }
  }
  Result<std::unique_ptr<DenseLinear>> linear = DenseLinear::Create(limits);
  ASSERT_TRUE(linear.ok()) << linear.status().ToString();
  DenseGemvTunerOptions options;
  options.log = [](const std::string& line) { std::printf("[dense-gemv] %s\n", line.c_str()); };
  Result<std::vector<DenseGemvChoice>> choices = TuneDenseGemv(**linear, views, options, nullptr);
  ASSERT_TRUE(choices.ok()) << choices.status().ToString();
  ASSERT_EQ(choices->size(), 3u);  // the repeated shape and the BF16 weight are not tuned
  for (const DenseGemvChoice& c : *choices) {
    EXPECT_EQ(c.refused, 0) << DenseGemvChoiceLine(c);
    EXPECT_GT(c.us, 0.0);
    EXPECT_EQ(c.default_dequant, kGemvFp8DequantDefault);
    EXPECT_EQ((*linear)->GemvDequantFor(c.weight), c.dequant);
    std::printf("[dense-gemv] chose %s\n", DenseGemvChoiceLine(c).c_str());
  }
  for (size_t i = 0; i < host.size(); ++i) {
    std::vector<float> x;
    const std::vector<__nv_bfloat16> xb =
        NormalBf16(host[i].in, static_cast<uint32_t>(i + 3), 1.f, &x);
    std::vector<float> want(static_cast<size_t>(host[i].out));
    engine::Linear(x.data(), 1, host[i], want.data(), &pool);
    DeviceBuffer<__nv_bfloat16> dx(xb);
    DeviceBuffer<float> dy(host[i].out);
    ASSERT_TRUE((*linear)->Run(views[i], dx.get(), 1, dy.get(), nullptr).ok());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const MaxDiff d = Compare(dy.Download(), want);
    EXPECT_LE(d.diff, 1e-4f * d.scale) << cases[i].shape.name;
  }
}

// Mean microseconds of `iters` back-to-back calls launch(i) (each returns cudaError_t), timed
// with events on the default stream; the first launch error, if any.
template <class Launch>
cudaError_t MeanLaunchUs(int iters, Launch&& launch, double* us) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  cudaError_t err = cudaSuccess;
  for (int i = 0; i < iters && err == cudaSuccess; ++i) err = launch(i);
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  *us = ms * 1000.0 / iters;
  return err;
}

// The one-row FP8 GEMV (decode at batch 1) at every K split from 1 to 16, with and without the
// in-kernel split reduction: every split gives split 1's result up to fp32 summation order, and
// its time is printed with its grid in waves (blocks / (SMs x resident blocks per SM)) next to
// the split GemvKSplits picks. Four copies of the weights are cycled
// so that the timed reads come from HBM, not from the L2 cache.
TEST(DenseLinearTest, OneRowFp8GemvEveryKSplit) {
  if (Quick()) GTEST_SKIP() << "timings skipped in quick mode";
  Result<DeviceInfo> dev = QueryDevice(0);
  ASSERT_TRUE(dev.ok());
  const Shape shapes[] = {{"air_qkv_tp1", 14336, 4096},
                          {"air_o_tp1", 4096, 12288},
                          {"glm47_qkv_tp4", 3584, 5120},
                          {"glm47_o_tp4", 5120, 3072}};
  constexpr int kCopies = 4;
  constexpr int kMaxSplits = 16;
  constexpr int kCounters = 8192;
  constexpr int kIters = 64;
  for (const Shape& s : shapes) {
    const LinearWeight w = MakeWeight(s.out, s.in, Fmt::kFp8Channel, 11);
    std::vector<Uploaded> copies;
    for (int c = 0; c < kCopies; ++c) copies.push_back(Upload(w));
    std::vector<__nv_bfloat16> hx(static_cast<size_t>(s.in));
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> dist(-2.f, 2.f);
    for (auto& v : hx) v = __float2bfloat16(dist(rng));
    DeviceBuffer<__nv_bfloat16> dx(hx);
    DeviceBuffer<float> dy(s.out), partial(kMaxSplits * s.out);
    DeviceBuffer<int32_t> counters(std::vector<int32_t>(kCounters, 0));
    std::vector<float> first;
    const int picked = GemvKSplits(copies[0].view, dev->multiprocessors, 1);
    const int per_sm = GemvResidentBlocksPerSm(copies[0].view, 1);
    ASSERT_GT(per_sm, 0);
    for (int splits = 1; splits <= kMaxSplits; ++splits) {
      for (const bool in_kernel : {true, false}) {
        if (splits == 1 && !in_kernel) continue;
        auto run = [&](int c) {
          return Gemv(copies[c].view, dx.get(), 1, nullptr, splits, partial.get(), dy.get(),
                      nullptr, in_kernel ? counters.get() : nullptr, in_kernel ? kCounters : 0);
        };
        ASSERT_EQ(run(0), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<float> y = dy.Download();
        if (first.empty()) first = y;
        const MaxDiff d = Compare(y, first);
        EXPECT_LE(d.diff, 1e-5f * d.scale) << s.name << " splits " << splits;
        double us = 0;
        ASSERT_EQ(MeanLaunchUs(
                      kIters, [&](int i) { return run(i % kCopies); }, &us),
                  cudaSuccess);
        const int64_t blocks = GemvBlocks(copies[0].view, 1, splits);
        std::printf(
            "[gemv-splits] %-14s splits %2d %-13s %5lld blocks %5.2f waves %8.2f us %7.0f "
            "GB/s%s\n",
            s.name, splits, in_kernel ? "in-kernel" : "reduce-kernel",
            static_cast<long long>(blocks),
            static_cast<double>(blocks) / (per_sm * dev->multiprocessors), us,
            static_cast<double>(w.data.size()) / (us * 1e3),
            splits == picked && in_kernel ? "  <- GemvKSplits" : "");
      }
    }
    // Both dequantisations (hardware conversion, integer bit placement) at split 1 and the
    // picked split: the same outputs (up to fp32 rounding), timed from HBM (copies cycled) and
    // with one weight copy read again and again, from the L2 cache where the weights fit (the
    // GLM-4.7 tp=4 shapes): against the HBM rate that shows whether the kernel's own
    // instructions or the memory bound it.
    for (const Fp8Dequant dequant : {Fp8Dequant::kConvert, Fp8Dequant::kScaledBits,
                                     Fp8Dequant::kHalfMma, Fp8Dequant::kConvertSweep}) {
      const char* dq = dequant == Fp8Dequant::kConvert      ? "convert"
                       : dequant == Fp8Dequant::kScaledBits ? "scaled-bits"
                       : dequant == Fp8Dequant::kHalfMma    ? "half-mma"
                                                            : "row-sweep";
      const int dq_picked = GemvKSplits(copies[0].view, dev->multiprocessors, 1, dequant);
      for (const int splits : {1, dq_picked}) {
        for (const bool one_copy : {false, true}) {
          auto run = [&](int c) {
            return Gemv(copies[one_copy ? 0 : c].view, dx.get(), 1, nullptr, splits, partial.get(),
                        dy.get(), nullptr, counters.get(), kCounters, dequant);
          };
          ASSERT_EQ(run(0), cudaSuccess);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const MaxDiff d = Compare(dy.Download(), first);
          // The tensor cores sum in another order (and may truncate their fp32 sums).
          const float tol = dequant == Fp8Dequant::kHalfMma ? 1e-4f : 1e-5f;
          EXPECT_LE(d.diff, tol * d.scale) << s.name << " " << dq << " splits " << splits;
          double us = 0;
          ASSERT_EQ(MeanLaunchUs(
                        kIters, [&](int i) { return run(i % kCopies); }, &us),
                    cudaSuccess);
          const bool fits_l2 = w.data.size() <= (size_t{40} << 20);
          std::printf(
              "[gemv-dequant] %-14s %-11s splits %2d %-20s %8.2f us %7.0f GB/s "
              "(%d blocks/SM)\n",
              s.name, dq, splits, !one_copy ? "HBM" : (fits_l2 ? "one copy, L2" : "one copy, > L2"),
              us, static_cast<double>(w.data.size()) / (us * 1e3),
              GemvResidentBlocksPerSm(copies[0].view, 1, dequant));
        }
      }
    }
    // The tensor-core kernel's warps per 16-row group (its blocks hold 8 / slices groups), ring
    // depth and K split, from HBM.
    const int mma_picked =
        GemvKSplits(copies[0].view, dev->multiprocessors, 1, Fp8Dequant::kHalfMma);
    const int default_slices = kGemvMmaSlicesDefault;
    for (const int slices : {2, 4, 8}) {
      for (const int stages : {4, 6, 8}) {
        for (int splits = 1; splits <= 3; ++splits) {
          auto run = [&](int c) {
            return Gemv(copies[c].view, dx.get(), 1, nullptr, splits, partial.get(), dy.get(),
                        nullptr, counters.get(), kCounters, Fp8Dequant::kHalfMma, slices, stages);
          };
          ASSERT_EQ(run(0), cudaSuccess);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const MaxDiff d = Compare(dy.Download(), first);
          EXPECT_LE(d.diff, 1e-4f * d.scale)
              << s.name << " slices " << slices << " stages " << stages << " splits " << splits;
          double us = 0;
          ASSERT_EQ(MeanLaunchUs(
                        kIters, [&](int i) { return run(i % kCopies); }, &us),
                    cudaSuccess);
          const int64_t blocks =
              GemvBlocks(copies[0].view, 1, splits, Fp8Dequant::kHalfMma, slices);
          std::printf(
              "[gemv-mma-slices] %-14s slices %d stages %d splits %d %5lld blocks %8.2f us %7.0f "
              "GB/s%s\n",
              s.name, slices, stages, splits, static_cast<long long>(blocks), us,
              static_cast<double>(w.data.size()) / (us * 1e3),
              slices == default_slices && stages == 6 && splits == mma_picked ? "  <- default"
                                                                              : "");
        }
      }
    }
  }
}

}  // namespace
}  // namespace spark::cuda
