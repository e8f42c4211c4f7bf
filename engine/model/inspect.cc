#include "engine/model/inspect.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "engine/model/loader.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor_names.h"

namespace spark::engine {
namespace {

using Json = nlohmann::json;

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsScaleName(const std::string& name) {
  return EndsWith(name, ".weight_scale") || EndsWith(name, ".weight_scale_inv") ||
         EndsWith(name, ".input_scale");
}

// Layer index of "model.layers.{l}.*", else -1.
int LayerOf(const std::string& name) {
  static const std::string kPrefix = "model.layers.";
  if (name.rfind(kPrefix, 0) != 0) return -1;
  return std::atoi(name.c_str() + kPrefix.size());
}

std::string QuantDescription(const QuantConfig& q) {
  switch (q.method) {
    case QuantMethod::kNone:
      return "none";
    case QuantMethod::kFp8PerChannel:
      return "fp8 e4m3, per-channel weight scales, dynamic per-token activations "
             "(compressed-tensors)";
    case QuantMethod::kFp8Block:
      return "fp8 e4m3, " + std::to_string(q.block_n) + "x" + std::to_string(q.block_k) +
             " block weight scales (" +
             (q.scale_inv_name ? std::string("quant_method fp8, weight_scale_inv")
                               : std::string("compressed-tensors, weight_scale")) +
             ")";
  }
  return "?";
}

std::string HumanCount(int64_t n) {
  char buf[64];
  const double d = static_cast<double>(n);
  if (d >= 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2fB", d / 1e9);
  } else if (d >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2fM", d / 1e6);
  } else if (d >= 1e3) {
    std::snprintf(buf, sizeof(buf), "%.1fK", d / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(n));
  }
  return buf;
}

std::string HumanBytes(int64_t n) {
  char buf[64];
  const double d = static_cast<double>(n);
  if (d >= 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", d / (1024.0 * 1024 * 1024));
  } else if (d >= 1024.0 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", d / (1024.0 * 1024));
  } else if (d >= 1024.0) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", d / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(n));
  }
  return buf;
}

}  // namespace

Result<CheckpointSummary> InspectCheckpoint(const std::filesystem::path& dir, int tp_size) {
  CheckpointSummary s;
  SPARK_ASSIGN_OR_RETURN(s.config, LoadModelConfig(dir));
  SPARK_RETURN_IF_ERROR(ValidateTensorParallel(s.config, tp_size));
  SPARK_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(dir));
  const ModelConfig& c = s.config;
  s.tp_size = tp_size;
  s.num_files = static_cast<int>(ckpt.num_files());
  s.quantization = QuantDescription(c.quant);
  for (int l = 0; l < c.num_hidden_layers; ++l) ++(c.IsMoeLayer(l) ? s.moe_layers : s.dense_layers);

  std::unordered_map<std::string, TensorSpec> specs;
  for (TensorSpec& spec : ExpectedTensors(c, true)) specs.emplace(spec.name, std::move(spec));

  std::set<int> mtp_layers;
  int64_t expert_params = 0;  // routed experts of the main layers
  for (const std::string& name : ckpt.names()) {
    SPARK_ASSIGN_OR_RETURN(TensorView view, ckpt.Get(name));
    ++s.num_tensors;
    s.checkpoint_bytes += static_cast<int64_t>(view.nbytes);
    DTypeUsage& usage = s.dtypes[std::string(DTypeName(view.dtype))];
    ++usage.tensors;
    usage.bytes += static_cast<int64_t>(view.nbytes);

    const int layer = LayerOf(name);
    const bool mtp = layer >= c.num_hidden_layers;
    if (mtp) mtp_layers.insert(layer);
    const bool mtp_copy = mtp && (name.find(".embed_tokens.") != std::string::npos ||
                                  name.find(".shared_head.head.") != std::string::npos);
    const bool scale = IsScaleName(name);

    // Which spec (and so TP split) this tensor follows: its own, or its weight's for scales.
    std::string spec_name = name;
    if (scale) spec_name = name.substr(0, name.rfind('.')) + ".weight";
    auto it = specs.find(spec_name);
    const TensorSpec* spec = it == specs.end() ? nullptr : &it->second;

    if (!scale) {
      const int64_t numel = view.numel();
      if (mtp) {
        if (!mtp_copy) s.mtp_params += numel;
      } else {
        s.total_params += numel;
        if (spec != nullptr && spec->expert) expert_params += numel;
      }
    }
    if (mtp_copy) continue;  // the loader reuses the main embedding and head

    // Bytes this rank keeps.
    double fraction = 1.0;
    if (spec != nullptr) {
      int64_t full = 1;
      for (int64_t d : spec->shape) full *= d;
      const bool per_channel_scale_of_cols = scale && spec->split == TpSplit::kCols &&
                                             view.shape.size() >= 1 &&
                                             (view.shape.size() == 1 || view.shape[1] == 1);
      if (full > 0 && !per_channel_scale_of_cols) {
        fraction =
            static_cast<double>(LocalElements(*spec, c, tp_size)) / static_cast<double>(full);
      }
    }
    int64_t elem_bytes = static_cast<int64_t>(DTypeSize(view.dtype));
    if (scale || (spec != nullptr && spec->role != TensorRole::kLinear &&
                  spec->role != TensorRole::kEmbedding)) {
      elem_bytes = 4;  // kept as float
    }
    const auto bytes =
        static_cast<int64_t>(static_cast<double>(view.numel()) * fraction) * elem_bytes;
    (mtp ? s.mtp_weight_bytes_per_rank : s.weight_bytes_per_rank) += bytes;
  }
  if (c.tie_word_embeddings && ckpt.Has("model.embed_tokens.weight")) {
    // The loader copies this rank's vocabulary rows of the embedding as lm_head.
    TensorView embed = *ckpt.Get("model.embed_tokens.weight");
    TensorSpec head{
        "lm_head.weight", {c.vocab_size, c.hidden_size}, TensorRole::kLinear, TpSplit::kVocabRows};
    s.weight_bytes_per_rank +=
        LocalElements(head, c, tp_size) * static_cast<int64_t>(DTypeSize(embed.dtype));
  }
  s.mtp_layers = static_cast<int>(mtp_layers.size());
  s.active_params = s.total_params;
  if (c.n_routed_experts > 0) {
    s.active_params =
        s.total_params - expert_params + expert_params * c.num_experts_per_tok / c.n_routed_experts;
  }
  const int64_t local_kv = std::max(1, c.num_key_value_heads / tp_size);
  const int64_t kv_per_layer = 2 * local_kv * c.head_dim * 2;
  s.kv_bytes_per_token_per_rank = kv_per_layer * c.num_hidden_layers;
  s.mtp_kv_bytes_per_token_per_rank = kv_per_layer * s.mtp_layers;
  return s;
}

std::string SummaryText(const CheckpointSummary& s) {
  const ModelConfig& c = s.config;
  std::string out;
  auto line = [&out](const std::string& l) { out += l + "\n"; };
  line("architecture: " + c.architecture_name);
  std::string layers = "layers: " + std::to_string(c.num_hidden_layers) + " (" +
                       std::to_string(s.dense_layers) + " dense, " + std::to_string(s.moe_layers) +
                       " MoE)";
  if (s.mtp_layers > 0) layers += " + " + std::to_string(s.mtp_layers) + " MTP";
  line(layers);
  line("hidden " + std::to_string(c.hidden_size) + ", heads " +
       std::to_string(c.num_attention_heads) + " (kv " + std::to_string(c.num_key_value_heads) +
       ", head_dim " + std::to_string(c.head_dim) + ", rotary_dim " + std::to_string(c.rotary_dim) +
       "), vocab " + std::to_string(c.vocab_size));
  if (c.n_routed_experts > 0) {
    line("experts: " + std::to_string(c.n_routed_experts) + " routed (top-" +
         std::to_string(c.num_experts_per_tok) + ") + " + std::to_string(c.n_shared_experts) +
         " shared, moe_intermediate " + std::to_string(c.moe_intermediate_size) +
         ", dense intermediate " + std::to_string(c.intermediate_size));
  } else {
    line("intermediate " + std::to_string(c.intermediate_size));
  }
  std::string params = "parameters: total " + HumanCount(s.total_params) + " (" +
                       std::to_string(s.total_params) + ")";
  if (c.n_routed_experts > 0) {
    params += ", active per token " + HumanCount(s.active_params) + " (" +
              std::to_string(s.active_params) + ")";
  }
  if (s.mtp_params > 0) params += ", MTP " + HumanCount(s.mtp_params);
  line(params);
  line("tensors: " + std::to_string(s.num_tensors) + " in " + std::to_string(s.num_files) +
       " file(s), " + HumanBytes(s.checkpoint_bytes));
  std::string dtypes = "dtypes:";
  bool first = true;
  for (const auto& [name, usage] : s.dtypes) {
    dtypes += std::string(first ? " " : ", ") + name + " " + std::to_string(usage.tensors) +
              " tensors (" + HumanBytes(usage.bytes) + ")";
    first = false;
  }
  line(dtypes);
  line("quantization: " + s.quantization);
  std::string mem = "memory per rank at tp=" + std::to_string(s.tp_size) + ": weights " +
                    HumanBytes(s.weight_bytes_per_rank);
  if (s.mtp_weight_bytes_per_rank > 0)
    mem += " (+MTP " + HumanBytes(s.mtp_weight_bytes_per_rank) + ")";
  mem += ", KV cache " + HumanBytes(s.kv_bytes_per_token_per_rank) + " per token (bf16";
  if (s.mtp_kv_bytes_per_token_per_rank > 0) {
    mem += "; +MTP " + HumanBytes(s.mtp_kv_bytes_per_token_per_rank);
  }
  mem += ")";
  line(mem);
  return out;
}

std::string SummaryJson(const CheckpointSummary& s) {
  const ModelConfig& c = s.config;
  Json dtypes = Json::object();
  for (const auto& [name, usage] : s.dtypes) {
    dtypes[name] = {{"tensors", usage.tensors}, {"bytes", usage.bytes}};
  }
  std::string method = "none";
  if (c.quant.method == QuantMethod::kFp8PerChannel) method = "fp8_per_channel";
  if (c.quant.method == QuantMethod::kFp8Block) method = "fp8_block";
  Json j = {{"architecture", c.architecture_name},
            {"num_hidden_layers", c.num_hidden_layers},
            {"dense_layers", s.dense_layers},
            {"moe_layers", s.moe_layers},
            {"mtp_layers", s.mtp_layers},
            {"hidden_size", c.hidden_size},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size},
            {"n_routed_experts", c.n_routed_experts},
            {"num_experts_per_tok", c.num_experts_per_tok},
            {"n_shared_experts", c.n_shared_experts},
            {"total_params", s.total_params},
            {"active_params", s.active_params},
            {"mtp_params", s.mtp_params},
            {"num_tensors", s.num_tensors},
            {"num_files", s.num_files},
            {"checkpoint_bytes", s.checkpoint_bytes},
            {"dtypes", dtypes},
            {"quantization", {{"method", method}, {"description", s.quantization}}},
            {"tp_size", s.tp_size},
            {"weight_bytes_per_rank", s.weight_bytes_per_rank},
            {"mtp_weight_bytes_per_rank", s.mtp_weight_bytes_per_rank},
            {"kv_bytes_per_token_per_rank", s.kv_bytes_per_token_per_rank},
            {"mtp_kv_bytes_per_token_per_rank", s.mtp_kv_bytes_per_token_per_rank}};
  return j.dump(2) + "\n";
}

}  // namespace spark::engine
