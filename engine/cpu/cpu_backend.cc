#include "engine/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_set>
#include <utility>

#include "common/check.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/kv_cache.h"
#include "engine/cpu/thread_pool.h"

namespace spark::engine {
namespace {

std::string Shape(int64_t out, int64_t in) {
  return "[" + std::to_string(out) + ", " + std::to_string(in) + "]";
}

const char* kMismatchHint = "; the weights do not match their config.json (reload the checkpoint)";

Status CheckLinear(const LinearWeight& w, const std::string& name, int64_t out, int64_t in) {
  if (w.out != out || w.in != in) {
    return InvalidArgument("weight " + name + " has shape " + Shape(w.out, w.in) + ", expected " +
                           Shape(out, in) + kMismatchHint);
  }
  std::string error = DescribeLinearWeightError(w);
  if (!error.empty()) return InvalidArgument("weight " + name + " " + error + kMismatchHint);
  return Status::Ok();
}

Status CheckVector(const std::vector<float>& v, const std::string& name, int64_t size) {
  if (static_cast<int64_t>(v.size()) != size) {
    return InvalidArgument("weight " + name + " has " + std::to_string(v.size()) +
                           " values, expected " + std::to_string(size) + kMismatchHint);
  }
  return Status::Ok();
}

// Shapes of an MLP (dense, expert or shared expert): gate/up [inter, H], down [H, inter].
Status CheckMlp(const ExpertWeights& w, const std::string& name, int64_t hidden) {
  const int64_t inter = w.gate.out;
  if (inter <= 0)
    return InvalidArgument("weight " + name + ".gate_proj is missing" + kMismatchHint);
  SPARK_RETURN_IF_ERROR(CheckLinear(w.gate, name + ".gate_proj", inter, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(w.up, name + ".up_proj", inter, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(w.down, name + ".down_proj", hidden, inter));
  return Status::Ok();
}

Status ValidateWeights(const ModelWeights& w, int local_q, int local_kv) {
  const ModelConfig& c = w.config;
  const int64_t hidden = c.hidden_size;
  const int64_t hd = c.head_dim;
  if (hidden <= 0 || hd <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.vocab_size <= 0) {
    return InvalidArgument(
        "model config: hidden_size, head_dim, num_attention_heads, "
        "num_key_value_heads and vocab_size must be positive");
  }
  if (w.tp_size <= 0 || w.tp_rank < 0 || w.tp_rank >= w.tp_size) {
    return InvalidArgument("weights of tp rank " + std::to_string(w.tp_rank) + " of " +
                           std::to_string(w.tp_size) + ": not a valid tensor-parallel slice");
  }
  if (c.num_attention_heads % w.tp_size != 0) {
    return InvalidArgument(std::to_string(c.num_attention_heads) +
                           " attention heads cannot be split over tp " + std::to_string(w.tp_size) +
                           "; choose a tp size dividing them");
  }
  if (local_kv <= 0 || local_q % local_kv != 0) {
    return InvalidArgument(std::to_string(local_q) + " local q heads cannot share " +
                           std::to_string(local_kv) + " local kv heads; check tp size");
  }
  const int rd =
      c.rotary_dim > 0 ? c.rotary_dim : static_cast<int>(c.head_dim * c.partial_rotary_factor);
  if (rd % 2 != 0 || rd > c.head_dim || rd < 0) {
    return InvalidArgument("rotary_dim " + std::to_string(rd) +
                           " must be even and at most head_dim " + std::to_string(c.head_dim) +
                           "; check partial_rotary_factor");
  }
  if (static_cast<int>(w.layers.size()) != c.num_hidden_layers) {
    return InvalidArgument("weights hold " + std::to_string(w.layers.size()) +
                           " layers, config num_hidden_layers is " +
                           std::to_string(c.num_hidden_layers) + kMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(CheckLinear(w.embed, "model.embed_tokens", c.vocab_size, hidden));
  SPARK_RETURN_IF_ERROR(CheckVector(w.final_norm, "model.norm", hidden));
  const int64_t vocab_per_rank = (c.vocab_size + w.tp_size - 1) / w.tp_size;
  const int64_t vocab_begin = vocab_per_rank * w.tp_rank;
  const int64_t vocab_local =
      std::max<int64_t>(0, std::min(c.vocab_size, vocab_begin + vocab_per_rank) - vocab_begin);
  if (w.vocab_begin != vocab_begin) {
    return InvalidArgument("lm_head slice of rank " + std::to_string(w.tp_rank) + " begins at " +
                           std::to_string(w.vocab_begin) + ", expected " +
                           std::to_string(vocab_begin) + kMismatchHint);
  }
  if (vocab_local > 0) {
    SPARK_RETURN_IF_ERROR(CheckLinear(w.lm_head, "lm_head", vocab_local, hidden));
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l);
    SPARK_RETURN_IF_ERROR(CheckVector(L.input_norm, p + ".input_layernorm", hidden));
    SPARK_RETURN_IF_ERROR(CheckVector(L.post_attn_norm, p + ".post_attention_layernorm", hidden));
    SPARK_RETURN_IF_ERROR(CheckLinear(L.q, p + ".self_attn.q_proj", local_q * hd, hidden));
    SPARK_RETURN_IF_ERROR(CheckLinear(L.k, p + ".self_attn.k_proj", local_kv * hd, hidden));
    SPARK_RETURN_IF_ERROR(CheckLinear(L.v, p + ".self_attn.v_proj", local_kv * hd, hidden));
    SPARK_RETURN_IF_ERROR(CheckLinear(L.o, p + ".self_attn.o_proj", hidden, local_q * hd));
    if (c.use_qk_norm) {
      SPARK_RETURN_IF_ERROR(CheckVector(L.q_norm, p + ".self_attn.q_norm", hd));
      SPARK_RETURN_IF_ERROR(CheckVector(L.k_norm, p + ".self_attn.k_norm", hd));
    }
    if (!L.is_moe) {
      SPARK_RETURN_IF_ERROR(CheckMlp(L.mlp, p + ".mlp", hidden));
      continue;
    }
    const int64_t experts = c.n_routed_experts;
    if (experts <= 0 || c.num_experts_per_tok <= 0 || c.num_experts_per_tok > experts) {
      return InvalidArgument(p + " is a MoE layer but the config has " + std::to_string(experts) +
                             " experts and num_experts_per_tok " +
                             std::to_string(c.num_experts_per_tok));
    }
    const int groups = std::max(1, c.n_group);
    if (experts % groups != 0 || c.topk_group < 1 || c.topk_group > groups) {
      return InvalidArgument("router groups: " + std::to_string(experts) + " experts, n_group " +
                             std::to_string(groups) + ", topk_group " +
                             std::to_string(c.topk_group) + " are inconsistent");
    }
    SPARK_RETURN_IF_ERROR(CheckVector(L.router, p + ".mlp.gate", experts * hidden));
    if (!L.router_bias.empty()) {
      SPARK_RETURN_IF_ERROR(
          CheckVector(L.router_bias, p + ".mlp.gate.e_score_correction_bias", experts));
    }
    if (static_cast<int64_t>(L.experts.size()) != experts) {
      return InvalidArgument(p + ".mlp holds " + std::to_string(L.experts.size()) +
                             " experts, expected " + std::to_string(experts) + kMismatchHint);
    }
    for (int64_t e = 0; e < experts; ++e) {
      SPARK_RETURN_IF_ERROR(
          CheckMlp(L.experts[e], p + ".mlp.experts." + std::to_string(e), hidden));
    }
    if (L.has_shared_expert) {
      SPARK_RETURN_IF_ERROR(CheckMlp(L.shared, p + ".mlp.shared_experts", hidden));
    }
  }
  return Status::Ok();
}

}  // namespace

struct CpuBackend::Scratch {
  struct Chunk {
    uint64_t seq = 0;
    int64_t start = 0;
    int64_t n = 0;
    int64_t offset = 0;  // first token row in the batch
    std::vector<const float*> k_blocks, v_blocks;
    PagedKvView view;
  };
  std::vector<Chunk> chunks;
  std::vector<int64_t> positions;  // per token
  std::vector<int32_t> chunk_of;   // per token
  std::vector<int32_t> ids;
  std::vector<float> x, h, q, k, v, attn, o, mlp_out;
  std::vector<float> gate, up, shared_out;
  std::vector<float> router_logits, expert_in, expert_out;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_weights;
  std::vector<std::vector<std::pair<int32_t, float>>> expert_tokens;
};

CpuBackend::CpuBackend(ModelWeights weights, Communicator* comm, const CpuBackendOptions& options)
    : weights_(std::move(weights)),
      comm_(comm),
      options_(options),
      scratch_(std::make_unique<Scratch>()) {}

CpuBackend::~CpuBackend() = default;

Result<std::unique_ptr<CpuBackend>> CpuBackend::Create(ModelWeights weights, Communicator* comm,
                                                       const CpuBackendOptions& options) {
  if (weights.tp_size > 1 && comm == nullptr) {
    return InvalidArgument("weights are rank " + std::to_string(weights.tp_rank) + " of tp " +
                           std::to_string(weights.tp_size) +
                           " but no communicator was given; pass the tensor-parallel group");
  }
  if (comm != nullptr &&
      (comm->world_size() != weights.tp_size || comm->rank() != weights.tp_rank)) {
    return InvalidArgument("communicator is rank " + std::to_string(comm->rank()) + " of " +
                           std::to_string(comm->world_size()) + " but the weights are rank " +
                           std::to_string(weights.tp_rank) + " of " +
                           std::to_string(weights.tp_size) +
                           "; load the weights with the communicator's rank and size");
  }
  if (options.kv_block_tokens <= 0) {
    return InvalidArgument("kv_block_tokens " + std::to_string(options.kv_block_tokens) +
                           " must be positive (e.g. 16)");
  }
  if (weights.tp_size <= 0 || weights.config.num_attention_heads <= 0) {
    return InvalidArgument("weights: tp_size and num_attention_heads must be positive");
  }
  const int local_q = weights.local_q_heads();
  const int local_kv = weights.config.head_dim > 0
                           ? static_cast<int>(weights.layers.empty() ? weights.local_kv_heads()
                                                                     : weights.layers[0].k.out /
                                                                           weights.config.head_dim)
                           : 0;
  if (local_kv != weights.local_kv_heads()) {
    return InvalidArgument("k_proj of layer 0 holds " + std::to_string(local_kv) +
                           " kv heads, expected " + std::to_string(weights.local_kv_heads()) +
                           kMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(ValidateWeights(weights, local_q, local_kv));

  std::unique_ptr<CpuBackend> backend(new CpuBackend(std::move(weights), comm, options));
  backend->local_q_heads_ = local_q;
  backend->local_kv_heads_ = local_kv;
  backend->rope_ = std::make_unique<RotaryEmbedding>(backend->weights_.config);
  backend->pool_ = std::make_unique<ThreadPool>(options.threads);
  KvCacheShape shape;
  shape.num_layers = backend->weights_.config.num_hidden_layers;
  shape.kv_heads = local_kv;
  shape.head_dim = backend->weights_.config.head_dim;
  shape.block_tokens = options.kv_block_tokens;
  SPARK_ASSIGN_OR_RETURN(backend->kv_, CpuKvCache::Create(shape, options.kv_cache_bytes));
  return backend;
}

const ModelConfig& CpuBackend::config() const { return weights_.config; }

int CpuBackend::threads() const { return pool_->size(); }

void CpuBackend::Release(uint64_t seq_id) { kv_->Release(seq_id); }

int64_t CpuBackend::FreeKvTokens() const { return kv_->FreeTokens(); }

int64_t CpuBackend::CachedTokens(uint64_t seq_id) const { return kv_->Length(seq_id); }

Status CpuBackend::TruncateSequence(uint64_t seq_id, int64_t length) {
  return kv_->Truncate(seq_id, length);
}

int64_t CpuBackend::KvCapacityTokens() const { return kv_->CapacityTokens(); }

namespace {

// (silu(x Wg^T) * (x Wu^T)) Wd^T for n rows; gate/up are scratch.
void RunMlp(const ExpertWeights& w, const float* x, int64_t n, std::vector<float>* gate,
            std::vector<float>* up, float* out, ThreadPool* pool) {
  const int64_t inter = w.gate.out;
  gate->resize(static_cast<size_t>(n * inter));
  up->resize(static_cast<size_t>(n * inter));
  Linear(x, n, w.gate, gate->data(), pool);
  Linear(x, n, w.up, up->data(), pool);
  SiluMul(gate->data(), up->data(), n * inter, gate->data());
  Linear(gate->data(), n, w.down, out, pool);
}

}  // namespace

Result<ForwardOutput> CpuBackend::Forward(const ForwardBatch& batch) {
  const ModelConfig& c = weights_.config;
  const int64_t hidden = c.hidden_size;
  const int hd = c.head_dim;
  const int lq = local_q_heads_;
  const int lkv = local_kv_heads_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Scratch& s = *scratch_;

  // Validate the whole batch before touching the cache.
  std::unordered_set<uint64_t> seen;
  int64_t total = 0;
  int64_t blocks = 0;
  int64_t rows = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const SequenceChunk& ch = batch.chunks[i];
    const std::string where =
        "chunk " + std::to_string(i) + " (sequence " + std::to_string(ch.seq_id) + ")";
    if (ch.tokens.empty()) return InvalidArgument(where + " has no tokens; send >= 1 token");
    if (!seen.insert(ch.seq_id).second) {
      return InvalidArgument(where + " appears twice in one batch; merge its chunks");
    }
    const int64_t cached = kv_->Length(ch.seq_id);
    if (ch.start_pos != cached) {
      return InvalidArgument(where + " starts at position " + std::to_string(ch.start_pos) +
                             " but " + std::to_string(cached) +
                             " tokens are cached; start_pos must equal the cached length");
    }
    for (int32_t id : ch.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return InvalidArgument(where + " has token id " + std::to_string(id) +
                               " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
    const int64_t n = static_cast<int64_t>(ch.tokens.size());
    blocks += kv_->BlocksToGrow(ch.seq_id, ch.start_pos + n);
    total += n;
    rows += ch.all_logits ? n : 1;
  }
  if (blocks > kv_->free_blocks()) {
    return ResourceExhausted("KV cache full: the batch needs " + std::to_string(blocks) +
                             " blocks, " + std::to_string(kv_->free_blocks()) +
                             " free; preempt a sequence or raise kv_cache_bytes");
  }
  ForwardOutput output;
  output.vocab_size = c.vocab_size;
  if (batch.chunks.empty()) return output;

  s.chunks.resize(batch.chunks.size());
  s.positions.resize(total);
  s.chunk_of.resize(total);
  s.ids.resize(total);
  int64_t offset = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const SequenceChunk& ch = batch.chunks[i];
    const int64_t n = static_cast<int64_t>(ch.tokens.size());
    SPARK_CHECK(kv_->Grow(ch.seq_id, ch.start_pos + n).ok());
    Scratch::Chunk& sc = s.chunks[i];
    sc.seq = ch.seq_id;
    sc.start = ch.start_pos;
    sc.n = n;
    sc.offset = offset;
    for (int64_t t = 0; t < n; ++t) {
      s.positions[offset + t] = ch.start_pos + t;
      s.chunk_of[offset + t] = static_cast<int32_t>(i);
      s.ids[offset + t] = ch.tokens[t];
    }
    offset += n;
  }

  const int64_t q_row = int64_t{lq} * hd;
  const int64_t kv_row = int64_t{lkv} * hd;
  s.x.resize(total * hidden);
  s.h.resize(total * hidden);
  s.q.resize(total * q_row);
  s.k.resize(total * kv_row);
  s.v.resize(total * kv_row);
  s.attn.resize(total * q_row);
  s.o.resize(total * hidden);
  s.mlp_out.resize(total * hidden);
  EmbeddingLookup(weights_.embed, s.ids.data(), total, s.x.data());

  const RotaryEmbedding& rope = *rope_;
  const float scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
  const RouterParams router = RouterParams::FromConfig(c);
  ThreadPool* pool = pool_.get();

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = weights_.layers[l];
    // Attention block.
    RmsNorm(s.x.data(), total, hidden, L.input_norm.data(), eps, s.h.data());
    Linear(s.h.data(), total, L.q, s.q.data(), pool);
    Linear(s.h.data(), total, L.k, s.k.data(), pool);
    Linear(s.h.data(), total, L.v, s.v.data(), pool);
    pool->ParallelFor(total, 8, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        float* qt = s.q.data() + t * q_row;
        float* kt = s.k.data() + t * kv_row;
        if (c.use_qk_norm) {
          RmsNorm(qt, lq, hd, L.q_norm.data(), eps, qt);
          RmsNorm(kt, lkv, hd, L.k_norm.data(), eps, kt);
        }
        rope.Apply(qt, lq, s.positions[t]);
        rope.Apply(kt, lkv, s.positions[t]);
        const Scratch::Chunk& sc = s.chunks[s.chunk_of[t]];
        std::memcpy(kv_->KeySlot(l, sc.seq, s.positions[t]), kt, kv_row * sizeof(float));
        std::memcpy(kv_->ValueSlot(l, sc.seq, s.positions[t]), s.v.data() + t * kv_row,
                    kv_row * sizeof(float));
      }
    });
    for (Scratch::Chunk& sc : s.chunks) {
      sc.view = kv_->View(l, sc.seq, &sc.k_blocks, &sc.v_blocks);
    }
    const int group = lq / lkv;
    pool->ParallelFor(total * lq, 4, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> scores;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t t = job / lq;
        const int head = static_cast<int>(job % lq);
        const Scratch::Chunk& sc = s.chunks[s.chunk_of[t]];
        const int64_t off = t * q_row + int64_t{head} * hd;
        AttendHead(s.q.data() + off, s.positions[t], head / group, sc.view, scale, &scores,
                   s.attn.data() + off);
      }
    });
    Linear(s.attn.data(), total, L.o, s.o.data(), pool);
    if (comm_ != nullptr && weights_.tp_size > 1) {
      Status st = comm_->AllReduceSum(s.o.data(), s.o.size());
      if (!st.ok()) return st.WithContext("all-reduce after o_proj of layer " + std::to_string(l));
    }
    AddInPlace(s.x.data(), s.o.data(), total * hidden);

    // MLP / MoE block.
    RmsNorm(s.x.data(), total, hidden, L.post_attn_norm.data(), eps, s.h.data());
    if (!L.is_moe) {
      RunMlp(L.mlp, s.h.data(), total, &s.gate, &s.up, s.mlp_out.data(), pool);
    } else {
      const int e_count = router.num_experts;
      const int k = router.top_k;
      s.router_logits.resize(total * e_count);
      LinearF32(s.h.data(), total, L.router.data(), e_count, hidden, s.router_logits.data(), pool);
      s.topk_ids.resize(total * k);
      s.topk_weights.resize(total * k);
      const float* bias = L.router_bias.empty() ? nullptr : L.router_bias.data();
      for (int64_t t = 0; t < total; ++t) {
        RouteToken(s.router_logits.data() + t * e_count, bias, router, s.topk_ids.data() + t * k,
                   s.topk_weights.data() + t * k);
      }
      s.expert_tokens.resize(e_count);
      for (auto& list : s.expert_tokens) list.clear();
      for (int64_t t = 0; t < total; ++t) {
        for (int j = 0; j < k; ++j) {
          s.expert_tokens[s.topk_ids[t * k + j]].emplace_back(static_cast<int32_t>(t),
                                                              s.topk_weights[t * k + j]);
        }
      }
      std::fill(s.mlp_out.begin(), s.mlp_out.end(), 0.0f);
      // Experts in ascending index order, as transformers accumulates them.
      for (int e = 0; e < e_count; ++e) {
        const auto& list = s.expert_tokens[e];
        if (list.empty()) continue;
        const int64_t n = static_cast<int64_t>(list.size());
        s.expert_in.resize(n * hidden);
        s.expert_out.resize(n * hidden);
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(s.expert_in.data() + i * hidden, s.h.data() + list[i].first * hidden,
                      hidden * sizeof(float));
        }
        RunMlp(L.experts[e], s.expert_in.data(), n, &s.gate, &s.up, s.expert_out.data(), pool);
        for (int64_t i = 0; i < n; ++i) {
          float* dst = s.mlp_out.data() + list[i].first * hidden;
          const float* src = s.expert_out.data() + i * hidden;
          const float w = list[i].second;
          for (int64_t d = 0; d < hidden; ++d) dst[d] += src[d] * w;
        }
      }
      if (L.has_shared_expert) {
        s.shared_out.resize(total * hidden);
        RunMlp(L.shared, s.h.data(), total, &s.gate, &s.up, s.shared_out.data(), pool);
        AddInPlace(s.mlp_out.data(), s.shared_out.data(), total * hidden);
      }
    }
    if (comm_ != nullptr && weights_.tp_size > 1) {
      Status st = comm_->AllReduceSum(s.mlp_out.data(), s.mlp_out.size());
      if (!st.ok()) return st.WithContext("all-reduce after the MLP of layer " + std::to_string(l));
    }
    AddInPlace(s.x.data(), s.mlp_out.data(), total * hidden);
  }

  // Final norm and lm_head on the requested rows only.
  output.row_begin.resize(batch.chunks.size());
  std::vector<float> final_h(rows * hidden);
  int64_t r = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const Scratch::Chunk& sc = s.chunks[i];
    output.row_begin[i] = r;
    const int64_t first = batch.chunks[i].all_logits ? 0 : sc.n - 1;
    for (int64_t t = first; t < sc.n; ++t, ++r) {
      std::memcpy(final_h.data() + r * hidden, s.x.data() + (sc.offset + t) * hidden,
                  hidden * sizeof(float));
    }
  }
  RmsNorm(final_h.data(), rows, hidden, weights_.final_norm.data(), eps, final_h.data());
  const int64_t vocab = c.vocab_size;
  const int64_t local_vocab = weights_.lm_head.out;
  output.logits.resize(rows * vocab);
  if (comm_ == nullptr || weights_.tp_size == 1) {
    Linear(final_h.data(), rows, weights_.lm_head, output.logits.data(), pool);
    return output;
  }
  const int tp = weights_.tp_size;
  const int64_t padded = (vocab + tp - 1) / tp;
  std::vector<float> local(rows * padded, 0.0f);
  if (local_vocab > 0) {
    std::vector<float> tmp(rows * local_vocab);
    Linear(final_h.data(), rows, weights_.lm_head, tmp.data(), pool);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(local.data() + i * padded, tmp.data() + i * local_vocab,
                  local_vocab * sizeof(float));
    }
  }
  std::vector<float> gathered(static_cast<size_t>(tp) * rows * padded);
  Status st = comm_->AllGather(local.data(), local.size(), gathered.data());
  if (!st.ok()) return st.WithContext("all-gather of the logits");
  for (int rank = 0; rank < tp; ++rank) {
    const int64_t begin = rank * padded;
    const int64_t count = std::max<int64_t>(0, std::min(vocab, begin + padded) - begin);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(output.logits.data() + i * vocab + begin,
                  gathered.data() + (int64_t{rank} * rows + i) * padded, count * sizeof(float));
    }
  }
  return output;
}

}  // namespace spark::engine
