// FP8 (E4M3) weight quantisation, bit-identical to the PyTorch reference:
//
//   per-channel: scale[n] = max_k |w[n,k]| / 448.0f   (float32; 1.0f when the row is all zero)
//                q[n,k]   = e4m3_rne(clamp(w[n,k] / scale[n], -448, 448))
//   block:       the same with one scale per block_n x block_k tile (edge tiles partial),
//                scale shape [ceil(N/block_n), ceil(K/block_k)]
//
// where w is the float32 value of the stored weight (BF16/F16/F32) and the division is a
// float32 division (torch: `(w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`).
// Dequantisation is float(q) * scale.
//
// QuantizeCheckpoint rewrites a BF16/F16/F32 checkpoint directory as FP8: every Linear weight of
// the decoder layers (q/k/v/o_proj, dense, expert and shared-expert gate/up/down_proj, the MTP
// decoder block) becomes F8_E4M3 plus an F32 scale tensor; lm_head, the router (mlp.gate),
// embeddings, norms, biases, e_score_correction_bias and eh_proj are copied unchanged. config.json
// gets a `quantization_config` in the format of shared/docs/glm4-moe.md §1.2, and the tokenizer /
// generation files are copied.
//
// Thread safety: pure functions; QuantizeCheckpoint writes only under out_dir.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace spark::engine {

enum class Fp8Scheme { kPerChannel, kBlock };

enum class Fp8Format {
  kCompressedTensors,  // quant_method "compressed-tensors", scale tensors `*.weight_scale`
  kDeepSeek,           // quant_method "fp8" + weight_block_size, `*.weight_scale_inv` (block only)
};

struct Fp8Tensor {
  int64_t rows = 0;                  // N (out features)
  int64_t cols = 0;                  // K (in features)
  std::vector<uint8_t> q;            // [rows, cols] E4M3 codes
  std::vector<float> scale;          // per-channel: [rows]; block: [ceil(N/bn) * ceil(K/bk)]
  std::vector<int64_t> scale_shape;  // [rows, 1] or [ceil(N/bn), ceil(K/bk)]
};

// w is row-major [rows, cols].
Fp8Tensor QuantizeFp8PerChannel(std::span<const float> w, int64_t rows, int64_t cols);
Fp8Tensor QuantizeFp8Block(std::span<const float> w, int64_t rows, int64_t cols, int block_n = 128,
                           int block_k = 128);
// Dequantised element (row, col) of `t`: F8E4M3ToFloat(q) * scale.
float DequantizeFp8(const Fp8Tensor& t, int64_t row, int64_t col, int block_n = 128,
                    int block_k = 128);

// True for tensor names QuantizeCheckpoint converts ("model.layers.3.self_attn.q_proj.weight",
// "model.layers.5.mlp.experts.17.down_proj.weight", ...); false for lm_head, mlp.gate, embeddings,
// norms, biases and eh_proj.
bool IsQuantizableWeightName(std::string_view tensor_name);

struct QuantizeOptions {
  Fp8Scheme scheme = Fp8Scheme::kPerChannel;
  Fp8Format format = Fp8Format::kCompressedTensors;
  int block_size = 128;  // block scheme: block_n = block_k
};

// Quantises the checkpoint in in_dir into out_dir (created if needed; files there are
// overwritten). The output has the same safetensors files as the input (one shard in memory at a
// time) and an index.json when the input was sharded. Errors: missing/unsupported input,
// already-quantised input, deepseek format with the per-channel scheme.
Status QuantizeCheckpoint(const std::filesystem::path& in_dir, const std::filesystem::path& out_dir,
                          const QuantizeOptions& options);

}  // namespace spark::engine
