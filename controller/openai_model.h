// ModelText: what the inference endpoints need to turn text into token ids and back for one run
// of a deployment, built from the tokenizer files the rank-0 agent sends (TokenizerFiles):
//   - the Tokenizer (tokenizer.json, required);
//   - the chat template family: chat_template.jinja, else tokenizer_config.json "chat_template"
//     (engine/text/chat/chat_template.h). A checkpoint without a template gets the family its
//     tokenizer's special tokens imply ([gMASK] + <|assistant|>: GLM-4.5; <|im_start|>: ChatML;
//     <|start_header_id|>: Llama-3), noted in template_source; none at all leaves chat
//     completions unavailable (a 400 that says so) while text completions still work;
//   - the ids that end a generation: generation_config.json "eos_token_id" (a number or a list)
//     and tokenizer_config.json "eos_token".
//
// ModelTextCache keeps one ModelText per deployment, keyed by the identity of the run's files:
// a new run with the same files reuses it, different files rebuild it. Building a large
// tokenizer takes a while; concurrent callers for the same files wait for one build.
//
// Thread safety: ModelText is immutable once built (shared by many requests). ModelTextCache is
// internally synchronised.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/text/chat/chat_template.h"
#include "engine/text/tokenizer.h"
#include "spark.pb.h"

namespace spark::controller {

struct ModelText {
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::optional<engine::chat::ChatTemplate> chat_template;
  std::string template_source;  // where the template came from, or why there is none
  std::vector<int32_t> eos_token_ids;
  std::string files_key;  // concatenated SHA-256 of the files it was built from
};

// Builds a ModelText. InvalidArgument / Unimplemented naming the file when tokenizer.json is
// missing or unusable.
Result<std::shared_ptr<const ModelText>> BuildModelText(
    const std::vector<spark::v1::TokenizerFile>& files);

class ModelTextCache {
 public:
  // The ModelText for `deployment` built from `files` (cached).
  Result<std::shared_ptr<const ModelText>> Get(const std::string& deployment,
                                               const std::vector<spark::v1::TokenizerFile>& files);

 private:
  struct Entry {
    std::string files_key;
    std::shared_ptr<std::once_flag> once;
    std::shared_ptr<Result<std::shared_ptr<const ModelText>>> result;
  };
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace spark::controller
