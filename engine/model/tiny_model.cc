#include "engine/model/tiny_model.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <set>
#include <string_view>
#include <utility>

#include "common/check.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor_names.h"

namespace spark::engine {
namespace {

using Json = nlohmann::json;

constexpr int64_t kTinyVocab = 512;

// Text the tiny tokenizers learn their merges from (English prose and a little code).
constexpr std::string_view kCorpus = R"(The quick brown fox jumps over the lazy dog. The dog
was not amused, and the fox ran into the forest where the other animals were waiting for the
morning light. In the beginning there was only the river, the trees and the sound of the wind.
People came later; they built houses, roads and bridges, and they learned to read and write.
Reading is the art of listening to someone who is not in the room. Writing is the art of
speaking to someone who is not yet born. What is the weather like today? It is sunny and warm
in the city, but the forecast says that it will rain tomorrow in the north of the country.
A model is a simplified description of the world. Language models predict the next token from
the tokens that came before it. Tokens are pieces of words: common words are single tokens,
rare words are split into several pieces, and every byte can always be represented.
Please write a short function that returns the sum of two numbers, then explain how it works.
The assistant should think step by step, check the result, and answer the question clearly.
There are 365 days in a year, 24 hours in a day, 60 minutes in an hour and 60 seconds in a
minute. In 2024 the team released version 1.0 of the software; version 2.5 followed in 2025.

def add(a, b):
    """Return the sum of a and b."""
    return a + b

for i in range(10):
    print("value:", add(i, i * 2))

int main(int argc, char** argv) {
  std::vector<int> values = {1, 2, 3};
  for (int v : values) {
    std::cout << "value " << v << std::endl;
  }
  return 0;
}

{"name": "get_weather", "arguments": {"city": "Beijing", "unit": "celsius"}}
The function get_weather takes a city and a unit and returns the current temperature.
Question: what is the capital of France? Answer: the capital of France is Paris.
Question: how many legs does a spider have? Answer: a spider has eight legs.
)";

// GPT-2's bytes_to_unicode: (byte, code point) in vocabulary order.
std::vector<std::pair<int, int>> ByteOrder() {
  std::vector<std::pair<int, int>> order;
  std::set<int> direct;
  for (int b = '!'; b <= '~'; ++b) direct.insert(b);
  for (int b = 0xA1; b <= 0xAC; ++b) direct.insert(b);
  for (int b = 0xAE; b <= 0xFF; ++b) direct.insert(b);
  for (int b : direct) order.emplace_back(b, b);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (direct.count(b) == 0) order.emplace_back(b, 256 + n++);
  }
  return order;
}

std::string Utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

bool IsLetter(unsigned char c) { return std::isalpha(c) != 0 || c >= 0x80; }
bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// ASCII approximation of the GLM-4 / cl100k pre-tokenizer regex (exact for the corpus above:
// letters with one optional leading non-letter, up to 3 digits, punctuation runs with one
// optional leading space, newline runs, other whitespace).
std::vector<std::string> PreTokenize(std::string_view text, int max_digits) {
  std::vector<std::string> out;
  size_t i = 0;
  const size_t n = text.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < n) {
    const size_t start = i;
    const unsigned char c = at(i);
    if (c == '\'' && i + 1 < n && std::string_view("stmd").find(text[i + 1]) != std::string::npos &&
        !(i + 2 < n && IsLetter(at(i + 2)))) {
      i += 2;
    } else if (IsLetter(c) ||
               (!IsDigit(c) && c != '\n' && c != '\r' && i + 1 < n && IsLetter(at(i + 1)))) {
      if (!IsLetter(c)) ++i;
      while (i < n && IsLetter(at(i))) ++i;
    } else if (IsDigit(c)) {
      int k = 0;
      while (i < n && IsDigit(at(i)) && k < max_digits) {
        ++i;
        ++k;
      }
    } else if (!IsSpace(c) || (c == ' ' && i + 1 < n && !IsSpace(at(i + 1)) &&
                               !IsLetter(at(i + 1)) && !IsDigit(at(i + 1)))) {
      if (c == ' ') ++i;
      while (i < n && !IsSpace(at(i)) && !IsLetter(at(i)) && !IsDigit(at(i))) ++i;
      while (i < n && (at(i) == '\n' || at(i) == '\r')) ++i;
    } else {
      // Whitespace: a run ending in newlines, or spaces that leave the last one for the next
      // word (\s+(?!\S)).
      size_t j = i;
      while (j < n && IsSpace(at(j))) ++j;
      size_t last_nl = std::string_view::npos;
      for (size_t k = i; k < j; ++k) {
        if (at(k) == '\n' || at(k) == '\r') last_nl = k;
      }
      if (last_nl != std::string_view::npos) {
        i = last_nl + 1;
      } else if (j < n && j - i > 1) {
        i = j - 1;
      } else {
        i = j;
      }
    }
    if (i == start) ++i;
    out.emplace_back(text.substr(start, i - start));
  }
  return out;
}

struct Bpe {
  std::vector<std::string> vocab;  // id -> token string (byte-level unicode)
  std::vector<std::pair<std::string, std::string>> merges;
};

// Learns merges until the vocabulary has `target` tokens (or nothing is left to merge). Ties
// are broken by the lexicographically smallest pair, so the result is deterministic.
Bpe LearnBpe(std::string_view corpus, int64_t target, int max_digits) {
  Bpe bpe;
  std::vector<std::string> byte_symbol(256);
  for (auto [b, cp] : ByteOrder()) {
    byte_symbol[static_cast<size_t>(b)] = Utf8(cp);
    bpe.vocab.push_back(Utf8(cp));
  }
  std::map<std::vector<std::string>, int64_t> words;
  for (const std::string& w : PreTokenize(corpus, max_digits)) {
    std::vector<std::string> symbols;
    for (unsigned char c : w) symbols.push_back(byte_symbol[c]);
    ++words[symbols];
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> list(words.begin(), words.end());
  std::set<std::string> known(bpe.vocab.begin(), bpe.vocab.end());
  while (static_cast<int64_t>(bpe.vocab.size()) < target) {
    std::map<std::pair<std::string, std::string>, int64_t> counts;
    for (const auto& [symbols, count] : list) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) counts[{symbols[i], symbols[i + 1]}] += count;
    }
    if (counts.empty()) break;
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const auto pair = best->first;
    const std::string merged = pair.first + pair.second;
    bpe.merges.push_back(pair);
    if (known.insert(merged).second) bpe.vocab.push_back(merged);
    for (auto& [symbols, count] : list) {
      std::vector<std::string> next;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == pair.first && symbols[i + 1] == pair.second) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(symbols[i]);
        }
      }
      symbols = std::move(next);
    }
  }
  return bpe;
}

struct SpecialToken {
  const char* text;
  bool special;
};

const std::vector<SpecialToken>& SpecialTokens(TinyArch arch) {
  static const std::vector<SpecialToken> kGlm = {{"<|endoftext|>", true},
                                                 {"[MASK]", true},
                                                 {"[gMASK]", true},
                                                 {"[sMASK]", true},
                                                 {"<sop>", true},
                                                 {"<eop>", true},
                                                 {"<|system|>", true},
                                                 {"<|user|>", true},
                                                 {"<|assistant|>", true},
                                                 {"<|observation|>", true},
                                                 {"<think>", false},
                                                 {"</think>", false},
                                                 {"<tool_call>", false},
                                                 {"</tool_call>", false},
                                                 {"<arg_key>", false},
                                                 {"</arg_key>", false},
                                                 {"<arg_value>", false},
                                                 {"</arg_value>", false},
                                                 {"<tool_response>", false},
                                                 {"</tool_response>", false}};
  static const std::vector<SpecialToken> kLlama = {{"<|begin_of_text|>", true},
                                                   {"<|end_of_text|>", true},
                                                   {"<|start_header_id|>", true},
                                                   {"<|end_header_id|>", true},
                                                   {"<|eot_id|>", true}};
  static const std::vector<SpecialToken> kQwen = {
      {"<|endoftext|>", true}, {"<|im_start|>", true}, {"<|im_end|>", true},   {"<think>", false},
      {"</think>", false},     {"<tool_call>", false}, {"</tool_call>", false}};
  switch (arch) {
    case TinyArch::kGlm4Moe:
      return kGlm;
    case TinyArch::kLlama:
      return kLlama;
    case TinyArch::kQwen3Moe:
      return kQwen;
  }
  return kGlm;
}

int64_t SpecialId(TinyArch arch, std::string_view text) {
  const auto& specials = SpecialTokens(arch);
  for (size_t i = 0; i < specials.size(); ++i) {
    if (text == specials[i].text) {
      return kTinyVocab - static_cast<int64_t>(specials.size()) + static_cast<int64_t>(i);
    }
  }
  SPARK_CHECK(false) << "unknown special token " << text;
  return -1;
}

std::vector<int64_t> EosIds(TinyArch arch) {
  switch (arch) {
    case TinyArch::kGlm4Moe:
      return {SpecialId(arch, "<|endoftext|>"), SpecialId(arch, "<|user|>"),
              SpecialId(arch, "<|observation|>")};
    case TinyArch::kLlama:
      return {SpecialId(arch, "<|end_of_text|>"), SpecialId(arch, "<|eot_id|>")};
    case TinyArch::kQwen3Moe:
      return {SpecialId(arch, "<|im_end|>"), SpecialId(arch, "<|endoftext|>")};
  }
  return {};
}

int64_t PadId(TinyArch arch) {
  return arch == TinyArch::kLlama ? SpecialId(arch, "<|end_of_text|>")
                                  : SpecialId(arch, "<|endoftext|>");
}

constexpr const char* kGlmPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Json TokenizerJson(TinyArch arch) {
  const auto& specials = SpecialTokens(arch);
  const int max_digits = arch == TinyArch::kQwen3Moe ? 1 : 3;
  Bpe bpe = LearnBpe(kCorpus, kTinyVocab - static_cast<int64_t>(specials.size()), max_digits);
  Json vocab = Json::object();
  for (size_t i = 0; i < bpe.vocab.size(); ++i) vocab[bpe.vocab[i]] = i;
  Json merges = Json::array();
  for (const auto& [a, b] : bpe.merges) merges.push_back({a, b});
  Json added = Json::array();
  for (const SpecialToken& t : specials) {
    const int64_t id = SpecialId(arch, t.text);
    added.push_back({{"id", id},
                     {"content", t.text},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", t.special}});
  }
  Json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", false},
                     {"use_regex", false}};
  Json split = {{"type", "Split"},
                {"pattern", {{"Regex", arch == TinyArch::kQwen3Moe ? kQwenPattern : kGlmPattern}}},
                {"behavior", "Isolated"},
                {"invert", false}};
  Json tok = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", arch == TinyArch::kQwen3Moe ? Json{{"type", "NFC"}} : Json(nullptr)},
              {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
              {"post_processor", byte_level},
              {"decoder", byte_level},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}}}};
  return tok;
}

Json TokenizerConfigJson(TinyArch arch) {
  Json decoder = Json::object();
  for (const SpecialToken& t : SpecialTokens(arch)) {
    decoder[std::to_string(SpecialId(arch, t.text))] = {
        {"content", t.text}, {"lstrip", false},      {"normalized", false},
        {"rstrip", false},   {"single_word", false}, {"special", t.special}};
  }
  Json cfg = {{"added_tokens_decoder", decoder},
              {"clean_up_tokenization_spaces", false},
              {"model_max_length", 4096},
              {"tokenizer_class", "PreTrainedTokenizerFast"}};
  switch (arch) {
    case TinyArch::kGlm4Moe:
      cfg["eos_token"] = "<|endoftext|>";
      cfg["pad_token"] = "<|endoftext|>";
      cfg["do_lower_case"] = false;
      cfg["remove_space"] = false;
      break;
    case TinyArch::kLlama:
      cfg["bos_token"] = "<|begin_of_text|>";
      cfg["eos_token"] = "<|eot_id|>";
      cfg["pad_token"] = "<|end_of_text|>";
      break;
    case TinyArch::kQwen3Moe:
      cfg["eos_token"] = "<|im_end|>";
      cfg["pad_token"] = "<|endoftext|>";
      cfg["bos_token"] = nullptr;
      break;
  }
  return cfg;
}

Json GenerationConfigJson(TinyArch arch) {
  Json g = {{"eos_token_id", EosIds(arch)},
            {"pad_token_id", PadId(arch)},
            {"do_sample", true},
            {"temperature", arch == TinyArch::kQwen3Moe ? 0.6 : 1.0},
            {"top_p", 0.95},
            {"transformers_version", "5.17.0"}};
  if (arch == TinyArch::kLlama) g["bos_token_id"] = SpecialId(arch, "<|begin_of_text|>");
  return g;
}

Status WriteJson(const std::filesystem::path& path, const Json& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return PermissionDenied("cannot write " + path.string());
  return Status::Ok();
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Deterministic N(0, 1) stream keyed by (seed, tensor name): Box-Muller on a counter hash.
class NormalStream {
 public:
  NormalStream(uint64_t seed, const std::string& name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (char c : name) {
      h ^= static_cast<uint8_t>(c);
      h *= 0x100000001b3ull;
    }
    key_ = SplitMix64(h ^ SplitMix64(seed ^ 0x5eed));
  }
  float Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(SplitMix64(key_ + counter_++) >> 11) + 0.5) * 0x1p-53;
    const double u2 = static_cast<double>(SplitMix64(key_ + counter_++) >> 11) * 0x1p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = static_cast<float>(r * std::sin(2.0 * std::numbers::pi * u2));
    has_spare_ = true;
    return static_cast<float>(r * std::cos(2.0 * std::numbers::pi * u2));
  }

 private:
  uint64_t key_ = 0;
  uint64_t counter_ = 0;
  bool has_spare_ = false;
  float spare_ = 0.0f;
};

}  // namespace

Result<TinyArch> ParseTinyArch(std::string_view name) {
  if (name == "glm4moe") return TinyArch::kGlm4Moe;
  if (name == "llama") return TinyArch::kLlama;
  if (name == "qwen3moe") return TinyArch::kQwen3Moe;
  return InvalidArgument("unknown tiny architecture \"" + std::string(name) +
                         "\"; use glm4moe, llama or qwen3moe");
}

std::string TinyModelConfigJson(const TinyModelOptions& options) {
  const TinyArch arch = options.arch;
  const std::string dtype = options.dtype == DType::kF32 ? "float32" : "bfloat16";
  Json c;
  switch (arch) {
    case TinyArch::kGlm4Moe:
      c = {{"architectures", {"Glm4MoeForCausalLM"}},
           {"model_type", "glm4_moe"},
           {"vocab_size", kTinyVocab},
           {"hidden_size", 128},
           {"intermediate_size", 256},
           {"moe_intermediate_size", 128},
           {"num_hidden_layers", 3},
           {"num_attention_heads", 4},
           {"num_key_value_heads", 2},
           {"head_dim", 64},
           {"partial_rotary_factor", 0.5},
           {"rope_parameters",
            {{"rope_type", "default"}, {"rope_theta", 1000000.0}, {"partial_rotary_factor", 0.5}}},
           {"n_routed_experts", 8},
           {"n_shared_experts", 1},
           {"num_experts_per_tok", 2},
           {"first_k_dense_replace", 1},
           {"n_group", 1},
           {"topk_group", 1},
           {"routed_scaling_factor", 2.5},
           {"norm_topk_prob", true},
           {"use_qk_norm", true},
           {"attention_bias", true},
           {"attention_dropout", 0.0},
           {"hidden_act", "silu"},
           {"rms_norm_eps", 1e-5},
           {"max_position_embeddings", 4096},
           {"tie_word_embeddings", false},
           {"num_nextn_predict_layers", options.mtp ? 1 : 0},
           {"topk_method", "noaux_tc"},
           {"use_cache", true},
           {"dtype", dtype},
           {"transformers_version", "5.17.0"}};
      break;
    case TinyArch::kLlama:
      c = {{"architectures", {"LlamaForCausalLM"}},
           {"model_type", "llama"},
           {"vocab_size", kTinyVocab},
           {"hidden_size", 128},
           {"intermediate_size", 256},
           {"num_hidden_layers", 2},
           {"num_attention_heads", 4},
           {"num_key_value_heads", 2},
           {"head_dim", 32},
           {"rope_theta", 500000.0},
           {"rope_scaling",
            {{"rope_type", "llama3"},
             {"factor", 8.0},
             {"low_freq_factor", 1.0},
             {"high_freq_factor", 4.0},
             {"original_max_position_embeddings", 8192}}},
           {"attention_bias", false},
           {"mlp_bias", false},
           {"hidden_act", "silu"},
           {"rms_norm_eps", 1e-5},
           {"max_position_embeddings", 4096},
           {"tie_word_embeddings", false},
           {"torch_dtype", dtype}};
      break;
    case TinyArch::kQwen3Moe:
      c = {{"architectures", {"Qwen3MoeForCausalLM"}},
           {"model_type", "qwen3_moe"},
           {"vocab_size", kTinyVocab},
           {"hidden_size", 128},
           {"intermediate_size", 256},
           {"moe_intermediate_size", 128},
           {"num_hidden_layers", 3},
           {"num_attention_heads", 4},
           {"num_key_value_heads", 2},
           {"head_dim", 64},
           {"num_experts", 8},
           {"num_experts_per_tok", 2},
           {"norm_topk_prob", true},
           {"decoder_sparse_step", 1},
           {"mlp_only_layers", {0}},
           {"rope_theta", 1000000.0},
           {"rope_scaling", nullptr},
           {"attention_bias", false},
           {"hidden_act", "silu"},
           {"rms_norm_eps", 1e-6},
           {"max_position_embeddings", 4096},
           {"tie_word_embeddings", false},
           {"torch_dtype", dtype}};
      break;
  }
  if (options.mtp && arch != TinyArch::kGlm4Moe) c["num_nextn_predict_layers"] = 0;
  const std::vector<int64_t> eos = EosIds(arch);
  c["eos_token_id"] = eos;
  c["pad_token_id"] = PadId(arch);
  if (arch == TinyArch::kLlama) c["bos_token_id"] = SpecialId(arch, "<|begin_of_text|>");
  return c.dump(2) + "\n";
}

Status WriteRandomCheckpoint(const std::filesystem::path& dir, const std::string& config_json,
                             uint64_t seed, DType dtype, int64_t max_shard_bytes) {
  if (dtype != DType::kBF16 && dtype != DType::kF32 && dtype != DType::kF16) {
    return InvalidArgument("random checkpoints are BF16, F16 or F32, not " +
                           std::string(DTypeName(dtype)));
  }
  SPARK_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_json));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return PermissionDenied("cannot create " + dir.string() + ": " + ec.message());
  {
    std::ofstream out(dir / "config.json", std::ios::binary | std::ios::trunc);
    out << config_json;
    out.close();
    if (!out) return PermissionDenied("cannot write " + (dir / "config.json").string());
  }
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  const std::vector<TensorSpec> specs = ExpectedTensors(config, true);
  for (const TensorSpec& spec : specs) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    std::vector<float> values(static_cast<size_t>(numel));
    // MTP copies of the embedding and head are the main tensors, as in real checkpoints.
    const bool mtp_embed = spec.layer >= 0 && spec.role == TensorRole::kEmbedding;
    const bool mtp_head = spec.name.find(".shared_head.head.") != std::string::npos;
    if (mtp_embed || mtp_head) {
      const std::string source = mtp_embed                    ? "model.embed_tokens.weight"
                                 : config.tie_word_embeddings ? "model.embed_tokens.weight"
                                                              : "lm_head.weight";
      NormalStream s(seed, source);
      const float inv = 1.0f / std::sqrt(static_cast<float>(spec.shape[1]));
      for (float& v : values) v = s.Next() * inv;
    } else {
      NormalStream s(seed, spec.name);
      switch (spec.role) {
        case TensorRole::kLinear:
        case TensorRole::kEmbedding:
        case TensorRole::kRouter: {
          const float inv = 1.0f / std::sqrt(static_cast<float>(spec.shape[1]));
          for (float& v : values) v = s.Next() * inv;
          break;
        }
        case TensorRole::kNorm:
          for (float& v : values) v = 1.0f + 0.1f * s.Next();
          break;
        case TensorRole::kBias:
          for (float& v : values) v = 0.02f * s.Next();
          break;
        case TensorRole::kRouterBias:
          for (float& v : values) v = 0.05f * s.Next();
          break;
      }
    }
    const DType stored = spec.role == TensorRole::kRouterBias ? DType::kF32 : dtype;
    SPARK_RETURN_IF_ERROR(writer.AddFloat(spec.name, stored, spec.shape, values));
  }
  return writer.WriteDir(dir, max_shard_bytes);
}

Status WriteTinyModel(const std::filesystem::path& dir, const TinyModelOptions& options) {
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF32) {
    return InvalidArgument("tiny models are bf16 or f32");
  }
  if (options.mtp && options.arch != TinyArch::kGlm4Moe) {
    return InvalidArgument(
        "--mtp is only available for --arch glm4moe (MTP layers are a GLM-4 "
        "MoE feature)");
  }
  SPARK_RETURN_IF_ERROR(
      WriteRandomCheckpoint(dir, TinyModelConfigJson(options), options.seed, options.dtype));
  SPARK_RETURN_IF_ERROR(
      WriteJson(dir / "generation_config.json", GenerationConfigJson(options.arch)));
  SPARK_RETURN_IF_ERROR(WriteJson(dir / "tokenizer.json", TokenizerJson(options.arch)));
  SPARK_RETURN_IF_ERROR(
      WriteJson(dir / "tokenizer_config.json", TokenizerConfigJson(options.arch)));
  return Status::Ok();
}

}  // namespace spark::engine
