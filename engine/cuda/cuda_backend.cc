#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>

#include "common/check.h"
#include "engine/cpu/kernels.h"
#include "engine/cuda/activation.h"
#include "engine/cuda/attention.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/dense_gemv_tuner.h"
#include "engine/cuda/dense_linear.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/dummy_weights.h"
#include "engine/cuda/embedding.h"
#include "engine/cuda/kv_cache.h"
#include "engine/cuda/kv_compact.h"
#include "engine/cuda/l2_prefetch.h"
#include "engine/cuda/moe.h"
#include "engine/cuda/moe_pack.h"
#include "engine/cuda/programmatic_launch.h"
#include "engine/cuda/rmsnorm.h"
#include "engine/cuda/rope.h"
#include "engine/model/dtype.h"
#include "engine/model/loader.h"
#include "engine/model/weight_checks.h"

namespace spark::cuda {

using engine::CacheKind;
using engine::Communicator;
using engine::DType;
using engine::ExpertWeights;
using engine::ForwardBatch;
using engine::ForwardOutput;
using engine::LayerWeights;
using engine::LinearWeight;
using engine::ModelConfig;
using engine::ModelWeights;
using engine::MtpBatch;
using engine::MtpChunk;
using engine::MtpWeights;
using engine::QuantMethod;
using engine::ScaleKind;
using engine::SequenceChunk;

namespace {

constexpr int64_t kLogitRowsPerPass = 256;
constexpr int64_t kAttentionPartialBytes = int64_t{64} << 20;
constexpr int kMaxAttentionSplits = 32;
// Batches of up to this many tokens run a fused shared expert inside the MoE kernels
// (CudaBackendOptions::fuse_shared_experts); larger ones run its dense copy. Decode buckets stay
// below it; on an H100 the fused path wins at 64 tokens and loses ~9% of prefill throughput at
// 2,048-token chunks.
constexpr int64_t kSharedInMoeMaxTokens = 256;
// The sequence id that owns the KV block of the decode graphs' padding rows.
constexpr uint64_t kPaddingSequence = ~uint64_t{0};
// Decode-graph buckets (batch sizes), the smallest bucket >= the batch serves it.
constexpr int kGraphBuckets[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512};
// Block-table entries per sequence of the graph metadata at first (grown by doubling).
constexpr int64_t kGraphInitialTableBlocks = 256;

std::string GiB(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return buf;
}

// Owner of device allocations.
class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  Result<T*> Alloc(int64_t count) {
    void* p = nullptr;
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return ResourceExhausted("cudaMalloc of " + std::to_string(bytes) + " bytes failed (" +
                               cudaGetErrorString(err) + "); " + std::to_string(bytes_) +
                               " bytes already allocated by this store");
    }
    ptrs_.push_back(p);
    bytes_ += static_cast<int64_t>(bytes);
    return static_cast<T*>(p);
  }
  template <typename T>
  Result<T*> Upload(const T* host, int64_t count) {
    SPARK_ASSIGN_OR_RETURN(T * p, Alloc<T>(count));
    if (count > 0) {
      SPARK_CUDA_RETURN_IF_ERROR(
          cudaMemcpy(p, host, static_cast<size_t>(count) * sizeof(T), cudaMemcpyHostToDevice));
    }
    return p;
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  int64_t bytes_ = 0;
};

// Pinned host memory.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  Status Reserve(int64_t bytes) {
    if (bytes <= bytes_) return Status::Ok();
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr_, static_cast<size_t>(bytes)));
    bytes_ = bytes;
    return Status::Ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Device bytes of a rank's weights, from the config alone (streamed and generated loads); with
// `mtp`, one more decoder layer (index num_hidden_layers) and eh_proj.
int64_t EstimateWeightBytes(const ModelConfig& cfg, int tp, int local_q, int local_kv,
                            int64_t vocab_local, bool mtp, bool fuse_shared) {
  // A fused shared expert is held twice (MoE slot and dense copy).
  const int64_t shared_copies = 1 + FusedSharedExperts(cfg, fuse_shared);
  const int64_t hsz = cfg.hidden_size;
  const int64_t elem = cfg.quant.method != QuantMethod::kNone ? 1 : 2;
  const int64_t qkv = int64_t{local_q + 2 * local_kv} * cfg.head_dim;
  int64_t bytes = cfg.vocab_size * hsz * 2 + vocab_local * hsz * 2;
  const int layers = cfg.num_hidden_layers + (mtp ? 1 : 0);
  for (int l = 0; l < layers; ++l) {
    bytes += (qkv + int64_t{local_q} * cfg.head_dim) * hsz * elem;
    if (!cfg.IsMoeLayer(l)) {
      bytes += 3 * cfg.intermediate_size / tp * hsz * elem;
    } else {
      bytes += int64_t{cfg.n_routed_experts} * 3 * cfg.moe_intermediate_size / tp * hsz * elem +
               int64_t{cfg.n_routed_experts} * hsz * 4;
      bytes +=
          shared_copies * cfg.n_shared_experts * 3 * cfg.moe_intermediate_size / tp * hsz * elem;
    }
  }
  if (mtp) bytes += 2 * hsz * hsz * 2 + 3 * hsz * 4;
  return bytes;
}

// The bytes a GEMV streams of a device weight (its scales aside).
L2Range WeightRange(const DeviceLinear& w) {
  return {w.data, w.out * w.in * (w.type == WeightType::kFP8 ? 1 : 2)};
}

// The router's fp32 weights of an MoE layer.
L2Range RouterRange(const MoeLayerDevice& m) {
  return {m.router, int64_t{m.shape.num_experts} * m.shape.hidden * int64_t{sizeof(float)}};
}

// The gate/up (or down) weights of an MoE layer's shared-expert slots (E .. E + shared - 1).
L2Range SharedExpertRange(const MoeLayerDevice& m, bool gate_up) {
  const int64_t elem = m.format == MoeWeightFormat::kBf16 ? 2 : 1;
  const int64_t per_expert = (gate_up ? 2 : 1) * int64_t{m.shape.inter} * m.shape.hidden * elem;
  const auto* base = static_cast<const uint8_t*>(gate_up ? m.w13 : m.w2);
  return {base + m.shape.num_experts * per_expert, per_expert * m.shape.shared_experts};
}

int64_t LinearBytes(const LinearWeight& w) {
  // Device size: BF16 for non-FP8 weights.
  const int64_t elem = w.dtype == DType::kF8E4M3 ? 1 : 2;
  return w.out * w.in * elem + static_cast<int64_t>(w.scale.size() + w.bias.size()) * 4;
}

int64_t MlpBytes(const ExpertWeights& w) {
  return LinearBytes(w.gate) + LinearBytes(w.up) + LinearBytes(w.down);
}

int64_t LayerBytes(const LayerWeights& L, bool fuse_shared) {
  int64_t total = LinearBytes(L.q) + LinearBytes(L.k) + LinearBytes(L.v) + LinearBytes(L.o);
  total += static_cast<int64_t>(L.input_norm.size() + L.post_attn_norm.size() + L.q_norm.size() +
                                L.k_norm.size() + L.router.size() + L.router_bias.size()) *
           4;
  if (!L.is_moe) total += MlpBytes(L.mlp);
  for (const ExpertWeights& e : L.experts) total += MlpBytes(e);
  if (L.has_shared_expert) total += MlpBytes(L.shared);
  if (fuse_shared && CanFuseSharedExpert(L)) total += MlpBytes(L.shared);  // the MoE slot
  return total;
}

int64_t WeightBytes(const ModelWeights& w, bool fuse_shared) {
  int64_t total =
      LinearBytes(w.embed) + LinearBytes(w.lm_head) + static_cast<int64_t>(w.final_norm.size()) * 4;
  for (const LayerWeights& L : w.layers) total += LayerBytes(L, fuse_shared);
  if (!w.mtp.empty()) {
    const MtpWeights& m = w.mtp.front();
    total += LayerBytes(m.layer, fuse_shared) + LinearBytes(m.eh_proj) +
             static_cast<int64_t>(m.enorm.size() + m.hnorm.size() + m.shared_head_norm.size()) * 4;
  }
  return total;
}

// Host conversion of a weight element to float (exact, as LinearWeight::At).
std::vector<uint16_t> ToBf16(const LinearWeight& w) {
  std::vector<uint16_t> out(static_cast<size_t>(w.out * w.in));
  if (w.dtype == DType::kBF16) {
    std::memcpy(out.data(), w.data.data(), out.size() * 2);
    return out;
  }
  std::vector<float> row(static_cast<size_t>(w.in));
  for (int64_t r = 0; r < w.out; ++r) {
    engine::DequantizeTile(w, r, 1, 0, w.in, row.data(), w.in);
    for (int64_t c = 0; c < w.in; ++c) {
      out[static_cast<size_t>(r * w.in + c)] = engine::FloatToBf16(row[static_cast<size_t>(c)]);
    }
  }
  return out;
}

// Whether parts can be stacked into one FP8 weight (same scale kind, block rows aligned).
bool StackableFp8(const std::vector<const LinearWeight*>& parts) {
  const LinearWeight& first = *parts.front();
  if (first.dtype != DType::kF8E4M3 || first.scale_kind == ScaleKind::kNone) return false;
  for (const LinearWeight* p : parts) {
    if (p->dtype != DType::kF8E4M3 || p->scale_kind != first.scale_kind || p->in != first.in) {
      return false;
    }
    if (first.scale_kind == ScaleKind::kBlock &&
        (p->block_n != first.block_n || p->block_k != first.block_k || p->out % p->block_n != 0)) {
      return false;
    }
  }
  return true;
}

}  // namespace

struct LayerDev {
  DeviceLinear qkv;
  DeviceLinear o;
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  const float* input_norm = nullptr;
  const float* post_norm = nullptr;
  bool is_moe = false;
  DeviceLinear gate_up;  // dense MLP or shared expert, gate rows then up rows
  DeviceLinear down;
  bool has_mlp = false;  // dense layer, or MoE layer with a shared expert
  MoeDeviceLayer moe_owned;
  MoeLayerDevice moe;
};

// The MTP (nextn) block on the device.
struct MtpDev {
  const float* enorm = nullptr;
  const float* hnorm = nullptr;
  DeviceLinear eh_proj;  // [H, 2H]: input [enorm(embedding), hnorm(hidden)]
  const float* shared_head_norm = nullptr;
  LayerDev layer;
};

namespace {

// One chunk of a target or MTP batch, as the shared forward path sees it.
struct ChunkRef {
  uint64_t seq_id = 0;
  int64_t start_pos = 0;
  const std::vector<int32_t>* tokens = nullptr;
  bool all_logits = false;
  const std::vector<int32_t>* tree_parents = nullptr;
  bool return_hidden = false;
};

// A planned batch: its device metadata (valid until the next plan) and attention launch shape.
struct BatchPlan {
  int64_t total = 0;        // tokens
  int64_t rows = 0;         // logit rows
  int64_t hidden_rows = 0;  // return_hidden rows
  bool want_hidden = false;
  const int32_t* ids = nullptr;
  const int32_t* pos = nullptr;         // RoPE positions (start_pos + depth in tree chunks)
  const int64_t* slots = nullptr;       // cache slots (start_pos + index)
  const int32_t* sel = nullptr;         // token of each logit row
  const int32_t* hidden_sel = nullptr;  // token of each hidden row
  AttentionBatch attention;
  AttentionShape shape;
  int splits = 1;
  int split_keys = 0;
};

// A decode batch planned for a CUDA graph: padded to `bucket` one-token chunks, block tables of
// `max_blocks` entries, metadata at fixed offsets of the graph metadata buffer.
struct GraphLayout {
  int bucket = 0;
  int max_blocks = 0;
};

// Byte offsets of a batch's metadata in one upload buffer, each field 16-byte aligned, and the
// buffer's size.
struct MetaLayout {
  int64_t ids = 0;          // [tokens] int32
  int64_t pos = 0;          // [tokens] int32
  int64_t slots = 0;        // [tokens] int64
  int64_t sel = 0;          // [sel_rows] int32
  int64_t hsel = 0;         // [hidden_rows] int32
  int64_t start = 0;        // [chunks] int32
  int64_t len = 0;          // [chunks] int32
  int64_t offset = 0;       // [chunks] int32
  int64_t tiles = 0;        // [tiles] int2
  int64_t tables = 0;       // [chunks, max_blocks] int32
  int64_t mask_offset = 0;  // [chunks] int32 when mask_words > 0
  int64_t masks = 0;        // [mask_words] uint32
  int64_t bytes = 0;
};

MetaLayout MetaLayoutFor(int64_t tokens, int64_t sel_rows, int64_t hidden_rows, int64_t chunks,
                         int64_t tiles, int64_t max_blocks, int64_t mask_words) {
  auto align = [](int64_t v) { return (v + 15) / 16 * 16; };
  MetaLayout m;
  m.pos = m.ids + align(tokens * 4);
  m.slots = m.pos + align(tokens * 4);
  m.sel = m.slots + align(tokens * 8);
  m.hsel = m.sel + align(sel_rows * 4);
  m.start = m.hsel + align(hidden_rows * 4);
  m.len = m.start + align(chunks * 4);
  m.offset = m.len + align(chunks * 4);
  m.tiles = m.offset + align(chunks * 4);
  m.tables = m.tiles + align(tiles * 8);
  m.mask_offset = m.tables + align(chunks * max_blocks * 4);
  m.masks = m.mask_offset + (mask_words > 0 ? align(chunks * 4) : 0);
  m.bytes = m.masks + align(mask_words * 4);
  return m;
}

}  // namespace

struct CudaBackend::Impl {
  ModelConfig config;
  int tp_rank = 0;
  int tp_size = 1;
  Communicator* comm = nullptr;
  CudaBackendOptions options;
  DeviceInfo device;
  cudaStream_t stream = nullptr;
  bool own_stream = false;
  std::vector<DenseGemvChoice> dense_gemv_choices;  // options.gemv_fp8_auto's
  int local_q = 0;
  int local_kv = 0;
  int64_t vocab_begin = 0;
  int64_t vocab_local = 0;
  int64_t vocab_padded = 0;  // per-rank slice width of the gathered logits

  DeviceArena weights;
  std::vector<LayerDev> layers;
  const __nv_bfloat16* embed = nullptr;
  const float* final_norm = nullptr;
  DeviceLinear lm_head;
  bool has_mtp = false;
  MtpDev mtp;
  const float* inv_freq = nullptr;
  int rotary_dim = 0;
  int64_t max_inter = 0;  // largest local intermediate of a dense MLP / shared expert

  std::unique_ptr<DenseLinear> linear;
  std::optional<MoeConfigTable> moe_table;
  MoeWorkspace moe_ws;
  bool has_moe = false;
  MoeWeightFormat moe_format = MoeWeightFormat::kBf16;
  MoeShape moe_shape;

  std::unique_ptr<CudaKvCache> kv;
  std::unique_ptr<CudaKvCache> mtp_kv;  // null without an MTP layer

  // Workspace.
  DeviceArena work;
  int64_t max_tokens = 0;
  float* x = nullptr;
  __nv_bfloat16* h = nullptr;
  float* qkv = nullptr;
  __nv_bfloat16* q = nullptr;
  __nv_bfloat16* attn = nullptr;
  float* o = nullptr;
  float* gate_up = nullptr;
  __nv_bfloat16* act = nullptr;
  float* mlp = nullptr;
  float* shared = nullptr;
  __nv_bfloat16* hsel = nullptr;
  __nv_bfloat16* eh_in = nullptr;  // MTP only: [tokens, 2H] eh_proj input
  float* logits = nullptr;
  float* logits_padded = nullptr;
  float* gathered = nullptr;
  float* attn_partial_o = nullptr;
  float* attn_partial_ml = nullptr;
  int64_t attn_partial_floats = 0;
  // Per-batch metadata, uploaded in one copy.
  void* meta = nullptr;
  int64_t meta_bytes = 0;
  PinnedBuffer meta_host;
  PinnedBuffer staging;  // collectives in host mode and the logits download
  // KeepCacheEntries: (src, dst) slot pairs.
  int64_t* moves = nullptr;
  int64_t moves_capacity = 0;
  // Decode graphs (options.cuda_graphs): one executable graph per bucket, all reading their
  // metadata from graph_meta (block tables of graph_table_blocks entries per sequence).
  std::vector<int> graph_buckets;
  std::map<int, cudaGraphExec_t> graph_execs;
  const float* graph_pending = nullptr;  // the last layer's output buffer of a replay
  int64_t graph_table_blocks = 0;
  int32_t pad_block = -1;
  void* graph_meta = nullptr;
  int64_t graph_meta_bytes = 0;
  PinnedBuffer graph_meta_host;
  CudaGraphStats graph_stats;
  // Weight prefetches into L2 beside the latency-bound kernels (options.l2_prefetch_percent).
  L2Prefetcher prefetcher;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    DropGraphs();
    if (graph_meta) cudaFree(graph_meta);
    if (meta) cudaFree(meta);
    if (moves) cudaFree(moves);
    if (own_stream && stream) cudaStreamDestroy(stream);
  }

  Status Init(const ModelConfig& cfg, int rank, int size, Communicator* c,
              const CudaBackendOptions& opts);
  Status CheckFits(int64_t weight_bytes) const;
  Status UploadLayer(LayerDev& D, int l, LayerWeights& L);
  Status UploadModel(ModelWeights& w);
  Status UploadTop(ModelWeights& w);
  Status UploadMtp(MtpWeights& m);
  // mtp_layer >= 0: also the MTP block stored as model.layers.{mtp_layer}.
  Status GenerateModel(const DummyWeightsSpec& spec, int mtp_layer);
  Result<DeviceLinear> UploadStacked(const std::vector<const LinearWeight*>& parts);
  Status Finish();
  int64_t WorkspaceEstimate() const;

  Status AllReduce(float* data, int64_t count);
  Status Gather(float* local, int64_t count, float* out_host);
  // Validates the chunks against `cache` (nothing changes on error), then grows the cache and
  // uploads the batch's metadata. `cache_name` names the cache in errors. Hidden rows of a
  // return_hidden chunk: every token (`hidden_every_token`, target chunks) or its logit rows.
  // With `graph`, the batch (decode chunks only) is padded to graph->bucket and its metadata
  // goes into graph_meta at the offsets every replay of that bucket reads.
  Result<BatchPlan> PlanBatch(const std::vector<ChunkRef>& chunks, CudaKvCache& cache,
                              const std::string& cache_name, bool hidden_every_token,
                              ForwardOutput& output, const GraphLayout* graph = nullptr);
  // Embedding and every decoder layer over a planned target batch (pending: the output buffer
  // of the last layer).
  Status RunLayers(const BatchPlan& plan, const float*& pending);
  Status RunLayersUnjoined(const BatchPlan& plan, const float*& pending);
  // Decode graphs: the buckets and the padding block (Finish), the bucket that serves a batch
  // (0 = run eagerly), the graph step, capture, and the metadata buffer for `table_blocks`.
  std::string GraphsOffReason() const;  // empty when decode graphs are possible
  Status PrepareGraphs();
  int GraphBucket(const ForwardBatch& batch) const;
  Result<ForwardOutput> ForwardGraph(const std::vector<ChunkRef>& refs, int bucket,
                                     bool logits_on_device);
  Status CaptureDecode(const BatchPlan& plan, cudaGraphExec_t* exec);
  Status ResizeGraphMeta(int64_t table_blocks);
  void DropGraphs();
  // One decoder layer over the planned tokens in x (pending: the previous layer's MLP output,
  // added to x first), K/V into layer `cache_layer` of `cache`; `layer` names it in errors
  // (-1 = the MTP layer).
  Status RunLayer(const LayerDev& D, CudaKvCache& cache, int cache_layer, const BatchPlan& plan,
                  const float*& pending, int layer);
  // The final norm (`norm`) of the output rows, lm_head, logits (and hidden rows) to the host;
  // with `logits_on_device` (one rank, rows within one pass, no hidden rows) the logits stay in
  // the device buffer (ForwardOutput::device_logits) and the step ends without a host sync.
  Status RunHead(const float* norm, const float* pending, const BatchPlan& plan,
                 ForwardOutput& output, bool logits_on_device = false);
  Result<ForwardOutput> Forward(const ForwardBatch& batch);
  Result<ForwardOutput> ForwardMtp(const MtpBatch& batch);
  Status KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep);
};

Status CudaBackend::Impl::Init(const ModelConfig& cfg, int rank, int size, Communicator* c,
                               const CudaBackendOptions& opts) {
  config = cfg;
  tp_rank = rank;
  tp_size = size;
  comm = c;
  options = opts;
  if (size > 1 && c == nullptr) {
    return InvalidArgument("weights are rank " + std::to_string(rank) + " of tp " +
                           std::to_string(size) +
                           " but no communicator was given; pass the tensor-parallel group");
  }
  if (c != nullptr && (c->world_size() != size || c->rank() != rank)) {
    return InvalidArgument("communicator is rank " + std::to_string(c->rank()) + " of " +
                           std::to_string(c->world_size()) + " but the weights are rank " +
                           std::to_string(rank) + " of " + std::to_string(size) +
                           "; load the weights with the communicator's rank and size");
  }
  if (opts.kv_block_tokens <= 0) {
    return InvalidArgument("kv_block_tokens " + std::to_string(opts.kv_block_tokens) +
                           " must be positive (e.g. 16)");
  }
  if (opts.max_batch_tokens <= 0) {
    return InvalidArgument("max_batch_tokens must be positive (e.g. 4096)");
  }
  if (opts.kv_cache_bytes <= 0 && (opts.kv_cache_fraction <= 0 || opts.kv_cache_fraction > 1)) {
    return InvalidArgument("kv_cache_fraction " + std::to_string(opts.kv_cache_fraction) +
                           " must be in (0, 1], or give kv_cache_bytes");
  }
  if (cfg.num_attention_heads <= 0 || size <= 0 || cfg.num_attention_heads % size != 0) {
    return InvalidArgument(std::to_string(cfg.num_attention_heads) +
                           " attention heads cannot be split over tp " + std::to_string(size) +
                           "; choose a tp size dividing them");
  }
  if (AttentionSmemBytes(cfg.head_dim) < 0) {
    return Unimplemented("head_dim " + std::to_string(cfg.head_dim) +
                         " is not supported by the CUDA attention kernel (16, 32, 64, 128, 256)");
  }
  local_q = cfg.num_attention_heads / size;
  local_kv = std::max(1, cfg.num_key_value_heads / size);
  const int rd = cfg.rotary_dim > 0 ? cfg.rotary_dim
                                    : static_cast<int>(cfg.head_dim * cfg.partial_rotary_factor);
  if (rd % 2 != 0 || rd > cfg.head_dim || rd < 0) {
    return InvalidArgument("rotary_dim " + std::to_string(rd) +
                           " must be even and at most head_dim " + std::to_string(cfg.head_dim) +
                           "; check partial_rotary_factor");
  }
  rotary_dim = rd;
  vocab_padded = (cfg.vocab_size + size - 1) / size;
  vocab_begin = vocab_padded * rank;
  vocab_local =
      std::max<int64_t>(0, std::min(cfg.vocab_size, vocab_begin + vocab_padded) - vocab_begin);
  max_tokens = opts.max_batch_tokens;

  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(opts.device));
  SPARK_ASSIGN_OR_RETURN(device, QueryDevice(opts.device));
  if (opts.stream != nullptr) {
    stream = opts.stream;
  } else {
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    own_stream = true;
  }
  if (opts.l2_prefetch_percent < 0 || opts.l2_prefetch_percent > 100) {
    return InvalidArgument("l2_prefetch_percent " + std::to_string(opts.l2_prefetch_percent) +
                           " must be within 0..100 (0 = off)");
  }
  SPARK_CUDA_RETURN_IF_ERROR(
      L2Prefetcher::Create(device.l2_cache_bytes * opts.l2_prefetch_percent / 100, &prefetcher));
  // RoPE frequencies from the CPU backend's definition (Llama-3 scaling included).
  engine::ModelConfig rope_cfg = cfg;
  rope_cfg.rotary_dim = rd;
  engine::RotaryEmbedding rope(rope_cfg);
  SPARK_ASSIGN_OR_RETURN(float* freq, weights.Upload(rope.inv_freq().data(),
                                                     static_cast<int64_t>(rope.inv_freq().size())));
  inv_freq = freq;
  return Status::Ok();
}

int64_t CudaBackend::Impl::WorkspaceEstimate() const {
  const int64_t t = max_tokens;
  const int64_t hdim = config.hidden_size;
  const int64_t qkv_dim = int64_t{local_q + 2 * local_kv} * config.head_dim;
  const int64_t q_dim = int64_t{local_q} * config.head_dim;
  const int64_t inter = std::max<int64_t>(
      {config.intermediate_size / tp_size,
       config.moe_intermediate_size * std::max(1, config.n_shared_experts) / tp_size, 1});
  int64_t bytes =
      t * hdim * (4 + 2 + 4 + 4 + 4 + 2) + t * qkv_dim * 4 + t * q_dim * 4 + t * inter * (8 + 2);
  bytes += kLogitRowsPerPass * vocab_padded * 4 * (2 + tp_size);
  bytes += kAttentionPartialBytes + (int64_t{128} << 20);  // partials, linear workspaces
  if (config.n_routed_experts > 0) {
    bytes += t * config.num_experts_per_tok * hdim * 6 + t * config.n_routed_experts * 4;
  }
  return bytes;
}

Status CudaBackend::Impl::CheckFits(int64_t weight_bytes) const {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t work = WorkspaceEstimate();
  const int64_t kv_min = int64_t{2} * config.num_hidden_layers * local_kv *
                         options.kv_block_tokens * config.head_dim * 2;
  const int64_t need = weight_bytes + work + kv_min;
  if (need > static_cast<int64_t>(free_bytes)) {
    return ResourceExhausted(
        "the model does not fit on device " + std::to_string(options.device) + " (" + device.name +
        "): weights of this rank need " + GiB(weight_bytes) + ", workspace for " +
        std::to_string(max_tokens) + " batch tokens " + GiB(work) + ", one KV block " +
        GiB(kv_min) + ", but only " + GiB(static_cast<int64_t>(free_bytes)) + " of " +
        GiB(static_cast<int64_t>(total_bytes)) +
        " are free; use more tensor-parallel ranks, an FP8 checkpoint, fewer layers or a "
        "smaller max_batch_tokens");
  }
  return Status::Ok();
}

Result<DeviceLinear> CudaBackend::Impl::UploadStacked(
    const std::vector<const LinearWeight*>& parts) {
  DeviceLinear d;
  d.in = parts.front()->in;
  for (const LinearWeight* p : parts) d.out += p->out;
  if (StackableFp8(parts)) {
    const LinearWeight& first = *parts.front();
    d.type = WeightType::kFP8;
    d.scale_kind =
        first.scale_kind == ScaleKind::kBlock ? WeightScale::kBlock : WeightScale::kPerChannel;
    d.block_n = first.block_n;
    d.block_k = first.block_k;
    SPARK_ASSIGN_OR_RETURN(uint8_t * data, weights.Alloc<uint8_t>(d.out * d.in));
    std::vector<float> scales;
    int64_t row = 0;
    for (const LinearWeight* p : parts) {
      SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpy(data + row * d.in, p->data.data(),
                                            static_cast<size_t>(p->out * p->in),
                                            cudaMemcpyHostToDevice));
      scales.insert(scales.end(), p->scale.begin(), p->scale.end());
      row += p->out;
    }
    SPARK_ASSIGN_OR_RETURN(float* s,
                           weights.Upload(scales.data(), static_cast<int64_t>(scales.size())));
    d.data = data;
    d.scale = s;
    return d;
  }
  d.type = WeightType::kBF16;
  SPARK_ASSIGN_OR_RETURN(uint16_t * data, weights.Alloc<uint16_t>(d.out * d.in));
  int64_t row = 0;
  for (const LinearWeight* p : parts) {
    std::vector<uint16_t> bf = ToBf16(*p);
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(data + row * d.in, bf.data(), bf.size() * 2, cudaMemcpyHostToDevice));
    row += p->out;
  }
  d.data = data;
  return d;
}

Status CudaBackend::Impl::UploadLayer(LayerDev& D, int l, LayerWeights& L) {
  SPARK_ASSIGN_OR_RETURN(D.qkv, UploadStacked({&L.q, &L.k, &L.v}));
  SPARK_ASSIGN_OR_RETURN(D.o, UploadStacked({&L.o}));
  auto upload_vec = [&](const std::vector<float>& v, const float** out) -> Status {
    if (v.empty()) return Status::Ok();
    SPARK_ASSIGN_OR_RETURN(float* p, weights.Upload(v.data(), static_cast<int64_t>(v.size())));
    *out = p;
    return Status::Ok();
  };
  SPARK_RETURN_IF_ERROR(upload_vec(L.q.bias, &D.q_bias));
  SPARK_RETURN_IF_ERROR(upload_vec(L.k.bias, &D.k_bias));
  SPARK_RETURN_IF_ERROR(upload_vec(L.v.bias, &D.v_bias));
  if (config.use_qk_norm) {
    SPARK_RETURN_IF_ERROR(upload_vec(L.q_norm, &D.q_norm));
    SPARK_RETURN_IF_ERROR(upload_vec(L.k_norm, &D.k_norm));
  }
  SPARK_RETURN_IF_ERROR(upload_vec(L.input_norm, &D.input_norm));
  SPARK_RETURN_IF_ERROR(upload_vec(L.post_attn_norm, &D.post_norm));
  D.is_moe = L.is_moe;
  if (L.is_moe) {
    Result<PackedMoeLayer> packed = PackMoeLayer(L, config, options.fuse_shared_experts);
    if (!packed.ok()) return packed.status().WithContext("layer " + std::to_string(l));
    SPARK_ASSIGN_OR_RETURN(D.moe_owned, MoeDeviceLayer::Upload(*packed, stream));
    D.moe = D.moe_owned.view();
    has_moe = true;
    moe_format = packed->format;
    moe_shape = packed->shape;
  }
  // A fused shared expert keeps its dense copy too: batches above kSharedInMoeMaxTokens run it
  // as a dense MLP (cuBLASLt serves large M better than the grouped GEMM's expert slot).
  const ExpertWeights* mlp = L.is_moe ? (L.has_shared_expert ? &L.shared : nullptr) : &L.mlp;
  if (mlp != nullptr) {
    D.has_mlp = true;
    SPARK_ASSIGN_OR_RETURN(D.gate_up, UploadStacked({&mlp->gate, &mlp->up}));
    SPARK_ASSIGN_OR_RETURN(D.down, UploadStacked({&mlp->down}));
    max_inter = std::max(max_inter, mlp->gate.out);
  }
  return Status::Ok();
}

Status CudaBackend::Impl::UploadModel(ModelWeights& w) {
  SPARK_RETURN_IF_ERROR(UploadTop(w));
  layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    Status s = UploadLayer(layers[static_cast<size_t>(l)], l, w.layers[static_cast<size_t>(l)]);
    if (!s.ok()) return s.WithContext("uploading layer " + std::to_string(l));
    w.layers[static_cast<size_t>(l)] = LayerWeights{};  // free the host copy as we go
  }
  if (!w.mtp.empty()) SPARK_RETURN_IF_ERROR(UploadMtp(w.mtp.front()));
  w.mtp.clear();
  return Status::Ok();
}

Status CudaBackend::Impl::UploadMtp(MtpWeights& m) {
  auto upload_vec = [&](const std::vector<float>& v, const float** out) -> Status {
    SPARK_ASSIGN_OR_RETURN(float* p, weights.Upload(v.data(), static_cast<int64_t>(v.size())));
    *out = p;
    return Status::Ok();
  };
  SPARK_RETURN_IF_ERROR(upload_vec(m.enorm, &mtp.enorm));
  SPARK_RETURN_IF_ERROR(upload_vec(m.hnorm, &mtp.hnorm));
  SPARK_RETURN_IF_ERROR(upload_vec(m.shared_head_norm, &mtp.shared_head_norm));
  SPARK_ASSIGN_OR_RETURN(mtp.eh_proj, UploadStacked({&m.eh_proj}));
  Status s = UploadLayer(mtp.layer, config.num_hidden_layers, m.layer);
  if (!s.ok()) return s.WithContext("uploading the MTP layer");
  m = MtpWeights{};
  has_mtp = true;
  return Status::Ok();
}

Status CudaBackend::Impl::UploadTop(ModelWeights& w) {
  {
    std::vector<uint16_t> embed = ToBf16(w.embed);
    SPARK_ASSIGN_OR_RETURN(uint16_t * e,
                           weights.Upload(embed.data(), static_cast<int64_t>(embed.size())));
    embed = {};
    this->embed = reinterpret_cast<const __nv_bfloat16*>(e);
    w.embed = LinearWeight{};
  }
  SPARK_ASSIGN_OR_RETURN(float* fn, weights.Upload(w.final_norm.data(), config.hidden_size));
  final_norm = fn;
  if (vocab_local > 0) {
    SPARK_ASSIGN_OR_RETURN(lm_head, UploadStacked({&w.lm_head}));
  }
  w.lm_head = LinearWeight{};
  return Status::Ok();
}

namespace {

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// One part of a generated (dummy) weight: the slice [rows) x [cols) of the full tensor `name`.
struct DummyPart {
  std::string name;  // module prefix, ".weight" is appended
  int64_t in_features = 0;
  Range rows;
  Range cols;
};

}  // namespace

Status CudaBackend::Impl::GenerateModel(const DummyWeightsSpec& spec, int mtp_layer) {
  const ModelConfig& c = config;
  const int64_t hsz = c.hidden_size;
  const uint64_t seed = spec.seed;
  const bool quantized = c.quant.method != QuantMethod::kNone;
  const bool bf16_round = c.torch_dtype != "float32" && c.torch_dtype != "float16";
  auto full = [](int64_t n) { return Range{0, n}; };
  auto split = [&](int64_t n) {
    const int64_t per = n / tp_size;
    return Range{tp_rank * per, (tp_rank + 1) * per};
  };
  const Range q_rows = split(c.q_size());
  Range kv_rows;
  if (tp_size <= c.num_key_value_heads) {
    const int64_t per = int64_t{c.num_key_value_heads / tp_size} * c.head_dim;
    kv_rows = Range{tp_rank * per, (tp_rank + 1) * per};
  } else {
    const int64_t head = tp_rank / (tp_size / c.num_key_value_heads);
    kv_rows = Range{head * c.head_dim, (head + 1) * c.head_dim};
  }
  enum class Kind { kNorm, kBias, kRouterBias };
  auto vec = [&](const std::string& name, Range r, Kind kind) {
    std::vector<float> out(static_cast<size_t>(r.size()));
    for (int64_t i = 0; i < r.size(); ++i) {
      const float u = engine::DummyWeightValue(seed, name, r.begin + i, 0, 3);
      float v =
          kind == Kind::kNorm ? 1.0f + 0.1f * u : (kind == Kind::kBias ? 0.02f * u : 0.05f * u);
      if (kind != Kind::kRouterBias && bf16_round) v = engine::Bf16ToFloat(engine::FloatToBf16(v));
      out[static_cast<size_t>(i)] = v;
    }
    return out;
  };
  auto upload_vec = [&](const std::vector<float>& v) -> Result<const float*> {
    SPARK_ASSIGN_OR_RETURN(float* p, weights.Upload(v.data(), static_cast<int64_t>(v.size())));
    return static_cast<const float*>(p);
  };
  auto linear = [&](const std::vector<DummyPart>& parts, bool quantizable) -> Result<DeviceLinear> {
    DeviceLinear d;
    d.in = parts.front().cols.size();
    for (const DummyPart& p : parts) d.out += p.rows.size();
    const bool fp8 = quantizable && quantized;
    d.type = fp8 ? WeightType::kFP8 : WeightType::kBF16;
    const int64_t elem = fp8 ? 1 : 2;
    SPARK_ASSIGN_OR_RETURN(uint8_t * data, weights.Alloc<uint8_t>(d.out * d.in * elem));
    d.data = data;
    std::vector<float> scales;
    int64_t row = 0;
    for (const DummyPart& p : parts) {
      SPARK_CUDA_RETURN_IF_ERROR(FillDummyMatrix(
          DummyNameKey(seed, p.name + ".weight"), p.in_features, p.rows.begin, p.rows.size(),
          p.cols.begin, p.cols.size(), fp8, data + row * d.in * elem, d.in, stream));
      if (fp8) {
        const float s = DummyFp8Scale(p.in_features);
        if (c.quant.method == QuantMethod::kFp8PerChannel) {
          scales.insert(scales.end(), static_cast<size_t>(p.rows.size()), s);
        } else {
          const int bn = c.quant.block_n;
          const int bk = c.quant.block_k;
          if (parts.size() > 1 && p.rows.size() % bn != 0) {
            return Unimplemented(
                "block FP8 dummy weight " + p.name + ": " + std::to_string(p.rows.size()) +
                " rows per rank are not a multiple of the block " + std::to_string(bn));
          }
          const int64_t nb = (p.rows.size() + bn - 1) / bn;
          const int64_t kb = (d.in + bk - 1) / bk;
          scales.insert(scales.end(), static_cast<size_t>(nb * kb), s);
        }
      }
      row += p.rows.size();
    }
    if (fp8) {
      d.scale_kind = c.quant.method == QuantMethod::kFp8PerChannel ? WeightScale::kPerChannel
                                                                   : WeightScale::kBlock;
      d.block_n = c.quant.block_n;
      d.block_k = c.quant.block_k;
      SPARK_ASSIGN_OR_RETURN(d.scale, upload_vec(scales));
    }
    return d;
  };

  {
    SPARK_ASSIGN_OR_RETURN(
        DeviceLinear e,
        linear({{"model.embed_tokens", hsz, full(c.vocab_size), full(hsz)}}, false));
    embed = static_cast<const __nv_bfloat16*>(e.data);
  }
  SPARK_ASSIGN_OR_RETURN(final_norm, upload_vec(vec("model.norm.weight", full(hsz), Kind::kNorm)));
  if (vocab_local > 0) {
    const Range vocab{vocab_begin, vocab_begin + vocab_local};
    const std::string name = c.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    SPARK_ASSIGN_OR_RETURN(lm_head, linear({{name, hsz, vocab, full(hsz)}}, false));
  }
  // One decoder layer, named model.layers.{l} (the MTP block's layer too).
  auto generate_layer = [&](LayerDev& D, int l) -> Status {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.";
    SPARK_ASSIGN_OR_RETURN(D.input_norm,
                           upload_vec(vec(p + "input_layernorm.weight", full(hsz), Kind::kNorm)));
    SPARK_ASSIGN_OR_RETURN(D.post_norm, upload_vec(vec(p + "post_attention_layernorm.weight",
                                                       full(hsz), Kind::kNorm)));
    SPARK_ASSIGN_OR_RETURN(D.qkv, linear({{a + "q_proj", hsz, q_rows, full(hsz)},
                                          {a + "k_proj", hsz, kv_rows, full(hsz)},
                                          {a + "v_proj", hsz, kv_rows, full(hsz)}},
                                         true));
    SPARK_ASSIGN_OR_RETURN(D.o, linear({{a + "o_proj", c.q_size(), full(hsz), q_rows}}, true));
    if (c.attention_bias) {
      SPARK_ASSIGN_OR_RETURN(D.q_bias, upload_vec(vec(a + "q_proj.bias", q_rows, Kind::kBias)));
      SPARK_ASSIGN_OR_RETURN(D.k_bias, upload_vec(vec(a + "k_proj.bias", kv_rows, Kind::kBias)));
      SPARK_ASSIGN_OR_RETURN(D.v_bias, upload_vec(vec(a + "v_proj.bias", kv_rows, Kind::kBias)));
    }
    if (c.use_qk_norm) {
      SPARK_ASSIGN_OR_RETURN(D.q_norm,
                             upload_vec(vec(a + "q_norm.weight", full(c.head_dim), Kind::kNorm)));
      SPARK_ASSIGN_OR_RETURN(D.k_norm,
                             upload_vec(vec(a + "k_norm.weight", full(c.head_dim), Kind::kNorm)));
    }
    D.is_moe = c.IsMoeLayer(l);
    auto mlp = [&](const std::string& prefix, int64_t inter) -> Status {
      const Range r = split(inter);
      SPARK_ASSIGN_OR_RETURN(D.gate_up, linear({{prefix + "gate_proj", hsz, r, full(hsz)},
                                                {prefix + "up_proj", hsz, r, full(hsz)}},
                                               true));
      SPARK_ASSIGN_OR_RETURN(D.down, linear({{prefix + "down_proj", inter, full(hsz), r}}, true));
      D.has_mlp = true;
      max_inter = std::max(max_inter, r.size());
      return Status::Ok();
    };
    if (!D.is_moe) {
      SPARK_RETURN_IF_ERROR(mlp(p + "mlp.", c.intermediate_size));
      return Status::Ok();
    }
    // One shared expert of the routed experts' size rides in the MoE kernels as the last slot
    // (CudaBackendOptions::fuse_shared_experts), with the values the dense path would get.
    // The dense copy serves batches above kSharedInMoeMaxTokens.
    if (c.n_shared_experts > 0) {
      SPARK_RETURN_IF_ERROR(
          mlp(p + "mlp.shared_experts.", c.moe_intermediate_size * c.n_shared_experts));
    }
    // Routed experts straight into MoeForward's layout (moe.h): w13 [E+S, 2*Im, H] with gate
    // and up rows interleaved, w2 [E+S, H, Im].
    const int e_count = c.n_routed_experts;
    const Range r = split(c.moe_intermediate_size);
    const int64_t im = r.size();
    MoeLayerDevice& M = D.moe;
    M.shape = MoeShapeFromConfig(c, static_cast<int>(im));
    M.shape.shared_experts = FusedSharedExperts(c, options.fuse_shared_experts);
    const int slots = M.shape.gemm_experts();
    M.format = !quantized ? MoeWeightFormat::kBf16
                          : (c.quant.method == QuantMethod::kFp8PerChannel
                                 ? MoeWeightFormat::kFp8PerChannel
                                 : MoeWeightFormat::kFp8Block);
    SPARK_RETURN_IF_ERROR(M.shape.Validate(M.format));
    {
      std::vector<float> router(static_cast<size_t>(int64_t{e_count} * hsz));
      const std::string name = p + "mlp.gate.weight";
      for (int64_t i = 0; i < e_count; ++i) {
        for (int64_t k = 0; k < hsz; ++k) {
          float v = engine::DummyWeightValue(seed, name, i, k, hsz);
          if (bf16_round) v = engine::Bf16ToFloat(engine::FloatToBf16(v));
          router[static_cast<size_t>(i * hsz + k)] = v;
        }
      }
      SPARK_ASSIGN_OR_RETURN(M.router, upload_vec(router));
    }
    if (c.router_correction_bias) {
      SPARK_ASSIGN_OR_RETURN(M.router_bias, upload_vec(vec(p + "mlp.gate.e_score_correction_bias",
                                                           full(e_count), Kind::kRouterBias)));
    }
    const bool fp8 = quantized;
    const int64_t elem = fp8 ? 1 : 2;
    SPARK_ASSIGN_OR_RETURN(uint8_t * w13,
                           weights.Alloc<uint8_t>(int64_t{slots} * 2 * im * hsz * elem));
    SPARK_ASSIGN_OR_RETURN(uint8_t * w2, weights.Alloc<uint8_t>(int64_t{slots} * hsz * im * elem));
    for (int e = 0; e < slots; ++e) {
      const std::string ep =
          e < e_count ? p + "mlp.experts." + std::to_string(e) + "." : p + "mlp.shared_experts.";
      uint8_t* base = w13 + int64_t{e} * 2 * im * hsz * elem;
      SPARK_CUDA_RETURN_IF_ERROR(FillDummyMatrix(DummyNameKey(seed, ep + "gate_proj.weight"), hsz,
                                                 r.begin, im, 0, hsz, fp8, base, 2 * hsz, stream));
      SPARK_CUDA_RETURN_IF_ERROR(FillDummyMatrix(DummyNameKey(seed, ep + "up_proj.weight"), hsz,
                                                 r.begin, im, 0, hsz, fp8, base + hsz * elem,
                                                 2 * hsz, stream));
      SPARK_CUDA_RETURN_IF_ERROR(FillDummyMatrix(DummyNameKey(seed, ep + "down_proj.weight"),
                                                 c.moe_intermediate_size, 0, hsz, r.begin, im, fp8,
                                                 w2 + int64_t{e} * hsz * im * elem, im, stream));
    }
    M.w13 = w13;
    M.w2 = w2;
    if (fp8) {
      const float s13 = DummyFp8Scale(hsz);
      const float s2 = DummyFp8Scale(c.moe_intermediate_size);
      const bool per_channel = M.format == MoeWeightFormat::kFp8PerChannel;
      const int64_t n13 =
          per_channel ? int64_t{slots} * 2 * im : int64_t{slots} * 2 * (im / 128) * (hsz / 128);
      const int64_t n2 =
          per_channel ? int64_t{slots} * hsz : int64_t{slots} * (hsz / 128) * (im / 128);
      SPARK_ASSIGN_OR_RETURN(M.w13_scale,
                             upload_vec(std::vector<float>(static_cast<size_t>(n13), s13)));
      SPARK_ASSIGN_OR_RETURN(M.w2_scale,
                             upload_vec(std::vector<float>(static_cast<size_t>(n2), s2)));
    }
    has_moe = true;
    moe_format = M.format;
    moe_shape = M.shape;
    return Status::Ok();
  };
  layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    SPARK_RETURN_IF_ERROR(generate_layer(layers[static_cast<size_t>(l)], l));
  }
  if (mtp_layer >= 0) {
    // The MTP block as MakeDummyWeights builds it (model.layers.{mtp_layer}.*; eh_proj BF16).
    const std::string p = "model.layers." + std::to_string(mtp_layer) + ".";
    SPARK_ASSIGN_OR_RETURN(mtp.enorm, upload_vec(vec(p + "enorm.weight", full(hsz), Kind::kNorm)));
    SPARK_ASSIGN_OR_RETURN(mtp.hnorm, upload_vec(vec(p + "hnorm.weight", full(hsz), Kind::kNorm)));
    SPARK_ASSIGN_OR_RETURN(mtp.shared_head_norm,
                           upload_vec(vec(p + "shared_head.norm.weight", full(hsz), Kind::kNorm)));
    SPARK_ASSIGN_OR_RETURN(mtp.eh_proj,
                           linear({{p + "eh_proj", 2 * hsz, full(hsz), full(2 * hsz)}}, false));
    SPARK_RETURN_IF_ERROR(generate_layer(mtp.layer, mtp_layer));
    has_mtp = true;
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return Status::Ok();
}

Status CudaBackend::Impl::Finish() {
  const int64_t t = max_tokens;
  const int64_t hsz = config.hidden_size;
  const int64_t hd = config.head_dim;
  const int64_t qkv_dim = int64_t{local_q + 2 * local_kv} * hd;
  const int64_t q_dim = int64_t{local_q} * hd;
  const int64_t inter = std::max<int64_t>(max_inter, 1);
  SPARK_ASSIGN_OR_RETURN(x, work.Alloc<float>(t * hsz));
  SPARK_ASSIGN_OR_RETURN(h, work.Alloc<__nv_bfloat16>(t * hsz));
  SPARK_ASSIGN_OR_RETURN(qkv, work.Alloc<float>(t * qkv_dim));
  SPARK_ASSIGN_OR_RETURN(q, work.Alloc<__nv_bfloat16>(t * q_dim));
  SPARK_ASSIGN_OR_RETURN(attn, work.Alloc<__nv_bfloat16>(t * q_dim));
  SPARK_ASSIGN_OR_RETURN(o, work.Alloc<float>(t * hsz));
  SPARK_ASSIGN_OR_RETURN(gate_up, work.Alloc<float>(t * 2 * inter));
  SPARK_ASSIGN_OR_RETURN(act, work.Alloc<__nv_bfloat16>(t * inter));
  SPARK_ASSIGN_OR_RETURN(mlp, work.Alloc<float>(t * hsz));
  SPARK_ASSIGN_OR_RETURN(shared, work.Alloc<float>(t * hsz));
  SPARK_ASSIGN_OR_RETURN(hsel, work.Alloc<__nv_bfloat16>(t * hsz));
  if (has_mtp) {
    SPARK_ASSIGN_OR_RETURN(eh_in, work.Alloc<__nv_bfloat16>(t * 2 * hsz));
  }
  SPARK_ASSIGN_OR_RETURN(logits, work.Alloc<float>(kLogitRowsPerPass * vocab_padded));
  if (tp_size > 1) {
    SPARK_ASSIGN_OR_RETURN(logits_padded, work.Alloc<float>(kLogitRowsPerPass * vocab_padded));
    SPARK_ASSIGN_OR_RETURN(gathered, work.Alloc<float>(tp_size * kLogitRowsPerPass * vocab_padded));
  }
  attn_partial_floats = kAttentionPartialBytes / 4;
  SPARK_ASSIGN_OR_RETURN(attn_partial_o, work.Alloc<float>(attn_partial_floats));
  SPARK_ASSIGN_OR_RETURN(attn_partial_ml,
                         work.Alloc<float>(attn_partial_floats / std::max<int64_t>(hd, 1) * 2));

  DenseLinearLimits limits;
  limits.max_rows = std::max(t, kLogitRowsPerPass);
  limits.sms = device.multiprocessors;
  limits.gemv_max_rows = options.gemv_max_rows;
  limits.gemv_bf16_rows = options.gemv_bf16_rows;
  limits.gemv_fp8_rows = options.gemv_fp8_rows;
  limits.gemv_fp8_dequant = options.gemv_tensor_cores ? Fp8Dequant::kHalfMma
                            : options.gemv_row_sweep  ? Fp8Dequant::kConvertSweep
                                                      : kGemvFp8DequantDefault;
  limits.fp8_activations = options.fp8_activations;
  std::vector<DeviceLinear> dense;  // every dense weight, for the GEMV tuner
  auto note = [&](const DeviceLinear& w) {
    dense.push_back(w);
    limits.max_in = std::max(limits.max_in, w.in);
    limits.max_out = std::max(limits.max_out, w.out);
    if (w.type == WeightType::kFP8) {
      limits.max_fp8_weight_elems = std::max(limits.max_fp8_weight_elems, w.out * w.in);
      limits.max_fp8_out = std::max(limits.max_fp8_out, w.out);
    }
  };
  note(lm_head);
  auto note_layer = [&](const LayerDev& D) {
    note(D.qkv);
    note(D.o);
    if (D.has_mlp) {
      note(D.gate_up);
      note(D.down);
    }
  };
  for (const LayerDev& D : layers) note_layer(D);
  if (has_mtp) {
    note(mtp.eh_proj);
    note_layer(mtp.layer);
  }
  SPARK_ASSIGN_OR_RETURN(linear, DenseLinear::Create(limits));
  if (options.gemv_fp8_auto && !options.gemv_tensor_cores && !options.gemv_row_sweep) {
    // Before the KV cache takes what is free: the tuner's scratch is released on return.
    SPARK_ASSIGN_OR_RETURN(dense_gemv_choices,
                           TuneDenseGemv(*linear, dense, DenseGemvTunerOptions{}, stream));
  }
  if (has_moe) {
    SPARK_ASSIGN_OR_RETURN(MoeConfigTable table,
                           MoeConfigTable::Create(device, options.smem_cap_bytes));
    table.SetGemvMaxTokens(options.moe_gemv_max_tokens);
    table.SetGroupedMaxTokens(options.moe_grouped_max_tokens);
    std::vector<MoeTunedChoice> tuned = options.moe_tuned;
    if (options.gemv_tensor_cores) {
      MoeGemvTiling tiling = table.gemv_tiling();
      tiling.fp8_dequant = kMoeGemvHalfMma;
      SPARK_RETURN_IF_ERROR(table.SetGemvTiling(tiling));
      // An explicit GEMV choice wins over the tuned splits.
      std::erase_if(tuned, [](const MoeTunedChoice& c) { return c.gemv; });
    }
    SPARK_RETURN_IF_ERROR(
        ApplyMoeTunedChoices(tuned, table).WithContext("applying the tuned MoE tile configs"));
    moe_table.emplace(std::move(table));
    SPARK_ASSIGN_OR_RETURN(moe_ws, MoeWorkspace::Create(moe_shape, moe_format, t, &*moe_table));
  }
  SPARK_RETURN_IF_ERROR(
      staging.Reserve(std::max(t * hsz, (tp_size + 1) * kLogitRowsPerPass * vocab_padded) * 4));

  // KV cache from what is left.
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  CudaKvShape shape;
  shape.num_layers = config.num_hidden_layers;
  shape.kv_heads = local_kv;
  shape.head_dim = config.head_dim;
  shape.block_tokens = options.kv_block_tokens;
  shape.dtype = options.kv_cache_dtype;
  int64_t budget = 0;
  if (options.kv_cache_bytes > 0) {
    budget = options.kv_cache_bytes;
    if (budget > static_cast<int64_t>(free_bytes)) {
      return ResourceExhausted("kv_cache_bytes " + GiB(budget) + " exceeds the " +
                               GiB(static_cast<int64_t>(free_bytes)) + " free on device " +
                               std::to_string(options.device) + " after weights (" +
                               GiB(weights.bytes()) + ") and workspace (" +
                               GiB(work.bytes() + linear->workspace_bytes() + moe_ws.bytes()) +
                               "); lower kv_cache_bytes");
    }
  } else {
    budget = static_cast<int64_t>(static_cast<double>(free_bytes) * options.kv_cache_fraction);
  }
  // With an MTP layer, a second cache of one layer with as many blocks: the budget is split in
  // proportion to the layers, so both caches hold the same number of tokens.
  CudaKvShape mtp_shape = shape;
  mtp_shape.num_layers = 1;
  int64_t main_budget = budget;
  if (has_mtp) {
    const int64_t blocks = budget / (shape.BlockBytes() + mtp_shape.BlockBytes());
    main_budget = blocks * shape.BlockBytes();
  }
  // The decode graphs' padding rows get one block beyond the budget (PrepareGraphs).
  if (GraphsOffReason().empty()) main_budget += shape.BlockBytes();
  Result<std::unique_ptr<CudaKvCache>> cache = CudaKvCache::Create(shape, main_budget);
  if (!cache.ok()) {
    return cache.status().WithContext("device " + std::to_string(options.device) + " has " +
                                      GiB(static_cast<int64_t>(free_bytes)) +
                                      " free after weights (" + GiB(weights.bytes()) +
                                      ") and workspace");
  }
  kv = std::move(*cache);
  if (has_mtp) {
    SPARK_ASSIGN_OR_RETURN(
        mtp_kv, CudaKvCache::Create(mtp_shape, kv->num_blocks() * mtp_shape.BlockBytes()));
  }
  return PrepareGraphs();
}

std::string CudaBackend::Impl::GraphsOffReason() const {
  if (!options.cuda_graphs) return "cuda_graphs is off";
  if (tp_size > 1 && (options.collectives != CollectiveMode::kDevice || comm == nullptr ||
                      !comm->SupportsGraphCapture())) {
    return "the collectives cannot be captured (host-staged, or a communicator without graph "
           "capture)";
  }
  if (std::min<int64_t>(options.graph_max_batch, max_tokens) < 1) return "graph_max_batch < 1";
  return "";
}

Status CudaBackend::Impl::PrepareGraphs() {
  graph_stats.disabled_reason = GraphsOffReason();
  if (!graph_stats.disabled_reason.empty()) return Status::Ok();
  const int64_t max_batch = std::min<int64_t>(options.graph_max_batch, max_tokens);
  for (int b : kGraphBuckets) {
    if (b <= max_batch) graph_buckets.push_back(b);
  }
  // The padding rows of a bucket write their K/V into one block beyond the KV budget.
  SPARK_RETURN_IF_ERROR(kv->Grow(kPaddingSequence, 1)
                            .WithContext("reserving the KV block of the decode graphs' padding"));
  pad_block = kv->Blocks(kPaddingSequence).front();
  graph_stats.buckets = graph_buckets;
  return ResizeGraphMeta(std::min<int64_t>(kGraphInitialTableBlocks, kv->num_blocks()));
}

Status CudaBackend::Impl::ResizeGraphMeta(int64_t table_blocks) {
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  DropGraphs();
  const int group = local_q / local_kv;
  const int tiles = (group + kAttentionRowsPerTile - 1) / kAttentionRowsPerTile;
  // The PlanBatch layout of the largest bucket: one-token chunks, no hidden rows, no trees.
  const int64_t b = graph_buckets.back();
  const int64_t bytes = MetaLayoutFor(b, b, 0, b, b * tiles, table_blocks, 0).bytes;
  if (bytes > graph_meta_bytes) {
    if (graph_meta) SPARK_CUDA_RETURN_IF_ERROR(cudaFree(graph_meta));
    graph_meta = nullptr;
    graph_meta_bytes = 0;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&graph_meta, static_cast<size_t>(bytes)));
    graph_meta_bytes = bytes;
    SPARK_RETURN_IF_ERROR(graph_meta_host.Reserve(bytes));
  }
  graph_table_blocks = table_blocks;
  graph_stats.table_blocks = table_blocks;
  return Status::Ok();
}

void CudaBackend::Impl::DropGraphs() {
  for (auto& [bucket, exec] : graph_execs) {
    if (exec) cudaGraphExecDestroy(exec);
  }
  graph_execs.clear();
}

Status CudaBackend::Impl::AllReduce(float* data, int64_t count) {
  if (comm == nullptr || tp_size == 1) return Status::Ok();
  if (options.collectives == CollectiveMode::kDevice) {
    return comm->AllReduceSum(data, static_cast<size_t>(count));
  }
  float* host = staging.as<float>();
  SPARK_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host, data, static_cast<size_t>(count) * 4, cudaMemcpyDeviceToHost, stream));
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  SPARK_RETURN_IF_ERROR(comm->AllReduceSum(host, static_cast<size_t>(count)));
  SPARK_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(data, host, static_cast<size_t>(count) * 4, cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}

// All-gathers `count` floats of device memory per rank into host memory [tp, count].
Status CudaBackend::Impl::Gather(float* local, int64_t count, float* out_host) {
  if (options.collectives == CollectiveMode::kDevice) {
    SPARK_RETURN_IF_ERROR(comm->AllGather(local, static_cast<size_t>(count), gathered));
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out_host, gathered,
                                               static_cast<size_t>(count * tp_size) * 4,
                                               cudaMemcpyDeviceToHost, stream));
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return Status::Ok();
  }
  float* in_host = out_host + count * tp_size;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(in_host, local, static_cast<size_t>(count) * 4,
                                             cudaMemcpyDeviceToHost, stream));
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return comm->AllGather(in_host, static_cast<size_t>(count), out_host);
}

Result<BatchPlan> CudaBackend::Impl::PlanBatch(const std::vector<ChunkRef>& chunk_refs,
                                               CudaKvCache& cache, const std::string& cache_name,
                                               bool hidden_every_token, ForwardOutput& output,
                                               const GraphLayout* graph) {
  const ModelConfig& c = config;
  const int hd = c.head_dim;
  BatchPlan plan;

  // Validate the whole batch before touching the cache.
  std::unordered_set<uint64_t> seen;
  int64_t blocks = 0;
  int64_t mask_words = 0;
  for (size_t i = 0; i < chunk_refs.size(); ++i) {
    const ChunkRef& ch = chunk_refs[i];
    const std::vector<int32_t>& tokens = *ch.tokens;
    const std::vector<int32_t>& parents = *ch.tree_parents;
    const std::string where =
        "chunk " + std::to_string(i) + " (sequence " + std::to_string(ch.seq_id) + ")";
    if (tokens.empty()) return InvalidArgument(where + " has no tokens; send >= 1 token");
    if (!seen.insert(ch.seq_id).second) {
      return InvalidArgument(where + " appears twice in one batch; merge its chunks");
    }
    if (ch.seq_id == kPaddingSequence) {
      return InvalidArgument(where + ": sequence id 2^64-1 is reserved; use another id");
    }
    const int64_t cached = cache.Length(ch.seq_id);
    if (ch.start_pos != cached) {
      return InvalidArgument(where + " starts at position " + std::to_string(ch.start_pos) +
                             " but " + std::to_string(cached) + " tokens are cached in the " +
                             cache_name + "; start_pos must equal the cached length");
    }
    for (int32_t id : tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return InvalidArgument(where + " has token id " + std::to_string(id) +
                               " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (!parents.empty()) {
      if (static_cast<int64_t>(parents.size()) != n) {
        return InvalidArgument(where + " has " + std::to_string(parents.size()) +
                               " tree_parents for " + std::to_string(n) +
                               " tokens; give one parent per token, or none for a chain");
      }
      for (int64_t k = 0; k < n; ++k) {
        const int32_t parent = parents[static_cast<size_t>(k)];
        if (parent < -1 || parent >= k) {
          return InvalidArgument(where + " has tree_parents[" + std::to_string(k) +
                                 "] = " + std::to_string(parent) +
                                 "; a parent must be -1 (the last cached token) or the index of "
                                 "an earlier token of the chunk");
        }
      }
      mask_words += n * ((n + 31) / 32);
    }
    blocks += cache.BlocksToGrow(ch.seq_id, ch.start_pos + n);
    plan.total += n;
    plan.rows += ch.all_logits ? n : 1;
    if (ch.return_hidden) plan.hidden_rows += hidden_every_token || ch.all_logits ? n : 1;
    plan.want_hidden = plan.want_hidden || ch.return_hidden;
  }
  if (plan.total > max_tokens) {
    return InvalidArgument("the batch carries " + std::to_string(plan.total) +
                           " tokens, more than max_batch_tokens " + std::to_string(max_tokens) +
                           " of the CUDA backend; send smaller batches or raise max_batch_tokens");
  }
  if (blocks > cache.free_blocks()) {
    return ResourceExhausted(cache_name + " full: the batch needs " + std::to_string(blocks) +
                             " blocks, " + std::to_string(cache.free_blocks()) +
                             " free; preempt a sequence or raise the KV cache memory");
  }
  if (chunk_refs.empty()) return plan;

  // Metadata. A graph batch is padded to its bucket with one-token chunks.
  const int real_chunks = static_cast<int>(chunk_refs.size());
  const int chunks = graph != nullptr ? graph->bucket : real_chunks;
  if (graph != nullptr) plan.total = graph->bucket;
  const int64_t total = plan.total;
  const int64_t rows = plan.rows;
  const int64_t sel_cap = graph != nullptr ? graph->bucket : rows;
  const int group = local_q / local_kv;
  const int bt = options.kv_block_tokens;
  int max_blocks = 1;
  int64_t num_tiles = 0;
  int64_t max_ctx = 0;
  for (const ChunkRef& ch : chunk_refs) {
    const int64_t n = static_cast<int64_t>(ch.tokens->size());
    SPARK_CHECK(cache.Grow(ch.seq_id, ch.start_pos + n).ok());
    const int64_t ctx = ch.start_pos + n;
    max_ctx = std::max(max_ctx, ctx);
    max_blocks = std::max<int>(max_blocks, static_cast<int>((ctx + bt - 1) / bt));
    num_tiles += (n * group + kAttentionRowsPerTile - 1) / kAttentionRowsPerTile;
  }
  if (graph != nullptr) {
    SPARK_CHECK(max_blocks <= graph->max_blocks);
    max_blocks = graph->max_blocks;
    num_tiles += int64_t{chunks - real_chunks} *
                 ((group + kAttentionRowsPerTile - 1) / kAttentionRowsPerTile);
  }
  const MetaLayout layout =
      MetaLayoutFor(total, sel_cap, plan.hidden_rows, chunks, num_tiles, max_blocks, mask_words);
  const int64_t meta_needed = layout.bytes;
  if (graph != nullptr) {
    // The previous step may still be reading the pinned buffer.
    SPARK_CHECK(meta_needed <= graph_meta_bytes);
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  } else if (meta_needed > meta_bytes) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    if (meta) cudaFree(meta);
    meta = nullptr;
    meta_bytes = 0;
    const int64_t bytes = meta_needed * 2;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&meta, static_cast<size_t>(bytes)));
    meta_bytes = bytes;
    SPARK_RETURN_IF_ERROR(meta_host.Reserve(bytes));
  } else {
    // The previous batch's upload may still be reading the pinned buffer.
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  }
  char* mh = graph != nullptr ? graph_meta_host.as<char>() : meta_host.as<char>();
  auto* ids = reinterpret_cast<int32_t*>(mh + layout.ids);
  auto* pos = reinterpret_cast<int32_t*>(mh + layout.pos);
  auto* slots = reinterpret_cast<int64_t*>(mh + layout.slots);
  auto* sel = reinterpret_cast<int32_t*>(mh + layout.sel);
  auto* hsel_rows = reinterpret_cast<int32_t*>(mh + layout.hsel);
  auto* cstart = reinterpret_cast<int32_t*>(mh + layout.start);
  auto* clen = reinterpret_cast<int32_t*>(mh + layout.len);
  auto* coff = reinterpret_cast<int32_t*>(mh + layout.offset);
  auto* tiles = reinterpret_cast<int2*>(mh + layout.tiles);
  auto* tables = reinterpret_cast<int32_t*>(mh + layout.tables);
  auto* mask_offset = reinterpret_cast<int32_t*>(mh + layout.mask_offset);
  auto* masks = reinterpret_cast<uint32_t*>(mh + layout.masks);
  // One entry per chunk of the batch (padding chunks of a graph bucket have no rows).
  output.row_begin.resize(static_cast<size_t>(real_chunks));
  if (plan.want_hidden) output.hidden_row_begin.resize(static_cast<size_t>(real_chunks));
  int64_t t = 0;
  int64_t r = 0;
  int64_t hr = 0;
  int64_t tile = 0;
  int64_t word = 0;
  std::vector<int32_t> depth;
  for (int i = 0; i < real_chunks; ++i) {
    const ChunkRef& ch = chunk_refs[static_cast<size_t>(i)];
    const std::vector<int32_t>& parents = *ch.tree_parents;
    const int64_t n = static_cast<int64_t>(ch.tokens->size());
    const std::vector<int32_t>& blk = cache.Blocks(ch.seq_id);
    cstart[i] = static_cast<int32_t>(ch.start_pos);
    clen[i] = static_cast<int32_t>(n);
    coff[i] = static_cast<int32_t>(t);
    for (int b = 0; b < max_blocks; ++b) {
      tables[int64_t{i} * max_blocks + b] =
          b < static_cast<int>(blk.size()) ? blk[static_cast<size_t>(b)] : 0;
    }
    output.row_begin[static_cast<size_t>(i)] = r;
    // Tree chunks: depth (RoPE position start_pos + depth) and the ancestor-or-self mask of
    // every token (its parent's row plus its own bit).
    const bool tree = !parents.empty();
    if (mask_words > 0) mask_offset[i] = tree ? static_cast<int32_t>(word) : -1;
    const int64_t words = (n + 31) / 32;
    if (tree) {
      depth.assign(static_cast<size_t>(n), 0);
      uint32_t* m = masks + word;
      std::memset(m, 0, static_cast<size_t>(n * words) * 4);
      for (int64_t k = 0; k < n; ++k) {
        const int32_t parent = parents[static_cast<size_t>(k)];
        if (parent >= 0) {
          depth[static_cast<size_t>(k)] = depth[static_cast<size_t>(parent)] + 1;
          std::memcpy(m + k * words, m + parent * words, static_cast<size_t>(words) * 4);
        }
        m[k * words + k / 32] |= 1u << (k % 32);
      }
      word += n * words;
    }
    for (int64_t k = 0; k < n; ++k) {
      const int64_t p = ch.start_pos + k;
      ids[t + k] = (*ch.tokens)[static_cast<size_t>(k)];
      pos[t + k] = static_cast<int32_t>(tree ? ch.start_pos + depth[static_cast<size_t>(k)] : p);
      slots[t + k] = int64_t{blk[static_cast<size_t>(p / bt)]} * bt + p % bt;
    }
    for (int64_t k = ch.all_logits ? 0 : n - 1; k < n; ++k) sel[r++] = static_cast<int32_t>(t + k);
    if (plan.want_hidden) output.hidden_row_begin[static_cast<size_t>(i)] = hr;
    if (ch.return_hidden) {
      for (int64_t k = hidden_every_token || ch.all_logits ? 0 : n - 1; k < n; ++k) {
        hsel_rows[hr++] = static_cast<int32_t>(t + k);
      }
    }
    for (int64_t row = 0; row < n * group; row += kAttentionRowsPerTile) {
      tiles[tile++] = make_int2(i, static_cast<int>(row));
    }
    t += n;
  }
  // Padding chunks (graph batches): one token at position 0 of the reserved block.
  for (int i = real_chunks; i < chunks; ++i) {
    cstart[i] = 0;
    clen[i] = 1;
    coff[i] = static_cast<int32_t>(t);
    for (int b = 0; b < max_blocks; ++b)
      tables[int64_t{i} * max_blocks + b] = b == 0 ? pad_block : 0;
    ids[t] = 0;
    pos[t] = 0;
    slots[t] = int64_t{pad_block} * bt;
    for (int64_t row = 0; row < group; row += kAttentionRowsPerTile) {
      tiles[tile++] = make_int2(i, static_cast<int>(row));
    }
    ++t;
  }
  void* dev_meta = graph != nullptr ? graph_meta : meta;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev_meta, mh, static_cast<size_t>(meta_needed),
                                             cudaMemcpyHostToDevice, stream));
  char* md = static_cast<char*>(dev_meta);
  plan.ids = reinterpret_cast<const int32_t*>(md + layout.ids);
  plan.pos = reinterpret_cast<const int32_t*>(md + layout.pos);
  plan.slots = reinterpret_cast<const int64_t*>(md + layout.slots);
  plan.sel = reinterpret_cast<const int32_t*>(md + layout.sel);
  plan.hidden_sel = reinterpret_cast<const int32_t*>(md + layout.hsel);

  AttentionBatch& ab = plan.attention;
  ab.start = reinterpret_cast<const int32_t*>(md + layout.start);
  ab.len = reinterpret_cast<const int32_t*>(md + layout.len);
  ab.offset = reinterpret_cast<const int32_t*>(md + layout.offset);
  ab.block_tables = reinterpret_cast<const int32_t*>(md + layout.tables);
  ab.max_blocks = max_blocks;
  ab.tiles = reinterpret_cast<const int2*>(md + layout.tiles);
  ab.num_tiles = static_cast<int>(num_tiles);
  ab.total_tokens = static_cast<int>(total);
  if (mask_words > 0) {
    ab.tree_mask_offset = reinterpret_cast<const int32_t*>(md + layout.mask_offset);
    ab.tree_masks = reinterpret_cast<const uint32_t*>(md + layout.masks);
  }
  AttentionShape& as = plan.shape;
  as.q_heads = local_q;
  as.kv_heads = local_kv;
  as.head_dim = hd;
  as.block_tokens = bt;
  as.scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
  as.cache_dtype = options.kv_cache_dtype;
  as.tensor_cores = options.attention_tensor_cores;
  // Split along the keys when few blocks would run over long contexts.
  const int64_t ctas = num_tiles * local_kv;
  const int64_t sms = std::max(1, device.multiprocessors);
  if (graph != nullptr) {
    // A graph serves every context length: a fixed number of splits, each sequence's keys
    // divided among them in the kernel (split_keys 0).
    if (ctas < 2 * sms) {
      int64_t want = std::min<int64_t>(kMaxAttentionSplits, (2 * sms + ctas - 1) / ctas);
      want =
          std::min<int64_t>(want, attn_partial_floats / std::max<int64_t>(total * local_q * hd, 1));
      if (want > 1) {
        plan.splits = static_cast<int>(want);
        plan.split_keys = 0;
      }
    }
  } else if (ctas < 2 * sms && max_ctx > 512) {
    int64_t want = std::min<int64_t>(
        {kMaxAttentionSplits, (2 * sms + ctas - 1) / ctas, (max_ctx + 255) / 256});
    const int64_t per_split = total * local_q * hd;
    want = std::min<int64_t>(want, attn_partial_floats / std::max<int64_t>(per_split, 1));
    if (want > 1) {
      plan.split_keys = static_cast<int>(((max_ctx + want - 1) / want + 31) / 32 * 32);
      plan.splits = static_cast<int>((max_ctx + plan.split_keys - 1) / plan.split_keys);
    }
  }
  return plan;
}

Status CudaBackend::Impl::RunLayer(const LayerDev& D, CudaKvCache& cache, int cache_layer,
                                   const BatchPlan& plan, const float*& pending, int layer) {
  const int64_t total = plan.total;
  const int64_t hsz = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  auto name = [layer] {
    return layer < 0 ? std::string("the MTP layer") : "layer " + std::to_string(layer);
  };
  QkvRopeParams rp;
  rp.q_heads = local_q;
  rp.kv_heads = local_kv;
  rp.head_dim = config.head_dim;
  rp.rotary_dim = rotary_dim;
  rp.inv_freq = inv_freq;
  rp.eps = eps;
  rp.block_tokens = options.kv_block_tokens;
  rp.cache_dtype = options.kv_cache_dtype;
  rp.q_bias = D.q_bias;
  rp.k_bias = D.k_bias;
  rp.v_bias = D.v_bias;
  rp.q_norm = D.q_norm;
  rp.k_norm = D.k_norm;
  const int64_t smem_limit = device.EffectiveSmemPerBlock(options.smem_cap_bytes);
  void* kc = cache.keys(cache_layer);
  void* vc = cache.values(cache_layer);

  // A fused shared expert runs inside the MoE kernels for small batches (decode), its dense copy
  // for large ones (prefill).
  const bool shared_in_moe =
      D.is_moe && D.moe.shape.shared_experts > 0 && total <= kSharedInMoeMaxTokens;
  // Weights into L2 beside the latency-bound kernels of small steps (options.l2_prefetch_percent):
  // each prefetch starts once the kernels queued before it are done.
  const bool prefetch = prefetcher.enabled() && total <= kL2PrefetchMaxTokens;
  if (prefetch) SPARK_CUDA_RETURN_IF_ERROR(prefetcher.Prefetch(stream, {WeightRange(D.qkv)}));
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(pending, x, D.input_norm, h, nullptr, total,
                                        static_cast<int>(hsz), eps, nullptr, stream));
  SPARK_RETURN_IF_ERROR(linear->Run(D.qkv, h, total, qkv, stream));
  if (prefetch) SPARK_CUDA_RETURN_IF_ERROR(prefetcher.Prefetch(stream, {WeightRange(D.o)}));
  SPARK_CUDA_RETURN_IF_ERROR(
      QkvRopeCacheWrite(qkv, total, plan.pos, plan.slots, rp, q, kc, vc, stream));
  SPARK_CUDA_RETURN_IF_ERROR(PagedAttention(q, kc, vc, plan.attention, plan.shape, plan.splits,
                                            plan.split_keys, attn_partial_o, attn_partial_ml, attn,
                                            smem_limit, stream));
  SPARK_RETURN_IF_ERROR(linear->Run(D.o, attn, total, o, stream));
  Status st = AllReduce(o, total * hsz);
  if (!st.ok()) return st.WithContext("all-reduce after o_proj of " + name());
  if (prefetch && D.is_moe) {
    SPARK_CUDA_RETURN_IF_ERROR(prefetcher.Prefetch(
        stream, {RouterRange(D.moe), shared_in_moe ? SharedExpertRange(D.moe, true) : L2Range{},
                 shared_in_moe ? SharedExpertRange(D.moe, false) : WeightRange(D.gate_up)}));
  } else if (prefetch && D.has_mlp) {
    SPARK_CUDA_RETURN_IF_ERROR(prefetcher.Prefetch(stream, {WeightRange(D.gate_up)}));
  }
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(o, x, D.post_norm, h, nullptr, total, static_cast<int>(hsz),
                                        eps, nullptr, stream));
  const float* addend = nullptr;
  if (D.has_mlp && !shared_in_moe) {
    float* dst = D.is_moe ? shared : mlp;
    const int64_t inter = D.gate_up.out / 2;
    SPARK_RETURN_IF_ERROR(linear->Run(D.gate_up, h, total, gate_up, stream));
    SPARK_CUDA_RETURN_IF_ERROR(SiluMul(gate_up, total, inter, act, stream));
    SPARK_RETURN_IF_ERROR(linear->Run(D.down, act, total, dst, stream));
    addend = shared;
  }
  if (D.is_moe) {
    SPARK_CUDA_RETURN_IF_ERROR(
        MoeForward(D.moe, h, total, mlp, addend, moe_ws, *moe_table, stream,
                   shared_in_moe ? MoeSharedSlots::kRun : MoeSharedSlots::kSkip));
  }
  st = AllReduce(mlp, total * hsz);
  if (!st.ok()) return st.WithContext("all-reduce after the MLP of " + name());
  pending = mlp;
  return Status::Ok();
}

Status CudaBackend::Impl::RunHead(const float* norm, const float* pending, const BatchPlan& plan,
                                  ForwardOutput& output, bool logits_on_device) {
  const int64_t hsz = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  const int64_t rows = plan.rows;
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(pending, x, norm, h, nullptr, plan.total,
                                        static_cast<int>(hsz), eps, nullptr, stream));
  // Hidden rows (return_hidden): the normalised rows in fp32 into `o`, which no layer needs any
  // more (their BF16 copy into h is unused).
  if (plan.want_hidden) {
    const int64_t n = plan.hidden_rows;
    SPARK_CUDA_RETURN_IF_ERROR(
        RmsNormF32(nullptr, x, norm, h, o, n, static_cast<int>(hsz), eps, plan.hidden_sel, stream));
    output.hidden_size = hsz;
    output.hidden.resize(static_cast<size_t>(n * hsz));
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        output.hidden.data(), o, static_cast<size_t>(n * hsz) * 4, cudaMemcpyDeviceToHost, stream));
  }
  // The logit rows: BF16 into lm_head.
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(nullptr, x, norm, hsel, nullptr, rows,
                                        static_cast<int>(hsz), eps, plan.sel, stream));

  const int64_t vocab = config.vocab_size;
  if (logits_on_device && (comm == nullptr || tp_size == 1) && rows <= kLogitRowsPerPass &&
      !plan.want_hidden) {
    SPARK_RETURN_IF_ERROR(linear->Run(lm_head, hsel, rows, logits, stream));
    output.device_logits = logits;
    return Status::Ok();
  }
  output.logits.resize(static_cast<size_t>(rows * vocab));
  for (int64_t r0 = 0; r0 < rows; r0 += kLogitRowsPerPass) {
    const int64_t n = std::min(kLogitRowsPerPass, rows - r0);
    if (vocab_local > 0) {
      SPARK_RETURN_IF_ERROR(linear->Run(lm_head, hsel + r0 * hsz, n, logits, stream));
    }
    if (comm == nullptr || tp_size == 1) {
      SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(output.logits.data() + r0 * vocab, logits,
                                                 static_cast<size_t>(n * vocab) * 4,
                                                 cudaMemcpyDeviceToHost, stream));
      continue;
    }
    float* local = logits;
    if (vocab_local != vocab_padded) {
      SPARK_CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(logits_padded, 0, static_cast<size_t>(n * vocab_padded) * 4, stream));
      if (vocab_local > 0) {
        SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
            logits_padded, static_cast<size_t>(vocab_padded) * 4, logits,
            static_cast<size_t>(vocab_local) * 4, static_cast<size_t>(vocab_local) * 4,
            static_cast<size_t>(n), cudaMemcpyDeviceToDevice, stream));
      }
      local = logits_padded;
    }
    float* host = staging.as<float>();
    Status st = Gather(local, n * vocab_padded, host);
    if (!st.ok()) return st.WithContext("all-gather of the logits");
    for (int rank = 0; rank < tp_size; ++rank) {
      const int64_t begin = rank * vocab_padded;
      const int64_t count = std::max<int64_t>(0, std::min(vocab, begin + vocab_padded) - begin);
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(output.logits.data() + (r0 + i) * vocab + begin,
                    host + (int64_t{rank} * n + i) * vocab_padded,
                    static_cast<size_t>(count) * sizeof(float));
      }
    }
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return Status::Ok();
}

Result<ForwardOutput> CudaBackend::Impl::Forward(const ForwardBatch& batch) {
  std::vector<ChunkRef> refs;
  refs.reserve(batch.chunks.size());
  for (const SequenceChunk& ch : batch.chunks) {
    refs.push_back(
        {ch.seq_id, ch.start_pos, &ch.tokens, ch.all_logits, &ch.tree_parents, ch.return_hidden});
  }
  if (const int bucket = GraphBucket(batch); bucket > 0) {
    return ForwardGraph(refs, bucket, batch.logits_on_device);
  }
  ForwardOutput output;
  output.vocab_size = config.vocab_size;
  SPARK_ASSIGN_OR_RETURN(BatchPlan plan, PlanBatch(refs, *kv, "KV cache", true, output));
  if (plan.total == 0) return output;
  const float* pending = nullptr;
  SPARK_RETURN_IF_ERROR(RunLayers(plan, pending));
  SPARK_RETURN_IF_ERROR(RunHead(final_norm, pending, plan, output, batch.logits_on_device));
  return output;
}

Status CudaBackend::Impl::RunLayers(const BatchPlan& plan, const float*& pending) {
  Status st = RunLayersUnjoined(plan, pending);
  // Every exit joins the prefetch stream, so that no fork outlives the step (or its capture).
  const cudaError_t joined = prefetcher.Join(stream);
  if (st.ok() && joined != cudaSuccess) {
    st = CudaError(joined, "joining the L2 prefetch stream", __FILE__, __LINE__);
  }
  return st;
}

Status CudaBackend::Impl::RunLayersUnjoined(const BatchPlan& plan, const float*& pending) {
  SPARK_CUDA_RETURN_IF_ERROR(
      EmbeddingLookup(embed, config.hidden_size, plan.ids, plan.total, x, stream));
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    SPARK_RETURN_IF_ERROR(RunLayer(layers[static_cast<size_t>(l)], *kv, l, plan, pending, l));
  }
  return Status::Ok();
}

int CudaBackend::Impl::GraphBucket(const ForwardBatch& batch) const {
  if (graph_buckets.empty() || !graph_stats.disabled_reason.empty() || batch.chunks.empty() ||
      batch.chunks.size() > static_cast<size_t>(graph_buckets.back())) {
    return 0;
  }
  const int64_t bt = options.kv_block_tokens;
  for (const SequenceChunk& ch : batch.chunks) {
    if (ch.tokens.size() != 1 || !ch.tree_parents.empty() || ch.all_logits || ch.return_hidden ||
        ch.start_pos < 0 || ch.start_pos / bt >= kv->num_blocks()) {
      return 0;  // not a decode step, or a position no cache holds (the eager path says so)
    }
  }
  return *std::lower_bound(graph_buckets.begin(), graph_buckets.end(),
                           static_cast<int>(batch.chunks.size()));
}

Result<ForwardOutput> CudaBackend::Impl::ForwardGraph(const std::vector<ChunkRef>& refs, int bucket,
                                                      bool logits_on_device) {
  const int64_t bt = options.kv_block_tokens;
  int64_t need_blocks = 1;
  for (const ChunkRef& ch : refs) need_blocks = std::max(need_blocks, ch.start_pos / bt + 1);
  if (need_blocks > graph_table_blocks) {
    // Longer contexts than the tables hold: larger tables, every bucket captured again.
    SPARK_RETURN_IF_ERROR(ResizeGraphMeta(
        std::min<int64_t>(std::max(need_blocks, 2 * graph_table_blocks), kv->num_blocks())));
  }
  ForwardOutput output;
  output.vocab_size = config.vocab_size;
  const GraphLayout layout{bucket, static_cast<int>(graph_table_blocks)};
  SPARK_ASSIGN_OR_RETURN(BatchPlan plan, PlanBatch(refs, *kv, "KV cache", true, output, &layout));
  cudaGraphExec_t& exec = graph_execs[bucket];
  if (exec == nullptr) {
    // On failure exec stays null: this step runs eagerly below, and GraphBucket sends every
    // later step to the eager path.
    if (Status captured = CaptureDecode(plan, &exec); !captured.ok()) {
      graph_stats.disabled_reason = captured.ToString();
    }
  }
  const float* pending = nullptr;
  if (exec != nullptr) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));
    ++graph_stats.launches;
    if (comm != nullptr && tp_size > 1) {
      SPARK_RETURN_IF_ERROR(comm->WatchReplay("decode step (CUDA graph)"));
    }
    pending = graph_pending;
  } else {
    SPARK_RETURN_IF_ERROR(RunLayers(plan, pending));
  }
  SPARK_RETURN_IF_ERROR(RunHead(final_norm, pending, plan, output, logits_on_device));
  return output;
}

Status CudaBackend::Impl::CaptureDecode(const BatchPlan& plan, cudaGraphExec_t* exec) {
  const bool collectives = comm != nullptr && tp_size > 1;
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  if (collectives) comm->SetCapturing(true);
  const float* pending = nullptr;
  Status st = RunLayers(plan, pending);
  if (collectives) comm->SetCapturing(false);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  prefetcher.Forget();  // a fork left by a failed capture went with it
  if (st.ok() && ended != cudaSuccess) {
    st = CudaError(ended, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  if (st.ok()) {
    const cudaError_t made = cudaGraphInstantiate(exec, graph, 0);
    if (made != cudaSuccess) st = CudaError(made, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  (void)cudaGetLastError();  // a failed capture leaves its error behind
  if (!st.ok()) {
    *exec = nullptr;
    return st.WithContext("capturing the decode graph of batch bucket " +
                          std::to_string(plan.total));
  }
  graph_pending = pending;
  ++graph_stats.captures;
  return Status::Ok();
}

Result<ForwardOutput> CudaBackend::Impl::ForwardMtp(const MtpBatch& batch) {
  if (!has_mtp) {
    return Unimplemented(
        "the model was loaded without its MTP (nextn) layer; load it with load_mtp (the "
        "checkpoint needs num_nextn_predict_layers > 0 and the model.layers.N.eh_proj tensors)");
  }
  const int64_t hsz = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  std::vector<ChunkRef> refs;
  refs.reserve(batch.chunks.size());
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const MtpChunk& ch = batch.chunks[i];
    const int64_t want = static_cast<int64_t>(ch.tokens.size()) * hsz;
    if (static_cast<int64_t>(ch.hidden.size()) != want) {
      return InvalidArgument("MTP chunk " + std::to_string(i) + " (sequence " +
                             std::to_string(ch.seq_id) + ") carries " +
                             std::to_string(ch.hidden.size()) + " hidden values for " +
                             std::to_string(ch.tokens.size()) +
                             " tokens; hidden must hold tokens.size() * hidden_size (" +
                             std::to_string(hsz) + ") values");
    }
    refs.push_back(
        {ch.seq_id, ch.start_pos, &ch.tokens, ch.all_logits, &ch.tree_parents, ch.return_hidden});
  }
  ForwardOutput output;
  output.vocab_size = config.vocab_size;
  SPARK_ASSIGN_OR_RETURN(BatchPlan plan, PlanBatch(refs, *mtp_kv, "MTP KV cache", false, output));
  const int64_t total = plan.total;
  if (total == 0) return output;

  // The hidden rows (PlanBatch synchronised the stream, so staging is free) into `o`.
  float* host = staging.as<float>();
  int64_t t = 0;
  for (const MtpChunk& ch : batch.chunks) {
    std::memcpy(host + t * hsz, ch.hidden.data(), ch.hidden.size() * sizeof(float));
    t += static_cast<int64_t>(ch.tokens.size());
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(o, host, static_cast<size_t>(total * hsz) * 4,
                                             cudaMemcpyHostToDevice, stream));
  // eh_proj input [enorm(embedding), hnorm(hidden)], embedding first.
  SPARK_CUDA_RETURN_IF_ERROR(EmbeddingLookup(embed, hsz, plan.ids, total, x, stream));
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(nullptr, x, mtp.enorm, h, nullptr, total,
                                        static_cast<int>(hsz), eps, nullptr, stream));
  SPARK_CUDA_RETURN_IF_ERROR(RmsNormF32(nullptr, o, mtp.hnorm, hsel, nullptr, total,
                                        static_cast<int>(hsz), eps, nullptr, stream));
  const size_t row_bytes = static_cast<size_t>(hsz) * sizeof(__nv_bfloat16);
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(eh_in, 2 * row_bytes, h, row_bytes, row_bytes,
                                               static_cast<size_t>(total), cudaMemcpyDeviceToDevice,
                                               stream));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(eh_in + hsz, 2 * row_bytes, hsel, row_bytes,
                                               row_bytes, static_cast<size_t>(total),
                                               cudaMemcpyDeviceToDevice, stream));
  SPARK_RETURN_IF_ERROR(linear->Run(mtp.eh_proj, eh_in, total, x, stream));
  const float* pending = nullptr;
  const Status layer = RunLayer(mtp.layer, *mtp_kv, 0, plan, pending, -1);
  const cudaError_t joined = prefetcher.Join(stream);  // also after a failed layer
  SPARK_RETURN_IF_ERROR(layer);
  SPARK_CUDA_RETURN_IF_ERROR(joined);
  SPARK_RETURN_IF_ERROR(RunHead(mtp.shared_head_norm, pending, plan, output));
  return output;
}

Status CudaBackend::Impl::KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                                           const std::vector<int32_t>& keep) {
  if (seq_id == kPaddingSequence) {
    return InvalidArgument("sequence id 2^64-1 is reserved; use another id");
  }
  CudaKvCache* cache = kind == CacheKind::kTarget ? kv.get() : mtp_kv.get();
  if (cache == nullptr) {
    return Unimplemented(
        "the model was loaded without its MTP (nextn) layer, so there is no MTP cache to "
        "compact; load it with load_mtp");
  }
  const char* name = kind == CacheKind::kTarget ? "target" : "MTP";
  const int64_t length = cache->Length(seq_id);
  const std::string where = std::string("KeepCacheEntries on the ") + name + " cache of sequence " +
                            std::to_string(seq_id) + " (" + std::to_string(length) +
                            " cached tokens): ";
  if (prefix_len < 0 || prefix_len > length) {
    return InvalidArgument(where + "prefix_len " + std::to_string(prefix_len) + " is outside [0, " +
                           std::to_string(length) + "]");
  }
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] < 0 || prefix_len + keep[i] >= length || (i > 0 && keep[i] <= keep[i - 1])) {
      return InvalidArgument(where + "keep[" + std::to_string(i) +
                             "] = " + std::to_string(keep[i]) +
                             "; keep must be strictly ascending within [0, " +
                             std::to_string(length - prefix_len) + ")");
    }
  }
  const int bt = options.kv_block_tokens;
  const std::vector<int32_t>& blk = cache->Blocks(seq_id);
  auto slot = [&](int64_t p) { return int64_t{blk[static_cast<size_t>(p / bt)]} * bt + p % bt; };
  std::vector<int64_t> pairs;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] == static_cast<int32_t>(i)) continue;
    pairs.push_back(slot(prefix_len + keep[i]));
    pairs.push_back(slot(prefix_len + static_cast<int64_t>(i)));
  }
  if (!pairs.empty()) {
    const int64_t count = static_cast<int64_t>(pairs.size() / 2);
    if (count > moves_capacity) {
      SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
      if (moves) cudaFree(moves);
      moves = nullptr;
      moves_capacity = 0;
      const int64_t capacity = std::max<int64_t>(count, 256);
      SPARK_CUDA_RETURN_IF_ERROR(
          cudaMalloc(&moves, static_cast<size_t>(capacity) * 2 * sizeof(int64_t)));
      moves_capacity = capacity;
    }
    // Pageable source: the copy has left `pairs` when cudaMemcpyAsync returns.
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(moves, pairs.data(), pairs.size() * sizeof(int64_t),
                                               cudaMemcpyHostToDevice, stream));
    const CudaKvShape& shape = cache->shape();
    const int elem_bytes = KvElemBytes(shape.dtype);
    const int64_t matrix_elems = (static_cast<const uint8_t*>(cache->values(0)) -
                                  static_cast<const uint8_t*>(cache->keys(0))) /
                                 elem_bytes;
    SPARK_CUDA_RETURN_IF_ERROR(KvCompact(cache->keys(0), elem_bytes, 2 * shape.num_layers,
                                         matrix_elems, shape.kv_heads, shape.block_tokens,
                                         shape.head_dim, moves, static_cast<int>(count), stream));
  }
  return cache->Truncate(seq_id, prefix_len + static_cast<int64_t>(keep.size()));
}

// ---- CudaBackend -------------------------------------------------------------------------

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBackend::~CudaBackend() = default;

Result<std::unique_ptr<CudaBackend>> CudaBackend::Create(ModelWeights weights, Communicator* comm,
                                                         const CudaBackendOptions& options) {
  auto impl = std::make_unique<Impl>();
  SPARK_RETURN_IF_ERROR(
      impl->Init(weights.config, weights.tp_rank, weights.tp_size, comm, options));
  const int local_kv = weights.config.head_dim > 0 && !weights.layers.empty()
                           ? static_cast<int>(weights.layers[0].k.out / weights.config.head_dim)
                           : impl->local_kv;
  if (local_kv != impl->local_kv) {
    return InvalidArgument("k_proj of layer 0 holds " + std::to_string(local_kv) +
                           " kv heads, expected " + std::to_string(impl->local_kv) +
                           engine::kWeightMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(engine::ValidateModelWeights(weights, impl->local_q, impl->local_kv));
  SPARK_RETURN_IF_ERROR(impl->CheckFits(WeightBytes(weights, options.fuse_shared_experts)));
  SPARK_RETURN_IF_ERROR(impl->UploadModel(weights));
  SPARK_RETURN_IF_ERROR(impl->Finish());
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::CreateDummy(const ModelConfig& config,
                                                              const DummyWeightsSpec& spec,
                                                              Communicator* comm,
                                                              const CudaBackendOptions& options) {
  if (spec.max_layers == 0 || spec.max_layers < -1) {
    return InvalidArgument("max_layers must be -1 (all) or > 0, got " +
                           std::to_string(spec.max_layers));
  }
  SPARK_RETURN_IF_ERROR(engine::ValidateTensorParallel(config, std::max(1, spec.tp_size)));
  ModelConfig cfg = config;
  if (spec.max_layers > 0) cfg.num_hidden_layers = std::min(spec.max_layers, cfg.num_hidden_layers);
  const int mtp_layer =
      spec.mtp && config.num_nextn_predict_layers > 0 ? config.num_hidden_layers : -1;
  auto impl = std::make_unique<Impl>();
  SPARK_RETURN_IF_ERROR(impl->Init(cfg, spec.tp_rank, spec.tp_size, comm, options));
  const int64_t bytes =
      EstimateWeightBytes(cfg, spec.tp_size, impl->local_q, impl->local_kv, impl->vocab_local,
                          mtp_layer >= 0, options.fuse_shared_experts);
  SPARK_RETURN_IF_ERROR(impl->CheckFits(bytes));
  SPARK_RETURN_IF_ERROR(impl->GenerateModel(spec, mtp_layer));
  SPARK_RETURN_IF_ERROR(impl->Finish());
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::Load(const std::filesystem::path& dir,
                                                       engine::LoadOptions load, Communicator* comm,
                                                       const CudaBackendOptions& options) {
  if (load.dummy) {
    return InvalidArgument(
        "CudaBackend::Load reads checkpoints; use CreateDummy for dummy weights");
  }
  SPARK_ASSIGN_OR_RETURN(ModelConfig cfg, engine::LoadModelConfig(dir));
  if (load.max_layers > 0) cfg.num_hidden_layers = std::min(load.max_layers, cfg.num_hidden_layers);
  auto impl = std::make_unique<Impl>();
  SPARK_RETURN_IF_ERROR(impl->Init(cfg, load.tp_rank, load.tp_size, comm, options));
  SPARK_RETURN_IF_ERROR(impl->CheckFits(EstimateWeightBytes(
      cfg, load.tp_size, impl->local_q, impl->local_kv, impl->vocab_local,
      load.load_mtp && cfg.num_nextn_predict_layers > 0, options.fuse_shared_experts)));
  impl->layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  Impl* raw = impl.get();
  load.on_layer = [raw](int l, LayerWeights&& layer) -> Status {
    if (l >= static_cast<int>(raw->layers.size())) {
      return Internal("streamed layer " + std::to_string(l) + " beyond the config");
    }
    LayerWeights owned = std::move(layer);  // freed when this call returns
    SPARK_RETURN_IF_ERROR(
        engine::ValidateLayerWeights(raw->config, l, owned, raw->local_q, raw->local_kv));
    return raw->UploadLayer(raw->layers[static_cast<size_t>(l)], l, owned);
  };
  SPARK_ASSIGN_OR_RETURN(ModelWeights top, engine::LoadModelWeights(dir, load));
  SPARK_RETURN_IF_ERROR(engine::ValidateTopWeights(top, impl->local_q, impl->local_kv));
  SPARK_RETURN_IF_ERROR(impl->UploadTop(top));
  if (!top.mtp.empty()) {
    SPARK_RETURN_IF_ERROR(
        engine::ValidateMtpWeights(impl->config, top.mtp.front(), impl->local_q, impl->local_kv));
    SPARK_RETURN_IF_ERROR(impl->UploadMtp(top.mtp.front()));
    top.mtp.clear();
  }
  SPARK_RETURN_IF_ERROR(impl->Finish());
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

const ModelConfig& CudaBackend::config() const { return impl_->config; }

Result<ForwardOutput> CudaBackend::Forward(const ForwardBatch& batch) {
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  ProgrammaticLaunchScope pdl(impl_->options.programmatic_launch);
  return impl_->Forward(batch);
}

void CudaBackend::Release(uint64_t seq_id) {
  if (seq_id == kPaddingSequence) return;  // the decode graphs' block stays
  impl_->kv->Release(seq_id);
  if (impl_->mtp_kv) impl_->mtp_kv->Release(seq_id);
}
CudaGraphStats CudaBackend::graph_stats() const { return impl_->graph_stats; }
int64_t CudaBackend::FreeKvTokens() const {
  const int64_t free_tokens = impl_->kv->FreeTokens();
  return impl_->mtp_kv ? std::min(free_tokens, impl_->mtp_kv->FreeTokens()) : free_tokens;
}
bool CudaBackend::SupportsSpeculation() const { return impl_->has_mtp; }
Result<ForwardOutput> CudaBackend::ForwardMtp(const MtpBatch& batch) {
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  ProgrammaticLaunchScope pdl(impl_->options.programmatic_launch);
  return impl_->ForwardMtp(batch);
}
int64_t CudaBackend::CachedTokens(uint64_t seq_id, CacheKind kind) const {
  if (kind == CacheKind::kTarget) return impl_->kv->Length(seq_id);
  return impl_->mtp_kv ? impl_->mtp_kv->Length(seq_id) : 0;
}
Status CudaBackend::KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                                     const std::vector<int32_t>& keep) {
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(impl_->options.device));
  return impl_->KeepCacheEntries(seq_id, kind, prefix_len, keep);
}
int64_t CudaBackend::CachedTokens(uint64_t seq_id) const { return impl_->kv->Length(seq_id); }
Status CudaBackend::TruncateSequence(uint64_t seq_id, int64_t length) {
  if (seq_id == kPaddingSequence) {
    return InvalidArgument("sequence id 2^64-1 is reserved; use another id");
  }
  return impl_->kv->Truncate(seq_id, length);
}
int64_t CudaBackend::KvCapacityTokens() const {
  // Without the decode graphs' padding block.
  return impl_->kv->CapacityTokens() - (impl_->pad_block >= 0 ? impl_->options.kv_block_tokens : 0);
}
int64_t CudaBackend::weight_bytes() const {
  int64_t moe = 0;
  for (const LayerDev& D : impl_->layers) moe += D.moe_owned.bytes();
  moe += impl_->mtp.layer.moe_owned.bytes();
  return impl_->weights.bytes() + moe;
}
int64_t CudaBackend::workspace_bytes() const {
  return impl_->work.bytes() + impl_->linear->workspace_bytes() + impl_->moe_ws.bytes();
}
int64_t CudaBackend::kv_cache_bytes() const { return impl_->kv->bytes(); }
cudaStream_t CudaBackend::stream() const { return impl_->stream; }
const CudaBackendOptions& CudaBackend::options() const { return impl_->options; }
const std::vector<DenseGemvChoice>& CudaBackend::dense_gemv_choices() const {
  return impl_->dense_gemv_choices;
}

}  // namespace spark::cuda
