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
#include "engine/model/weight_checks.h"

namespace spark::engine {

// A chunk of either kind of batch (SequenceChunk or MtpChunk), as Plan and Finish see it.
struct CpuBackend::ChunkSpec {
  uint64_t seq_id = 0;
  int64_t start_pos = 0;
  const std::vector<int32_t>* tokens = nullptr;
  const std::vector<int32_t>* tree_parents = nullptr;
  bool all_logits = false;
  bool return_hidden = false;

  template <typename Chunk>
  static ChunkSpec Of(const Chunk& ch) {
    return {ch.seq_id, ch.start_pos, &ch.tokens, &ch.tree_parents, ch.all_logits, ch.return_hidden};
  }
};

struct CpuBackend::Scratch {
  struct Chunk {
    uint64_t seq = 0;
    int64_t n = 0;
    std::vector<const float*> k_blocks, v_blocks;
    PagedKvView view;
  };
  std::vector<Chunk> chunks;
  // Per token of the batch.
  std::vector<int64_t> positions;  // RoPE position: start_pos + depth
  std::vector<int64_t> slots;      // cache slot: start_pos + index in the chunk
  std::vector<int32_t> chunk_of;
  std::vector<int32_t> ids;
  // Attention keys of a token: slots [0, attend_prefix), then tail[tail_begin, +tail_len).
  std::vector<int64_t> attend_prefix, tail_begin, tail_len;
  std::vector<int64_t> tail;
  std::vector<int32_t> depth;
  std::vector<float> x, h, q, k, v, attn, o, mlp_out;
  std::vector<float> gate, up, shared_out;
  std::vector<float> router_logits, expert_in, expert_out;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_weights;
  std::vector<std::vector<std::pair<int32_t, float>>> expert_tokens;
  std::vector<float> mtp_in;  // [tokens, 2H]: enorm(embedding), hnorm(hidden)
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
                           kWeightMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(ValidateModelWeights(weights, local_q, local_kv));

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
  int64_t target_bytes = options.kv_cache_bytes;
  if (!backend->weights_.mtp.empty()) {
    // Split the budget so that both caches hold the same number of blocks: a block of the target
    // cache holds num_layers layers, one of the MTP cache one layer.
    KvCacheShape mtp_shape = shape;
    mtp_shape.num_layers = 1;
    const int64_t layer_block_bytes =
        int64_t{2} * shape.block_tokens * shape.kv_heads * shape.head_dim * int64_t{sizeof(float)};
    const int64_t blocks = options.kv_cache_bytes / (layer_block_bytes * (shape.num_layers + 1));
    target_bytes = blocks * layer_block_bytes * shape.num_layers;
    if (blocks <= 0) {
      return InvalidArgument("kv_cache_bytes " + std::to_string(options.kv_cache_bytes) +
                             " cannot hold one KV block of the target and MTP caches (" +
                             std::to_string(layer_block_bytes * (shape.num_layers + 1)) +
                             " bytes); raise kv_cache_bytes or lower kv_block_tokens");
    }
    SPARK_ASSIGN_OR_RETURN(backend->mtp_kv_,
                           CpuKvCache::Create(mtp_shape, blocks * layer_block_bytes));
  }
  SPARK_ASSIGN_OR_RETURN(backend->kv_, CpuKvCache::Create(shape, target_bytes));
  return backend;
}

const ModelConfig& CpuBackend::config() const { return weights_.config; }

int CpuBackend::threads() const { return pool_->size(); }

void CpuBackend::Release(uint64_t seq_id) {
  kv_->Release(seq_id);
  if (mtp_kv_ != nullptr) mtp_kv_->Release(seq_id);
}

int64_t CpuBackend::FreeKvTokens() const {
  const int64_t free = kv_->FreeTokens();
  return mtp_kv_ == nullptr ? free : std::min(free, mtp_kv_->FreeTokens());
}

bool CpuBackend::SupportsSpeculation() const { return mtp_kv_ != nullptr; }

CpuKvCache* CpuBackend::Cache(CacheKind kind) const {
  return kind == CacheKind::kTarget ? kv_.get() : mtp_kv_.get();
}

int64_t CpuBackend::CachedTokens(uint64_t seq_id, CacheKind kind) const {
  const CpuKvCache* cache = Cache(kind);
  return cache == nullptr ? 0 : cache->Length(seq_id);
}

int64_t CpuBackend::CachedTokens(uint64_t seq_id) const { return kv_->Length(seq_id); }

Status CpuBackend::KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                                    const std::vector<int32_t>& keep) {
  CpuKvCache* cache = Cache(kind);
  if (cache == nullptr) {
    return Unimplemented("this model has no MTP layer, so there is no MTP cache to compact");
  }
  return cache->KeepEntries(seq_id, prefix_len, keep);
}

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

Result<int64_t> CpuBackend::Plan(const std::vector<ChunkSpec>& chunks, CpuKvCache* kv,
                                 const char* cache_name) {
  const ModelConfig& c = weights_.config;
  Scratch& s = *scratch_;
  // Validate the whole batch before touching the cache.
  std::unordered_set<uint64_t> seen;
  int64_t total = 0;
  int64_t blocks = 0;
  int64_t rows = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ChunkSpec& ch = chunks[i];
    const std::vector<int32_t>& tokens = *ch.tokens;
    const std::string where =
        "chunk " + std::to_string(i) + " (sequence " + std::to_string(ch.seq_id) + ")";
    if (tokens.empty()) return InvalidArgument(where + " has no tokens; send >= 1 token");
    if (!seen.insert(ch.seq_id).second) {
      return InvalidArgument(where + " appears twice in one batch; merge its chunks");
    }
    const int64_t cached = kv->Length(ch.seq_id);
    if (ch.start_pos != cached) {
      return InvalidArgument(where + " starts at position " + std::to_string(ch.start_pos) +
                             " but " + std::to_string(cached) + " tokens are cached in the " +
                             cache_name + " cache; start_pos must equal the cached length");
    }
    for (int32_t id : tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return InvalidArgument(where + " has token id " + std::to_string(id) +
                               " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
    const int64_t n = static_cast<int64_t>(tokens.size());
    const std::vector<int32_t>& parents = *ch.tree_parents;
    if (!parents.empty()) {
      if (static_cast<int64_t>(parents.size()) != n) {
        return InvalidArgument(where + " has " + std::to_string(parents.size()) +
                               " tree parents for " + std::to_string(n) +
                               " tokens; send one parent per token (or none for a chain)");
      }
      for (int64_t t = 0; t < n; ++t) {
        if (parents[t] < -1 || parents[t] >= t) {
          return InvalidArgument(where + " token " + std::to_string(t) + " has tree parent " +
                                 std::to_string(parents[t]) +
                                 "; a parent must precede its child (-1: the cached prefix)");
        }
      }
    }
    blocks += kv->BlocksToGrow(ch.seq_id, ch.start_pos + n);
    total += n;
    rows += ch.all_logits ? n : 1;
  }
  if (blocks > kv->free_blocks()) {
    return ResourceExhausted(std::string("KV cache full: the batch needs ") +
                             std::to_string(blocks) + " blocks of the " + cache_name + " cache, " +
                             std::to_string(kv->free_blocks()) +
                             " free; preempt a sequence or raise kv_cache_bytes");
  }

  s.chunks.resize(chunks.size());
  s.positions.resize(total);
  s.slots.resize(total);
  s.chunk_of.resize(total);
  s.ids.resize(total);
  s.attend_prefix.resize(total);
  s.tail_begin.resize(total);
  s.tail_len.resize(total);
  s.depth.resize(total);
  s.tail.clear();
  int64_t offset = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ChunkSpec& ch = chunks[i];
    const std::vector<int32_t>& parents = *ch.tree_parents;
    const int64_t n = static_cast<int64_t>(ch.tokens->size());
    SPARK_CHECK(kv->Grow(ch.seq_id, ch.start_pos + n).ok());
    Scratch::Chunk& sc = s.chunks[i];
    sc.seq = ch.seq_id;
    sc.n = n;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = offset + t;
      s.slots[row] = ch.start_pos + t;
      s.chunk_of[row] = static_cast<int32_t>(i);
      s.ids[row] = (*ch.tokens)[t];
      if (parents.empty()) {
        s.positions[row] = ch.start_pos + t;
        s.attend_prefix[row] = ch.start_pos + t + 1;
        s.tail_begin[row] = 0;
        s.tail_len[row] = 0;
        continue;
      }
      const int32_t parent = parents[t];
      s.depth[row] = parent < 0 ? 0 : s.depth[offset + parent] + 1;
      s.positions[row] = ch.start_pos + s.depth[row];
      s.attend_prefix[row] = ch.start_pos;
      s.tail_begin[row] = static_cast<int64_t>(s.tail.size());
      s.tail_len[row] = s.depth[row] + 1;
      s.tail.resize(s.tail.size() + static_cast<size_t>(s.depth[row] + 1));
      // Ancestors root first, then the token itself.
      int64_t node = t;
      for (int64_t j = s.depth[row]; j >= 0; --j) {
        s.tail[s.tail_begin[row] + j] = ch.start_pos + node;
        node = parents[node];
      }
    }
    offset += n;
  }
  return rows;
}

Status CpuBackend::RunLayer(const LayerWeights& L, CpuKvCache* kv, int cache_layer,
                            const std::string& name) {
  const ModelConfig& c = weights_.config;
  const int64_t hidden = c.hidden_size;
  const int hd = c.head_dim;
  const int lq = local_q_heads_;
  const int lkv = local_kv_heads_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Scratch& s = *scratch_;
  const int64_t total = static_cast<int64_t>(s.ids.size());
  const int64_t q_row = int64_t{lq} * hd;
  const int64_t kv_row = int64_t{lkv} * hd;
  s.h.resize(total * hidden);
  s.q.resize(total * q_row);
  s.k.resize(total * kv_row);
  s.v.resize(total * kv_row);
  s.attn.resize(total * q_row);
  s.o.resize(total * hidden);
  s.mlp_out.resize(total * hidden);
  const RotaryEmbedding& rope = *rope_;
  const float scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
  ThreadPool* pool = pool_.get();

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
      const uint64_t seq = s.chunks[s.chunk_of[t]].seq;
      std::memcpy(kv->KeySlot(cache_layer, seq, s.slots[t]), kt, kv_row * sizeof(float));
      std::memcpy(kv->ValueSlot(cache_layer, seq, s.slots[t]), s.v.data() + t * kv_row,
                  kv_row * sizeof(float));
    }
  });
  for (Scratch::Chunk& sc : s.chunks) {
    sc.view = kv->View(cache_layer, sc.seq, &sc.k_blocks, &sc.v_blocks);
  }
  const int group = lq / lkv;
  pool->ParallelFor(total * lq, 4, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / lq;
      const int head = static_cast<int>(job % lq);
      const Scratch::Chunk& sc = s.chunks[s.chunk_of[t]];
      const int64_t off = t * q_row + int64_t{head} * hd;
      AttendHeadSlots(s.q.data() + off, s.attend_prefix[t], s.tail.data() + s.tail_begin[t],
                      s.tail_len[t], head / group, sc.view, scale, &scores, s.attn.data() + off);
    }
  });
  Linear(s.attn.data(), total, L.o, s.o.data(), pool);
  if (comm_ != nullptr && weights_.tp_size > 1) {
    Status st = comm_->AllReduceSum(s.o.data(), s.o.size());
    if (!st.ok()) return st.WithContext("all-reduce after o_proj of " + name);
  }
  AddInPlace(s.x.data(), s.o.data(), total * hidden);

  // MLP / MoE block.
  RmsNorm(s.x.data(), total, hidden, L.post_attn_norm.data(), eps, s.h.data());
  if (!L.is_moe) {
    RunMlp(L.mlp, s.h.data(), total, &s.gate, &s.up, s.mlp_out.data(), pool);
  } else {
    const RouterParams router = RouterParams::FromConfig(c);
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
    if (!st.ok()) return st.WithContext("all-reduce after the MLP of " + name);
  }
  AddInPlace(s.x.data(), s.mlp_out.data(), total * hidden);
  return Status::Ok();
}

Status CpuBackend::Finish(const std::vector<ChunkSpec>& chunks, int64_t rows,
                          const std::vector<float>& norm, bool hidden_all_tokens,
                          ForwardOutput* output) {
  const ModelConfig& c = weights_.config;
  const int64_t hidden = c.hidden_size;
  const Scratch& s = *scratch_;
  ThreadPool* pool = pool_.get();
  output->row_begin.resize(chunks.size());
  std::vector<float> final_h(rows * hidden);
  int64_t r = 0;
  int64_t offset = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = s.chunks[i].n;
    output->row_begin[i] = r;
    const int64_t first = chunks[i].all_logits ? 0 : n - 1;
    for (int64_t t = first; t < n; ++t, ++r) {
      std::memcpy(final_h.data() + r * hidden, s.x.data() + (offset + t) * hidden,
                  hidden * sizeof(float));
    }
    offset += n;
  }
  RmsNorm(final_h.data(), rows, hidden, norm.data(), static_cast<float>(c.rms_norm_eps),
          final_h.data());
  const int64_t vocab = c.vocab_size;
  const int64_t local_vocab = weights_.lm_head.out;
  output->logits.resize(rows * vocab);
  if (comm_ == nullptr || weights_.tp_size == 1) {
    Linear(final_h.data(), rows, weights_.lm_head, output->logits.data(), pool);
  } else {
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
        std::memcpy(output->logits.data() + i * vocab + begin,
                    gathered.data() + (int64_t{rank} * rows + i) * padded, count * sizeof(float));
      }
    }
  }
  // Hidden rows: the same normed rows (RmsNorm is per row, so recomputing them from x gives the
  // lm_head inputs bit for bit).
  bool want_hidden = false;
  for (const ChunkSpec& ch : chunks) want_hidden = want_hidden || ch.return_hidden;
  if (!want_hidden) return Status::Ok();
  output->hidden_size = hidden;
  output->hidden_row_begin.resize(chunks.size());
  int64_t hidden_rows = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    output->hidden_row_begin[i] = hidden_rows;
    if (!chunks[i].return_hidden) continue;
    hidden_rows += hidden_all_tokens || chunks[i].all_logits ? s.chunks[i].n : 1;
  }
  output->hidden.resize(hidden_rows * hidden);
  offset = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = s.chunks[i].n;
    if (chunks[i].return_hidden) {
      const int64_t first = hidden_all_tokens || chunks[i].all_logits ? 0 : n - 1;
      std::memcpy(output->hidden.data() + output->hidden_row_begin[i] * hidden,
                  s.x.data() + (offset + first) * hidden, (n - first) * hidden * sizeof(float));
    }
    offset += n;
  }
  RmsNorm(output->hidden.data(), hidden_rows, hidden, norm.data(),
          static_cast<float>(c.rms_norm_eps), output->hidden.data());
  return Status::Ok();
}

Result<ForwardOutput> CpuBackend::Forward(const ForwardBatch& batch) {
  const ModelConfig& c = weights_.config;
  Scratch& s = *scratch_;
  std::vector<ChunkSpec> specs(batch.chunks.size());
  for (size_t i = 0; i < batch.chunks.size(); ++i) specs[i] = ChunkSpec::Of(batch.chunks[i]);
  SPARK_ASSIGN_OR_RETURN(const int64_t rows, Plan(specs, kv_.get(), "target"));
  ForwardOutput output;
  output.vocab_size = c.vocab_size;
  if (batch.chunks.empty()) return output;

  const int64_t total = static_cast<int64_t>(s.ids.size());
  s.x.resize(total * c.hidden_size);
  EmbeddingLookup(weights_.embed, s.ids.data(), total, s.x.data());
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    SPARK_RETURN_IF_ERROR(RunLayer(weights_.layers[l], kv_.get(), l, "layer " + std::to_string(l)));
  }
  SPARK_RETURN_IF_ERROR(
      Finish(specs, rows, weights_.final_norm, /*hidden_all_tokens=*/true, &output));
  return output;
}

Result<ForwardOutput> CpuBackend::ForwardMtp(const MtpBatch& batch) {
  if (mtp_kv_ == nullptr) {
    return Unimplemented(
        "this model has no MTP layer loaded; load a checkpoint with num_nextn_predict_layers > 0 "
        "and its model.layers.{num_hidden_layers}.* tensors with the MTP layer enabled");
  }
  const ModelConfig& c = weights_.config;
  const int64_t hidden = c.hidden_size;
  const MtpWeights& m = weights_.mtp[0];
  Scratch& s = *scratch_;
  std::vector<ChunkSpec> specs(batch.chunks.size());
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const MtpChunk& ch = batch.chunks[i];
    const int64_t expected = static_cast<int64_t>(ch.tokens.size()) * hidden;
    if (static_cast<int64_t>(ch.hidden.size()) != expected) {
      return InvalidArgument("MTP chunk " + std::to_string(i) + " (sequence " +
                             std::to_string(ch.seq_id) + ") has " +
                             std::to_string(ch.hidden.size()) + " hidden values for " +
                             std::to_string(ch.tokens.size()) + " tokens; send tokens.size() * " +
                             std::to_string(hidden) + " (one hidden_size row per token)");
    }
    specs[i] = ChunkSpec::Of(ch);
  }
  SPARK_ASSIGN_OR_RETURN(const int64_t rows, Plan(specs, mtp_kv_.get(), "MTP"));
  ForwardOutput output;
  output.vocab_size = c.vocab_size;
  if (batch.chunks.empty()) return output;

  const int64_t total = static_cast<int64_t>(s.ids.size());
  const float eps = static_cast<float>(c.rms_norm_eps);
  // [enorm(embedding) | hnorm(hidden)] per token, embedding first (spec §4.1).
  s.x.resize(total * hidden);
  s.mtp_in.resize(total * 2 * hidden);
  EmbeddingLookup(weights_.embed, s.ids.data(), total, s.x.data());
  int64_t row = 0;
  for (const MtpChunk& ch : batch.chunks) {
    for (size_t j = 0; j < ch.tokens.size(); ++j, ++row) {
      float* dst = s.mtp_in.data() + row * 2 * hidden;
      RmsNorm(s.x.data() + row * hidden, 1, hidden, m.enorm.data(), eps, dst);
      RmsNorm(ch.hidden.data() + j * hidden, 1, hidden, m.hnorm.data(), eps, dst + hidden);
    }
  }
  Linear(s.mtp_in.data(), total, m.eh_proj, s.x.data(), pool_.get());
  SPARK_RETURN_IF_ERROR(RunLayer(m.layer, mtp_kv_.get(), 0, "the MTP layer"));
  SPARK_RETURN_IF_ERROR(
      Finish(specs, rows, m.shared_head_norm, /*hidden_all_tokens=*/false, &output));
  return output;
}

}  // namespace spark::engine
