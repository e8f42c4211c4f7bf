#include "engine/cuda/moe_pack.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "engine/cuda/cuda_check.h"
#include "engine/model/dtype.h"

namespace spark::cuda {
namespace {

using engine::DType;
using engine::LinearWeight;
using engine::ScaleKind;

Result<MoeWeightFormat> FormatOf(const LinearWeight& w, const std::string& name) {
  if (w.dtype == DType::kF8E4M3) {
    if (w.scale_kind == ScaleKind::kPerChannel) return MoeWeightFormat::kFp8PerChannel;
    if (w.scale_kind == ScaleKind::kBlock) {
      if (w.block_n == 128 && w.block_k == 128) return MoeWeightFormat::kFp8Block;
      return Unimplemented(name + ": FP8 block size " + std::to_string(w.block_n) + "x" +
                           std::to_string(w.block_k) +
                           " is not supported yet by the CUDA MoE kernel (only 128x128)");
    }
    return Unimplemented(name +
                         ": FP8 weights without per-channel or block scales are not "
                         "supported yet by the CUDA MoE kernel");
  }
  if (w.dtype == DType::kBF16 || w.dtype == DType::kF16 || w.dtype == DType::kF32)
    return MoeWeightFormat::kBf16;
  return InvalidArgument(name + ": dtype " + std::string(engine::DTypeName(w.dtype)) +
                         " cannot be an expert weight");
}

// Row `row` of `w` as BF16 bytes (BF16 copied, F16/F32 rounded) or e4m3 bytes.
void CopyRow(const LinearWeight& w, int64_t row, std::byte* dst) {
  const int64_t in = w.in;
  const std::byte* src = w.data.data() + row * in * engine::DTypeSize(w.dtype);
  switch (w.dtype) {
    case DType::kBF16:
      std::memcpy(dst, src, in * 2);
      return;
    case DType::kF8E4M3:
      std::memcpy(dst, src, in);
      return;
    case DType::kF16:
      for (int64_t i = 0; i < in; ++i) {
        uint16_t h;
        std::memcpy(&h, src + i * 2, 2);
        const uint16_t b = engine::FloatToBf16(engine::F16ToFloat(h));
        std::memcpy(dst + i * 2, &b, 2);
      }
      return;
    case DType::kF32:
      for (int64_t i = 0; i < in; ++i) {
        float f;
        std::memcpy(&f, src + i * 4, 4);
        const uint16_t b = engine::FloatToBf16(f);
        std::memcpy(dst + i * 2, &b, 2);
      }
      return;
    default:
      return;
  }
}

Status CheckWeight(const LinearWeight& w, const std::string& name, int64_t out, int64_t in,
                   MoeWeightFormat format) {
  if (w.out != out || w.in != in) {
    return InvalidArgument(name + " has shape [" + std::to_string(w.out) + ", " +
                           std::to_string(w.in) + "], expected [" + std::to_string(out) + ", " +
                           std::to_string(in) + "]; the checkpoint does not match its config");
  }
  SPARK_ASSIGN_OR_RETURN(MoeWeightFormat f, FormatOf(w, name));
  if (f != format) {
    return InvalidArgument(name + " is stored as " + MoeWeightFormatName(f) + " but expert 0 as " +
                           MoeWeightFormatName(format) + "; all experts of a layer must match");
  }
  const int64_t esize = static_cast<int64_t>(engine::DTypeSize(w.dtype));
  if (static_cast<int64_t>(w.data.size()) != out * in * esize)
    return InvalidArgument(name + ": data size does not match its shape");
  if (format == MoeWeightFormat::kFp8PerChannel && static_cast<int64_t>(w.scale.size()) != out)
    return InvalidArgument(name + ": expected " + std::to_string(out) + " per-channel scales");
  if (format == MoeWeightFormat::kFp8Block &&
      static_cast<int64_t>(w.scale.size()) != ((out + 127) / 128) * ((in + 127) / 128))
    return InvalidArgument(name + ": block scale count does not match its shape");
  if (!w.bias.empty()) return Unimplemented(name + ": expert biases are not supported yet");
  return Status::Ok();
}

}  // namespace

MoeShape MoeShapeFromConfig(const engine::ModelConfig& config, int inter_local) {
  MoeShape s;
  s.num_experts = config.n_routed_experts;
  s.hidden = static_cast<int>(config.hidden_size);
  s.inter = inter_local;
  s.top_k = config.num_experts_per_tok;
  s.n_group = std::max(1, config.n_group);
  s.topk_group = std::max(1, config.topk_group);
  s.norm_topk_prob = config.norm_topk_prob;
  s.softmax_scoring = config.router_scoring == engine::RouterScoring::kSoftmax;
  s.routed_scaling_factor = static_cast<float>(config.routed_scaling_factor);
  return s;
}

namespace {

// Expert `x` into slot `e` of `p` (rows interleaved, scales in the matching order).
Status PackExpert(const engine::ExpertWeights& x, const std::string& name, int64_t e,
                  PackedMoeLayer& p) {
  const int64_t h = p.shape.hidden;
  const int64_t im = p.shape.inter;
  const MoeWeightFormat format = p.format;
  SPARK_RETURN_IF_ERROR(CheckWeight(x.gate, name + ".gate_proj", im, h, format));
  SPARK_RETURN_IF_ERROR(CheckWeight(x.up, name + ".up_proj", im, h, format));
  SPARK_RETURN_IF_ERROR(CheckWeight(x.down, name + ".down_proj", h, im, format));
  const int64_t esize = format == MoeWeightFormat::kBf16 ? 2 : 1;
  std::byte* w13 = p.w13.data() + e * 2 * im * h * esize;
  for (int64_t i = 0; i < im; ++i) {
    CopyRow(x.gate, i, w13 + (2 * i) * h * esize);
    CopyRow(x.up, i, w13 + (2 * i + 1) * h * esize);
  }
  std::byte* w2 = p.w2.data() + e * h * im * esize;
  for (int64_t r = 0; r < h; ++r) CopyRow(x.down, r, w2 + r * im * esize);
  if (format == MoeWeightFormat::kFp8PerChannel) {
    for (int64_t i = 0; i < im; ++i) {
      p.w13_scale[e * 2 * im + 2 * i] = x.gate.scale[i];
      p.w13_scale[e * 2 * im + 2 * i + 1] = x.up.scale[i];
    }
    std::copy(x.down.scale.begin(), x.down.scale.end(), p.w2_scale.begin() + e * h);
  } else if (format == MoeWeightFormat::kFp8Block) {
    const int64_t half = (im / 128) * (h / 128);
    std::copy(x.gate.scale.begin(), x.gate.scale.end(), p.w13_scale.begin() + e * 2 * half);
    std::copy(x.up.scale.begin(), x.up.scale.end(), p.w13_scale.begin() + e * 2 * half + half);
    std::copy(x.down.scale.begin(), x.down.scale.end(), p.w2_scale.begin() + e * half);
  }
  return Status::Ok();
}

}  // namespace

int FusedSharedExperts(const engine::ModelConfig& config, bool fuse) {
  return fuse && config.n_shared_experts == 1 ? 1 : 0;
}

bool CanFuseSharedExpert(const engine::LayerWeights& layer) {
  if (!layer.is_moe || !layer.has_shared_expert || layer.experts.empty()) return false;
  const engine::ExpertWeights& routed = layer.experts[0];
  const engine::ExpertWeights& shared = layer.shared;
  Result<MoeWeightFormat> a = FormatOf(routed.gate, "experts.0.gate_proj");
  Result<MoeWeightFormat> b = FormatOf(shared.gate, "shared_experts.gate_proj");
  return a.ok() && b.ok() && *a == *b && shared.gate.out == routed.gate.out &&
         shared.gate.in == routed.gate.in && shared.down.out == routed.down.out &&
         shared.down.in == routed.down.in && shared.gate.dtype == routed.gate.dtype &&
         shared.gate.block_n == routed.gate.block_n && shared.gate.block_k == routed.gate.block_k;
}

Result<PackedMoeLayer> PackMoeLayer(const engine::LayerWeights& layer,
                                    const engine::ModelConfig& config, bool fuse_shared) {
  if (!layer.is_moe || layer.experts.empty())
    return InvalidArgument("PackMoeLayer: the layer has no routed experts");
  const int64_t e_count = static_cast<int64_t>(layer.experts.size());
  if (e_count != config.n_routed_experts) {
    return InvalidArgument("the layer holds " + std::to_string(e_count) +
                           " experts but the config has n_routed_experts " +
                           std::to_string(config.n_routed_experts));
  }
  const int64_t h = config.hidden_size;
  const int64_t im = layer.experts[0].gate.out;
  SPARK_ASSIGN_OR_RETURN(MoeWeightFormat format,
                         FormatOf(layer.experts[0].gate, "experts.0.gate_proj"));
  PackedMoeLayer p;
  p.shape = MoeShapeFromConfig(config, static_cast<int>(im));
  p.shape.shared_experts = fuse_shared && CanFuseSharedExpert(layer) ? 1 : 0;
  p.format = format;
  SPARK_RETURN_IF_ERROR(p.shape.Validate(format));
  if (static_cast<int64_t>(layer.router.size()) != e_count * h)
    return InvalidArgument("router weight has " + std::to_string(layer.router.size()) +
                           " values, expected " + std::to_string(e_count * h));
  if (!layer.router_bias.empty() && static_cast<int64_t>(layer.router_bias.size()) != e_count)
    return InvalidArgument("router correction bias must have one value per expert");
  p.router = layer.router;
  p.router_bias = layer.router_bias;

  const int64_t slots = p.shape.gemm_experts();
  const int64_t esize = format == MoeWeightFormat::kBf16 ? 2 : 1;
  p.w13.resize(static_cast<size_t>(slots * 2 * im * h * esize));
  p.w2.resize(static_cast<size_t>(slots * h * im * esize));
  if (format == MoeWeightFormat::kFp8PerChannel) {
    p.w13_scale.resize(slots * 2 * im);
    p.w2_scale.resize(slots * h);
  } else if (format == MoeWeightFormat::kFp8Block) {
    p.w13_scale.resize(slots * 2 * (im / 128) * (h / 128));
    p.w2_scale.resize(slots * (h / 128) * (im / 128));
  }
  for (int64_t e = 0; e < e_count; ++e) {
    SPARK_RETURN_IF_ERROR(PackExpert(layer.experts[e], "experts." + std::to_string(e), e, p));
  }
  if (p.shape.shared_experts > 0) {
    SPARK_RETURN_IF_ERROR(PackExpert(layer.shared, "shared_experts", e_count, p));
  }
  return p;
}

Result<MoeDeviceLayer> MoeDeviceLayer::Upload(const PackedMoeLayer& packed, cudaStream_t stream) {
  SPARK_RETURN_IF_ERROR(packed.shape.Validate(packed.format));
  MoeDeviceLayer d;
  d.view_.shape = packed.shape;
  d.view_.format = packed.format;
  auto upload = [&](const void* src, size_t bytes, const void** dst) -> Status {
    *dst = nullptr;
    if (bytes == 0) return Status::Ok();
    void* ptr = nullptr;
    cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err != cudaSuccess) {
      return ResourceExhausted("MoE layer upload: " + std::to_string(bytes) +
                               " bytes of GPU memory: " + cudaGetErrorString(err));
    }
    d.buffers_.push_back(ptr);
    d.bytes_ += static_cast<int64_t>(bytes);
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ptr, src, bytes, cudaMemcpyHostToDevice, stream));
    *dst = ptr;
    return Status::Ok();
  };
  const void* p = nullptr;
  SPARK_RETURN_IF_ERROR(upload(packed.router.data(), packed.router.size() * 4, &p));
  d.view_.router = static_cast<const float*>(p);
  SPARK_RETURN_IF_ERROR(upload(packed.router_bias.data(), packed.router_bias.size() * 4, &p));
  d.view_.router_bias = static_cast<const float*>(p);
  SPARK_RETURN_IF_ERROR(upload(packed.w13.data(), packed.w13.size(), &d.view_.w13));
  SPARK_RETURN_IF_ERROR(upload(packed.w2.data(), packed.w2.size(), &d.view_.w2));
  SPARK_RETURN_IF_ERROR(upload(packed.w13_scale.data(), packed.w13_scale.size() * 4, &p));
  d.view_.w13_scale = static_cast<const float*>(p);
  SPARK_RETURN_IF_ERROR(upload(packed.w2_scale.data(), packed.w2_scale.size() * 4, &p));
  d.view_.w2_scale = static_cast<const float*>(p);
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return d;
}

MoeDeviceLayer::MoeDeviceLayer(MoeDeviceLayer&& other) noexcept { *this = std::move(other); }

MoeDeviceLayer& MoeDeviceLayer::operator=(MoeDeviceLayer&& other) noexcept {
  if (this != &other) {
    Release();
    view_ = other.view_;
    buffers_ = std::move(other.buffers_);
    other.buffers_.clear();
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

MoeDeviceLayer::~MoeDeviceLayer() { Release(); }

void MoeDeviceLayer::Release() {
  for (void* p : buffers_) cudaFree(p);
  buffers_.clear();
}

}  // namespace spark::cuda
