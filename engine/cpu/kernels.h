// CPU kernels of the forward pass: fp32 activations, weights read in their stored dtype.
//
// Numerics follow transformers in float32 (shared/docs/glm4-moe.md §2): weights are dequantised
// exactly as LinearWeight::At does (float(q) * scale, fp32 product) one tile at a time and every
// dot product accumulates in fp32 with a fixed lane order that depends only on the reduction
// length, so a row's result is the same whatever the batch size, tiling or thread count.
//
// Thread safety: the functions are reentrant; those taking a ThreadPool fan out over it (the
// pool may be nullptr to run inline). Ownership: all pointers are borrowed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace spark::engine {

class ThreadPool;

// ---- Weights -----------------------------------------------------------------------------

// Exact element conversions (bit manipulation / table, no rounding).
float HalfToFloat(uint16_t bits);
float Fp8E4M3ToFloatExact(uint8_t bits);

// Dequantises rows [row_begin, row_begin + rows) and columns [col_begin, col_begin + cols) of
// `w` into out[r * ld + c] (exactly LinearWeight::At for every element).
void DequantizeTile(const LinearWeight& w, int64_t row_begin, int64_t rows, int64_t col_begin,
                    int64_t cols, float* out, int64_t ld);

// ---- Dense algebra -----------------------------------------------------------------------

// y[m, w.out] = x[m, w.in] · W^T (+ bias). x and y must not overlap.
void Linear(const float* x, int64_t m, const LinearWeight& w, float* y, ThreadPool* pool);

// y[m, n] = x[m, k] · W^T for a row-major fp32 W[n, k] (the router).
void LinearF32(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y,
               ThreadPool* pool);

// fp32 dot product with the kernels' fixed accumulation order.
float Dot(const float* a, const float* b, int64_t n);

// HF RMSNorm over the last dimension: y = weight * (x * rsqrt(mean(x^2) + eps)) for `rows` rows
// of `dim`. In place allowed (y == x).
void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* weight, float eps, float* y);

// y[i] += x[i].
void AddInPlace(float* y, const float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// out[t, :] = table row ids[t] (dequantised). ids must be in [0, table.out).
void EmbeddingLookup(const LinearWeight& table, const int32_t* ids, int64_t n, float* out);

// ---- Rotary position embedding -------------------------------------------------------------

// Partial NeoX (rotate_half) RoPE over the first rotary_dim dims of each head: pairs
// (i, i + rd/2), inv_freq[j] = 1 / theta^(2j/rd) in fp32, Llama-3 frequency scaling when the
// config has it. Dims rd..hd pass through.
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);

  int head_dim() const { return head_dim_; }
  int rotary_dim() const { return rotary_dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // Rotates `heads` vectors x[h * head_dim .. +head_dim) in place for position `pos`.
  void Apply(float* x, int heads, int64_t pos) const;
  // cos/sin tables for one position: cos_out[j], sin_out[j] for j < rotary_dim / 2.
  void CosSin(int64_t pos, float* cos_out, float* sin_out) const;

 private:
  int head_dim_ = 0;
  int rotary_dim_ = 0;
  std::vector<float> inv_freq_;  // [rotary_dim / 2]
};

// ---- Attention ---------------------------------------------------------------------------

// A sequence's cache as fixed-size blocks; block b holds tokens [b*block_tokens, ...) as
// [block_tokens][kv_heads][head_dim] floats for K and for V.
struct PagedKvView {
  const float* const* k_blocks = nullptr;
  const float* const* v_blocks = nullptr;
  int block_tokens = 0;
  int kv_heads = 0;
  int head_dim = 0;
};

// Causal GQA attention of `n` query tokens at positions start_pos .. start_pos + n - 1 over the
// cache (which must already hold positions 0 .. start_pos + n - 1). q and out: [n, q_heads *
// head_dim]; query head h reads kv head h / (q_heads / kv_heads). scores = (q·k) * scale,
// softmax in fp32, out = Σ p v.
void PagedAttention(const float* q, int64_t n, int64_t start_pos, int q_heads,
                    const PagedKvView& kv, float scale, float* out, ThreadPool* pool);

// One query head of one token at position `pos` (attends to cache positions 0..pos) over kv head
// `kv_head`: q and out are head_dim floats. `scores` is scratch, resized as needed.
// Equals AttendHeadSlots(q, pos + 1, nullptr, 0, ...).
void AttendHead(const float* q, int64_t pos, int kv_head, const PagedKvView& kv, float scale,
                std::vector<float>* scores, float* out);

// One query head over an ordered set of cache slots: 0 .. prefix_len - 1, then tail[0 .. n_tail)
// (tree attention: the cached prefix, then the token's ancestors and itself). Scores, softmax and
// the weighted sum visit the slots in that order, so a tree token whose tail is the slots of a
// chain gives exactly the result of AttendHead over that chain.
void AttendHeadSlots(const float* q, int64_t prefix_len, const int64_t* tail, int64_t n_tail,
                     int kv_head, const PagedKvView& kv, float scale, std::vector<float>* scores,
                     float* out);

// ---- Router ------------------------------------------------------------------------------

struct RouterParams {
  RouterScoring scoring = RouterScoring::kSigmoid;
  int num_experts = 0;
  int top_k = 0;
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;

  static RouterParams FromConfig(const ModelConfig& config);
};

// Routes one token from its fp32 router logits [num_experts]: scores = sigmoid (or softmax);
// selection on scores + correction_bias (may be nullptr) with group-limited top-k (group score =
// sum of its top-2; non-kept groups masked to 0); weights from the unbiased scores, renormalised
// (sum + 1e-20) when norm_topk_prob, times routed_scaling_factor. Ties: the lower index wins.
// Writes top_k (expert, weight) pairs sorted by ascending expert index.
void RouteToken(const float* logits, const float* correction_bias, const RouterParams& params,
                int32_t* experts, float* weights);

}  // namespace spark::engine
