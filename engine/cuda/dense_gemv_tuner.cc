#include "engine/cuda/dense_gemv_tuner.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/tuning_stats.h"
#include "engine/model/dtype.h"

namespace spark::cuda {
namespace {

// Device memory freed on scope exit.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (p_ != nullptr) cudaFree(p_);
  }
  Status Alloc(size_t bytes) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&p_, std::max<size_t>(bytes, 16)));
    bytes_ = bytes;
    return Status::Ok();
  }
  void* get() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

class EventPair {
 public:
  EventPair() = default;
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  ~EventPair() {
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
  }
  Status Create() {
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop_));
    return Status::Ok();
  }
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

std::string ShapeName(const DeviceLinear& w) {
  return "[" + std::to_string(w.out) + ", " + std::to_string(w.in) + "] " +
         (w.scale_kind == WeightScale::kBlock ? "fp8-block" : "fp8-channel");
}

// Runs and times one-row linears of one weight with the L2 flushed before each.
struct Harness {
  DenseLinear& linear;
  cudaStream_t stream;
  const __nv_bfloat16* x;
  float* y;
  Scratch& flush;
  EventPair& events;
  int64_t runs = 0;

  Result<double> Time(const DeviceLinear& w) {
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(flush.get(), static_cast<int>(runs++ & 0xff), flush.bytes(), stream));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(events.start(), stream));
    SPARK_RETURN_IF_ERROR(linear.Run(w, x, 1, y, stream));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(events.stop(), stream));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events.stop()));
    float ms = 0;
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events.start(), events.stop()));
    return 1e3 * static_cast<double>(ms);
  }

  Result<std::vector<float>> Output(const DeviceLinear& w) {
    SPARK_RETURN_IF_ERROR(linear.Run(w, x, 1, y, stream));
    std::vector<float> host(static_cast<size_t>(w.out));
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host.data(), y, host.size() * sizeof(float),
                                               cudaMemcpyDeviceToHost, stream));
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return host;
  }
};

}  // namespace

const char* Fp8DequantName(Fp8Dequant dequant) {
  switch (dequant) {
    case Fp8Dequant::kConvert:
      return "convert";
    case Fp8Dequant::kScaledBits:
      return "scaled_bits";
    case Fp8Dequant::kHalfMma:
      return "half_mma";
    case Fp8Dequant::kConvertSweep:
      return "convert_sweep";
  }
  return "?";
}

std::string DenseGemvChoiceLine(const DenseGemvChoice& c) {
  char line[256];
  std::snprintf(line, sizeof(line), "%s: %s %.2f us (%s %.2f us, %d refused)",
                ShapeName(c.weight).c_str(), Fp8DequantName(c.dequant), c.us,
                Fp8DequantName(c.default_dequant), c.default_us, c.refused);
  return line;
}

Result<std::vector<DenseGemvChoice>> TuneDenseGemv(DenseLinear& linear,
                                                   const std::vector<DeviceLinear>& weights,
                                                   const DenseGemvTunerOptions& options,
                                                   cudaStream_t stream) {
  // One weight per distinct FP8 shape.
  std::vector<DeviceLinear> shapes;
  int64_t max_in = 0, max_out = 0;
  for (const DeviceLinear& w : weights) {
    if (w.type != WeightType::kFP8 || w.data == nullptr || w.out == 0) continue;
    bool seen = false;
    for (const DeviceLinear& s : shapes) seen = seen || SameLayout(s, w);
    if (seen) continue;
    shapes.push_back(w);
    max_in = std::max(max_in, w.in);
    max_out = std::max(max_out, w.out);
  }
  std::vector<DenseGemvChoice> out;
  if (shapes.empty()) return out;

  Scratch x, y, flush;
  SPARK_RETURN_IF_ERROR(x.Alloc(static_cast<size_t>(max_in) * sizeof(__nv_bfloat16)));
  SPARK_RETURN_IF_ERROR(y.Alloc(static_cast<size_t>(max_out) * sizeof(float)));
  int device = 0, l2 = 0;
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SPARK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  SPARK_RETURN_IF_ERROR(
      flush.Alloc(std::max<size_t>(size_t{2} * static_cast<size_t>(l2), 1 << 20)));
  EventPair events;
  SPARK_RETURN_IF_ERROR(events.Create());
  {
    // Values k/64, |k| <= 127: exact in BF16 (the upper half of the float's bits).
    std::mt19937 rng(17);
    std::uniform_int_distribution<int> k(-127, 127);
    std::vector<uint16_t> host(static_cast<size_t>(max_in));
    for (uint16_t& v : host) v = engine::FloatToBf16(static_cast<float>(k(rng)) / 64.0f);
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(x.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice, stream));
  }
  Harness h{
      linear, stream, static_cast<const __nv_bfloat16*>(x.get()), static_cast<float*>(y.get()),
      flush,  events};
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };

  const std::vector<Fp8Dequant> variants = {Fp8Dequant::kConvert, Fp8Dequant::kScaledBits,
                                            Fp8Dequant::kHalfMma, Fp8Dequant::kConvertSweep};
  for (const DeviceLinear& w : shapes) {
    const Fp8Dequant fallback = linear.GemvDequantFor(w);
    // Any early return leaves the shape on the variant it had.
    struct Restore {
      DenseLinear& linear;
      const DeviceLinear& w;
      Fp8Dequant dequant;
      ~Restore() { linear.SetGemvDequant(w, dequant); }
    } restore{linear, w, fallback};
    SPARK_ASSIGN_OR_RETURN(std::vector<float> reference, h.Output(w));
    if (linear.last_path() != LinearPath::kGemv) continue;  // cuBLASLt serves it at one row
    DenseGemvChoice choice;
    choice.weight = w;
    choice.dequant = fallback;
    choice.default_dequant = fallback;
    std::vector<std::pair<Fp8Dequant, double>> timed;
    for (Fp8Dequant d : variants) {
      if (d != fallback) {
        linear.SetGemvDequant(w, d);
        SPARK_ASSIGN_OR_RETURN(std::vector<float> got, h.Output(w));
        const double err = RelativeError(got, reference);
        if (!(err <= options.max_relative_error)) {
          ++choice.refused;
          char line[256];
          std::snprintf(line, sizeof(line), "%s %s: refused, output differs by %.3g (relative L2)",
                        ShapeName(w).c_str(), Fp8DequantName(d), err);
          log(line);
          continue;
        }
      } else {
        linear.SetGemvDequant(w, d);
      }
      SPARK_RETURN_IF_ERROR(h.Time(w).status());  // warm-up
      std::vector<double> us;
      for (int i = 0; i < std::max(1, options.iters); ++i) {
        SPARK_ASSIGN_OR_RETURN(double u, h.Time(w));
        us.push_back(u);
      }
      timed.emplace_back(d, Median(us));
      char line[256];
      std::snprintf(line, sizeof(line), "%s %s: %.2f us", ShapeName(w).c_str(), Fp8DequantName(d),
                    timed.back().second);
      log(line);
    }
    // The fastest other variant against the default, in turns.
    const std::pair<Fp8Dequant, double>* best = nullptr;
    for (const auto& t : timed) {
      if (t.first != fallback && (best == nullptr || t.second < best->second)) best = &t;
    }
    std::vector<double> base_us, best_us;
    for (int i = 0; i < 2 * std::max(1, options.iters); ++i) {
      linear.SetGemvDequant(w, fallback);
      SPARK_ASSIGN_OR_RETURN(double b, h.Time(w));
      base_us.push_back(b);
      if (best != nullptr) {
        linear.SetGemvDequant(w, best->first);
        SPARK_ASSIGN_OR_RETURN(double u, h.Time(w));
        best_us.push_back(u);
      }
    }
    choice.default_us = Median(base_us);
    choice.us = choice.default_us;
    if (best != nullptr && Median(best_us) * 1.01 < choice.default_us) {
      choice.dequant = best->first;
      choice.us = Median(best_us);
    }
    restore.dequant = choice.dequant;
    out.push_back(choice);
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace spark::cuda
