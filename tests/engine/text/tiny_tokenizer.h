// Builds small tokenizer.json documents for the engine/text tests: a byte-level BPE whose
// first 256 ids are the 256 byte-level characters (id == byte value), plus merges and added
// tokens given by the test.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/text/byte_level.h"

namespace spark::engine::testing {

// Byte-level form of raw bytes ("a b" -> "aĠb").
inline std::string Bl(std::string_view bytes) {
  std::string out;
  text::AppendByteLevel(bytes, &out);
  return out;
}

// Ids of raw bytes in a TinyTokenizer without merges.
inline std::vector<int32_t> ByteIds(std::string_view bytes) {
  std::vector<int32_t> ids;
  for (char c : bytes) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

class TinyTokenizer {
 public:
  TinyTokenizer() {
    for (int b = 0; b < 256; ++b) vocab_[Bl(std::string(1, static_cast<char>(b)))] = b;
    root_ = {{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", nlohmann::json::array()},
             {"normalizer", nullptr},
             {"pre_tokenizer",
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", true}}},
             {"post_processor", nullptr},
             {"decoder",
              {{"type", "ByteLevel"},
               {"add_prefix_space", true},
               {"trim_offsets", true},
               {"use_regex", true}}}};
  }

  // Adds the merge (a, b) of raw-byte strings; the merged token gets the next id. Returns it.
  int32_t Merge(std::string_view a, std::string_view b) {
    merges_.emplace_back(Bl(a), Bl(b));
    const std::string merged = Bl(std::string(a) + std::string(b));
    if (!vocab_.contains(merged)) vocab_[merged] = next_id_++;
    return vocab_[merged].get<int32_t>();
  }

  // Adds a vocab token (raw bytes) without a merge. Returns its id.
  int32_t Token(std::string_view raw) {
    vocab_[Bl(raw)] = next_id_;
    return next_id_++;
  }

  struct Added {
    std::string content;
    bool special = true;
    bool lstrip = false;
    bool rstrip = false;
    bool single_word = false;
    bool normalized = false;
  };
  int32_t AddToken(const Added& a) {
    const int32_t id = 1000 + static_cast<int32_t>(root_["added_tokens"].size());
    root_["added_tokens"].push_back({{"id", id},
                                     {"content", a.content},
                                     {"single_word", a.single_word},
                                     {"lstrip", a.lstrip},
                                     {"rstrip", a.rstrip},
                                     {"normalized", a.normalized},
                                     {"special", a.special}});
    return id;
  }

  nlohmann::json& root() { return root_; }

  // The document; merges as ["a", "b"] pairs, or as legacy "a b" strings.
  std::string Json(bool legacy_merges = false) const {
    nlohmann::json doc = root_;
    nlohmann::json merges = nlohmann::json::array();
    for (const auto& [a, b] : merges_) {
      if (legacy_merges) {
        merges.push_back(a + " " + b);
      } else {
        merges.push_back({a, b});
      }
    }
    nlohmann::json model = {{"type", "BPE"},
                            {"dropout", nullptr},
                            {"unk_token", nullptr},
                            {"continuing_subword_prefix", nullptr},
                            {"end_of_word_suffix", nullptr},
                            {"fuse_unk", false},
                            {"byte_fallback", false},
                            {"ignore_merges", false},
                            {"vocab", vocab_},
                            {"merges", merges}};
    for (const auto& [key, value] : model_overrides_.items()) model[key] = value;
    doc["model"] = model;
    return doc.dump();
  }

  // Replaces model fields (e.g. ignore_merges) in the document.
  void SetModel(const std::string& key, nlohmann::json value) { model_overrides_[key] = value; }

 private:
  nlohmann::json root_;
  nlohmann::json vocab_ = nlohmann::json::object();
  nlohmann::json model_overrides_ = nlohmann::json::object();
  std::vector<std::pair<std::string, std::string>> merges_;
  int32_t next_id_ = 256;
};

}  // namespace spark::engine::testing
