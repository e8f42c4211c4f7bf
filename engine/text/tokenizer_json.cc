// Tokenizer::FromFile / FromJson: reads a Hugging Face tokenizer.json into the pipeline
// components (engine/text/*). Every error names the JSON path and, where possible, the fix.

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/text/added_vocabulary.h"
#include "engine/text/bpe_model.h"
#include "engine/text/normalizer.h"
#include "engine/text/pre_tokenizer.h"
#include "engine/text/tokenizer.h"

namespace spark::engine {
namespace {

using nlohmann::json;

Status Bad(const std::string& where, const std::string& what) {
  return InvalidArgument("tokenizer.json: " + where + " " + what);
}

Status Unsupported(const std::string& component, const std::string& type) {
  return Unimplemented("tokenizer.json: " + component + " type '" + type +
                       "' is not supported yet");
}

// The "type" of a component object.
Result<std::string> TypeOf(const json& j, const std::string& where) {
  if (!j.is_object()) return Bad(where, "must be an object or null");
  const auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return Bad(where, "has no string field 'type'");
  return it->get<std::string>();
}

Result<bool> OptionalBool(const json& j, const char* key, bool fallback, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return Bad(where + "." + key, "must be true or false");
  return it->get<bool>();
}

Result<std::optional<std::string>> OptionalString(const json& j, const char* key,
                                                  const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return Bad(where + "." + key, "must be a string or null");
  return std::optional<std::string>(it->get<std::string>());
}

Result<const json*> RequiredArray(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return Bad(where + "." + key, "must be an array");
  return &*it;
}

Status ParseNormalizer(const json& j, const std::string& where,
                       std::vector<text::NormalizationForm>* forms) {
  SPARK_ASSIGN_OR_RETURN(const std::string type, TypeOf(j, where));
  if (type == "NFC") {
    forms->push_back(text::NormalizationForm::kNfc);
  } else if (type == "NFD") {
    forms->push_back(text::NormalizationForm::kNfd);
  } else if (type == "NFKC") {
    forms->push_back(text::NormalizationForm::kNfkc);
  } else if (type == "NFKD") {
    forms->push_back(text::NormalizationForm::kNfkd);
  } else if (type == "Sequence") {
    SPARK_ASSIGN_OR_RETURN(const json* items, RequiredArray(j, "normalizers", where));
    for (size_t i = 0; i < items->size(); ++i) {
      SPARK_RETURN_IF_ERROR(
          ParseNormalizer((*items)[i], where + ".normalizers[" + std::to_string(i) + "]", forms));
    }
  } else {
    return Unsupported("normalizer", type);
  }
  return Status::Ok();
}

Result<text::SplitBehavior> ParseBehavior(const json& j, const std::string& where) {
  const auto it = j.find("behavior");
  if (it == j.end() || !it->is_string()) return Bad(where + ".behavior", "must be a string");
  const std::string b = it->get<std::string>();
  if (b == "Removed") return text::SplitBehavior::kRemoved;
  if (b == "Isolated") return text::SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return text::SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return text::SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return text::SplitBehavior::kContiguous;
  return Bad(where + ".behavior",
             "'" + b +
                 "' is unknown; expected Removed, Isolated, MergedWithPrevious, "
                 "MergedWithNext or Contiguous");
}

// PCRE2 form of a literal string pattern.
std::string QuoteLiteral(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}/-").find(c) != std::string_view::npos) {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

Status ParsePreTokenizer(const json& j, const std::string& where,
                         std::vector<text::PreTokenizerStep>* steps, bool* needs_gpt2) {
  SPARK_ASSIGN_OR_RETURN(const std::string type, TypeOf(j, where));
  if (type == "Sequence") {
    SPARK_ASSIGN_OR_RETURN(const json* items, RequiredArray(j, "pretokenizers", where));
    for (size_t i = 0; i < items->size(); ++i) {
      SPARK_RETURN_IF_ERROR(ParsePreTokenizer(
          (*items)[i], where + ".pretokenizers[" + std::to_string(i) + "]", steps, needs_gpt2));
    }
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    text::ByteLevelStep step;
    SPARK_ASSIGN_OR_RETURN(step.add_prefix_space, OptionalBool(j, "add_prefix_space", true, where));
    SPARK_ASSIGN_OR_RETURN(step.use_regex, OptionalBool(j, "use_regex", true, where));
    *needs_gpt2 = *needs_gpt2 || step.use_regex;
    steps->push_back(step);
    return Status::Ok();
  }
  if (type == "Split") {
    const auto pattern = j.find("pattern");
    if (pattern == j.end() || !pattern->is_object()) {
      return Bad(where + ".pattern", "must be an object {\"Regex\": ...} or {\"String\": ...}");
    }
    std::string source;
    if (const auto re = pattern->find("Regex"); re != pattern->end() && re->is_string()) {
      source = re->get<std::string>();
    } else if (const auto s = pattern->find("String"); s != pattern->end() && s->is_string()) {
      source = QuoteLiteral(s->get<std::string>());
    } else {
      return Bad(where + ".pattern", "must hold a string under \"Regex\" or \"String\"");
    }
    auto regex = text::Regex::Compile(source);
    if (!regex.ok()) return regex.status().WithContext("tokenizer.json: " + where + ".pattern");
    text::SplitStep step{std::move(regex).value()};
    SPARK_ASSIGN_OR_RETURN(step.behavior, ParseBehavior(j, where));
    SPARK_ASSIGN_OR_RETURN(step.invert, OptionalBool(j, "invert", false, where));
    steps->push_back(std::move(step));
    return Status::Ok();
  }
  return Unsupported("pre_tokenizer", type);
}

// Adds the ids that a post_processor puts before and after a single sequence.
Status ParsePostProcessor(const json& j, const std::string& where, std::vector<int32_t>* prefix,
                          std::vector<int32_t>* suffix) {
  SPARK_ASSIGN_OR_RETURN(const std::string type, TypeOf(j, where));
  if (type == "ByteLevel") return Status::Ok();  // offsets only
  if (type == "Sequence") {
    SPARK_ASSIGN_OR_RETURN(const json* items, RequiredArray(j, "processors", where));
    for (size_t i = 0; i < items->size(); ++i) {
      SPARK_RETURN_IF_ERROR(ParsePostProcessor(
          (*items)[i], where + ".processors[" + std::to_string(i) + "]", prefix, suffix));
    }
    return Status::Ok();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    int32_t ids[2];
    const char* keys[2] = {"cls", "sep"};
    for (int k = 0; k < 2; ++k) {
      const auto it = j.find(keys[k]);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
        return Bad(where + "." + keys[k], "must be [token, id]");
      }
      ids[k] = (*it)[1].get<int32_t>();
    }
    prefix->insert(prefix->begin(), ids[0]);
    suffix->push_back(ids[1]);
    return Status::Ok();
  }
  if (type == "TemplateProcessing") {
    SPARK_ASSIGN_OR_RETURN(const json* single, RequiredArray(j, "single", where));
    const auto specials = j.find("special_tokens");
    std::vector<int32_t> before;
    std::vector<int32_t> after;
    int sequences = 0;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& item = (*single)[i];
      const std::string item_where = where + ".single[" + std::to_string(i) + "]";
      if (const auto seq = item.find("Sequence"); item.is_object() && seq != item.end()) {
        if (!seq->is_object() || seq->value("id", "") != "A") {
          return Bad(item_where, "must be the sequence \"A\" in a single-sequence template");
        }
        ++sequences;
        continue;
      }
      const auto st = item.is_object() ? item.find("SpecialToken") : item.end();
      if (st == item.end() || !st->is_object() || !st->contains("id") || !(*st)["id"].is_string()) {
        return Bad(item_where, "must be {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
      }
      const std::string name = (*st)["id"].get<std::string>();
      if (specials == j.end() || !specials->is_object() || !specials->contains(name)) {
        return Bad(where + ".special_tokens", "has no entry for '" + name + "'");
      }
      const json& entry = (*specials)[name];
      const auto entry_ids = entry.find("ids");
      if (entry_ids == entry.end() || !entry_ids->is_array()) {
        return Bad(where + ".special_tokens." + name + ".ids", "must be an array of ids");
      }
      for (const json& id : *entry_ids) {
        if (!id.is_number_integer()) {
          return Bad(where + ".special_tokens." + name + ".ids", "must hold integers");
        }
        (sequences == 0 ? before : after).push_back(id.get<int32_t>());
      }
    }
    if (sequences != 1) return Bad(where + ".single", "must contain the sequence \"A\" once");
    prefix->insert(prefix->begin(), before.begin(), before.end());
    suffix->insert(suffix->end(), after.begin(), after.end());
    return Status::Ok();
  }
  return Unsupported("post_processor", type);
}

Result<text::BpeConfig> ParseModel(const json& j) {
  const std::string where = "model";
  if (!j.is_object()) return Bad(where, "must be an object");
  std::string type = "BPE";
  if (const auto it = j.find("type"); it != j.end()) {
    if (!it->is_string()) return Bad(where + ".type", "must be a string");
    type = it->get<std::string>();
  }
  if (type != "BPE") {
    return Unimplemented("tokenizer.json: model type '" + type +
                         "' is not supported yet (only BPE)");
  }
  text::BpeConfig config;
  const auto vocab = j.find("vocab");
  if (vocab == j.end() || !vocab->is_object()) {
    return Bad(where + ".vocab", "must be an object mapping tokens to ids");
  }
  config.vocab.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer()) {
      return Bad(where + ".vocab", "maps '" + token + "' to a non-integer id");
    }
    config.vocab.emplace(token, id.get<int32_t>());
  }
  SPARK_ASSIGN_OR_RETURN(const json* merges, RequiredArray(j, "merges", where));
  config.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    if (m.is_string()) {  // legacy "a b"
      const std::string& line = m.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return Bad(where + ".merges[" + std::to_string(i) + "]",
                   "'" + line + "' must be two tokens separated by one space");
      }
      config.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      config.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Bad(where + ".merges[" + std::to_string(i) + "]", "must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  if (const auto dropout = j.find("dropout"); dropout != j.end() && !dropout->is_null()) {
    if (!dropout->is_number()) return Bad(where + ".dropout", "must be a number or null");
    if (dropout->get<double>() != 0.0) {
      return Unimplemented(
          "tokenizer.json: model.dropout is not supported (it is a training-time option); set "
          "it to null");
    }
  }
  SPARK_ASSIGN_OR_RETURN(config.unk_token, OptionalString(j, "unk_token", where));
  SPARK_ASSIGN_OR_RETURN(config.fuse_unk, OptionalBool(j, "fuse_unk", false, where));
  SPARK_ASSIGN_OR_RETURN(config.byte_fallback, OptionalBool(j, "byte_fallback", false, where));
  SPARK_ASSIGN_OR_RETURN(config.ignore_merges, OptionalBool(j, "ignore_merges", false, where));
  SPARK_ASSIGN_OR_RETURN(auto prefix, OptionalString(j, "continuing_subword_prefix", where));
  SPARK_ASSIGN_OR_RETURN(auto suffix, OptionalString(j, "end_of_word_suffix", where));
  config.continuing_subword_prefix = prefix.value_or("");
  config.end_of_word_suffix = suffix.value_or("");
  return config;
}

Result<std::vector<text::AddedToken>> ParseAddedTokens(const json& root) {
  std::vector<text::AddedToken> tokens;
  const auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return tokens;
  if (!it->is_array()) return Bad("added_tokens", "must be an array");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object()) return Bad(where, "must be an object");
    text::AddedToken token;
    const auto id = t.find("id");
    if (id == t.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > INT32_MAX) {
      return Bad(where + ".id", "must be a non-negative integer");
    }
    token.id = id->get<int32_t>();
    const auto content = t.find("content");
    if (content == t.end() || !content->is_string() || content->get<std::string>().empty()) {
      return Bad(where + ".content", "must be a non-empty string");
    }
    token.content = content->get<std::string>();
    SPARK_ASSIGN_OR_RETURN(token.special, OptionalBool(t, "special", false, where));
    SPARK_ASSIGN_OR_RETURN(token.single_word, OptionalBool(t, "single_word", false, where));
    SPARK_ASSIGN_OR_RETURN(token.lstrip, OptionalBool(t, "lstrip", false, where));
    SPARK_ASSIGN_OR_RETURN(token.rstrip, OptionalBool(t, "rstrip", false, where));
    SPARK_ASSIGN_OR_RETURN(token.normalized, OptionalBool(t, "normalized", !token.special, where));
    tokens.push_back(std::move(token));
  }
  return tokens;
}

}  // namespace

// Assembles a Tokenizer from parsed tokenizer.json (a friend of Tokenizer).
class TokenizerBuilder {
 public:
  static Result<std::unique_ptr<Tokenizer>> Build(const json& root) {
    if (!root.is_object()) return Bad("top level", "must be a JSON object");
    std::unique_ptr<Tokenizer> tok(new Tokenizer());

    const auto model = root.find("model");
    if (model == root.end()) return Bad("model", "is missing");
    SPARK_ASSIGN_OR_RETURN(text::BpeConfig config, ParseModel(*model));
    auto bpe = text::BpeModel::Create(std::move(config));
    if (!bpe.ok()) return std::move(bpe).status().WithContext("tokenizer.json: model");
    tok->model_ = std::move(bpe).value();

    if (const auto n = root.find("normalizer"); n != root.end() && !n->is_null()) {
      std::vector<text::NormalizationForm> forms;
      SPARK_RETURN_IF_ERROR(ParseNormalizer(*n, "normalizer", &forms));
      tok->normalizer_ = std::make_unique<text::Normalizer>(std::move(forms));
    }

    if (const auto p = root.find("pre_tokenizer"); p != root.end() && !p->is_null()) {
      std::vector<text::PreTokenizerStep> steps;
      bool needs_gpt2 = false;
      SPARK_RETURN_IF_ERROR(ParsePreTokenizer(*p, "pre_tokenizer", &steps, &needs_gpt2));
      std::unique_ptr<text::Regex> gpt2;
      if (needs_gpt2) {
        SPARK_ASSIGN_OR_RETURN(text::Regex re, text::Regex::Compile(text::kGpt2Pattern));
        gpt2 = std::make_unique<text::Regex>(std::move(re));
      }
      tok->pre_tokenizer_ = std::make_unique<text::PreTokenizer>(std::move(steps), std::move(gpt2));
    }

    if (const auto d = root.find("decoder"); d != root.end() && !d->is_null()) {
      SPARK_ASSIGN_OR_RETURN(const std::string type, TypeOf(*d, "decoder"));
      if (type != "ByteLevel") return Unsupported("decoder", type);
      tok->byte_level_decoder_ = true;
    }

    if (const auto pp = root.find("post_processor"); pp != root.end() && !pp->is_null()) {
      SPARK_RETURN_IF_ERROR(
          ParsePostProcessor(*pp, "post_processor", &tok->special_prefix_, &tok->special_suffix_));
    }

    SPARK_ASSIGN_OR_RETURN(std::vector<text::AddedToken> added, ParseAddedTokens(root));
    int64_t id_end = tok->model_->id_end();
    for (const text::AddedToken& t : added) id_end = std::max<int64_t>(id_end, t.id + 1);
    tok->id_end_ = id_end;
    tok->added_index_by_id_.assign(static_cast<size_t>(id_end), -1);
    for (size_t i = 0; i < added.size(); ++i) {
      tok->added_index_by_id_[added[i].id] = static_cast<int32_t>(i);
    }
    tok->added_ = std::make_unique<text::AddedVocabulary>(std::move(added), tok->normalizer_.get());

    // Special-ness follows the token string, as HF's is_special_token(content).
    std::unordered_map<std::string_view, bool> special_content;
    for (const text::AddedToken& t : tok->added_->tokens()) {
      if (t.special) special_content[t.content] = true;
    }
    tok->special_by_id_.assign(static_cast<size_t>(id_end), false);
    if (!special_content.empty()) {
      for (int64_t id = 0; id < id_end; ++id) {
        const std::string_view token = tok->IdToToken(static_cast<int32_t>(id));
        if (!token.empty() && special_content.count(token) != 0) tok->special_by_id_[id] = true;
      }
    }

    for (const int32_t id : tok->special_prefix_) {
      if (tok->IdToToken(id).empty()) {
        return Bad("post_processor", "adds id " + std::to_string(id) + ", which no token has");
      }
    }
    for (const int32_t id : tok->special_suffix_) {
      if (tok->IdToToken(id).empty()) {
        return Bad("post_processor", "adds id " + std::to_string(id) + ", which no token has");
      }
    }
    return tok;
  }
};

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  try {
    const json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                                  /*allow_exceptions=*/false);
    if (root.is_discarded()) {
      return InvalidArgument(
          "tokenizer.json: not valid JSON; the file is truncated or not a tokenizer.json");
    }
    return TokenizerBuilder::Build(root);
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("tokenizer.json: unexpected structure (") + e.what() + ")");
  }
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFound("cannot open tokenizer file " + path.string() +
                    "; check the path (it is the tokenizer.json next to the model weights)");
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return DataLoss("cannot read tokenizer file " + path.string());
  auto tokenizer = FromJson(buffer.str());
  if (!tokenizer.ok()) return std::move(tokenizer).status().WithContext(path.string());
  return tokenizer;
}

}  // namespace spark::engine
