// Packing of a layer's routed experts (engine/model/weights.h) into MoeForward's device layout
// (engine/cuda/moe.h): interleaved gate/up rows, per-expert contiguous tensors, scales in the
// matching order; and an RAII owner of the uploaded buffers.
//
// Thread safety: PackMoeLayer is a pure function; MoeDeviceLayer is not synchronised.
// Ownership: PackedMoeLayer owns host bytes; MoeDeviceLayer owns device memory and hands out a
// borrowing MoeLayerDevice view.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/cuda/moe.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace spark::cuda {

struct PackedMoeLayer {
  MoeShape shape;
  MoeWeightFormat format = MoeWeightFormat::kBf16;
  std::vector<float> router;       // [E, H]
  std::vector<float> router_bias;  // [E] or empty
  std::vector<std::byte> w13;      // [E, 2*Im, H] interleaved, BF16 or e4m3 bytes
  std::vector<std::byte> w2;       // [E, H, Im]
  std::vector<float> w13_scale;
  std::vector<float> w2_scale;
};

// The MoeShape of a MoE layer of `config` as held by a rank (Im = the experts' local rows).
MoeShape MoeShapeFromConfig(const engine::ModelConfig& config, int inter_local);

// Shared expert slots of `config`'s MoE layers when `fuse` (CudaBackendOptions::
// fuse_shared_experts) asks for them: 1 for one shared expert of the routed experts' size
// (GLM-4), else 0: the rule for shapes made from a config (generated weights, tuning, memory
// estimates); PackMoeLayer decides from the loaded weights (CanFuseSharedExpert).
int FusedSharedExperts(const engine::ModelConfig& config, bool fuse);

// Whether the layer's shared expert can ride in the grouped GEMMs as one more expert slot: it
// exists and has the routed experts' shape, dtype and scaling (GLM-4: n_shared_experts 1).
bool CanFuseSharedExpert(const engine::LayerWeights& layer);

// Packs the routed experts of `layer` (is_moe), and with `fuse_shared` its shared expert as the
// last slot where CanFuseSharedExpert (shape.shared_experts says whether it did). BF16 weights
// give kBf16; FP8 with per-channel scales kFp8PerChannel; FP8 with 128x128 blocks kFp8Block.
// F32/F16 weights are converted to BF16. Errors name the tensor and what is unsupported (e.g.
// other block sizes).
Result<PackedMoeLayer> PackMoeLayer(const engine::LayerWeights& layer,
                                    const engine::ModelConfig& config, bool fuse_shared = false);

// Device copy of a packed layer.
class MoeDeviceLayer {
 public:
  static Result<MoeDeviceLayer> Upload(const PackedMoeLayer& packed, cudaStream_t stream);
  MoeDeviceLayer() = default;
  MoeDeviceLayer(MoeDeviceLayer&& other) noexcept;
  MoeDeviceLayer& operator=(MoeDeviceLayer&& other) noexcept;
  MoeDeviceLayer(const MoeDeviceLayer&) = delete;
  MoeDeviceLayer& operator=(const MoeDeviceLayer&) = delete;
  ~MoeDeviceLayer();

  const MoeLayerDevice& view() const { return view_; }
  int64_t bytes() const { return bytes_; }

 private:
  void Release();
  MoeLayerDevice view_;
  std::vector<void*> buffers_;
  int64_t bytes_ = 0;
};

}  // namespace spark::cuda
