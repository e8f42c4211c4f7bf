#include "controller/openai_model.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "common/log.h"

namespace spark::controller {
namespace {

using nlohmann::json;
namespace chat = engine::chat;

const spark::v1::TokenizerFile* FindFile(const std::vector<spark::v1::TokenizerFile>& files,
                                         const std::string& name) {
  for (const spark::v1::TokenizerFile& f : files) {
    if (f.name() == name) return &f;
  }
  return nullptr;
}

std::string FilesKey(const std::vector<spark::v1::TokenizerFile>& files) {
  std::string key;
  for (const spark::v1::TokenizerFile& f : files) {
    key += f.name() + "=" + (f.sha256().empty() ? std::to_string(f.content().size()) : f.sha256()) +
           ";";
  }
  return key;
}

json ParseJsonFile(const spark::v1::TokenizerFile* file) {
  if (file == nullptr) return json();
  json parsed = json::parse(file->content(), nullptr, /*allow_exceptions=*/false);
  return parsed.is_discarded() ? json() : parsed;
}

void AddId(std::vector<int32_t>* ids, int64_t id) {
  if (id < 0 || id > INT32_MAX) return;
  if (std::find(ids->begin(), ids->end(), static_cast<int32_t>(id)) == ids->end()) {
    ids->push_back(static_cast<int32_t>(id));
  }
}

std::optional<std::string> TokenText(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

// The chat template of the files, the family implied by the vocabulary, or nullopt.
Status PickTemplate(const std::vector<spark::v1::TokenizerFile>& files, const json& config,
                    const engine::Tokenizer& tokenizer, ModelText* out) {
  std::string text;
  std::string source;
  if (const spark::v1::TokenizerFile* jinja = FindFile(files, "chat_template.jinja")) {
    text = jinja->content();
    source = "chat_template.jinja";
  } else if (config.is_object() && config.contains("chat_template")) {
    source = "tokenizer_config.json (chat_template)";
    const json& ct = config["chat_template"];
    if (ct.is_string()) {
      text = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const json& entry : ct) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          text = entry["template"].get<std::string>();
        }
      }
    }
  }
  if (!text.empty()) {
    Result<chat::ChatTemplate> detected = chat::DetectChatTemplate(text, source);
    if (!detected.ok()) {
      out->template_source = detected.status().message();
      return Status::Ok();
    }
    out->chat_template = *detected;
    out->template_source = source;
  } else {
    auto has = [&](const char* token) { return tokenizer.TokenToId(token).has_value(); };
    std::optional<chat::ChatTemplateKind> kind;
    if (has("[gMASK]") && has("<|assistant|>")) {
      kind = chat::ChatTemplateKind::kGlm45;
    } else if (has("<|im_start|>")) {
      kind = chat::ChatTemplateKind::kChatMl;
    } else if (has("<|start_header_id|>") && has("<|eot_id|>")) {
      kind = chat::ChatTemplateKind::kLlama3;
    }
    if (!kind) {
      out->template_source =
          "the checkpoint has no chat template (neither chat_template.jinja nor a chat_template "
          "in tokenizer_config.json) and its tokens match no supported family; add the "
          "model's chat_template.jinja";
      return Status::Ok();
    }
    out->chat_template = chat::DefaultChatTemplate(*kind);
    out->template_source = "no chat template in the checkpoint: the " +
                           std::string(chat::ChatTemplateKindName(*kind)) +
                           " template chosen from the tokenizer's special tokens";
  }
  if (out->chat_template && config.is_object() && config.contains("bos_token")) {
    if (std::optional<std::string> bos = TokenText(config["bos_token"])) {
      out->chat_template->bos_token = *bos;
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::shared_ptr<const ModelText>> BuildModelText(
    const std::vector<spark::v1::TokenizerFile>& files) {
  const spark::v1::TokenizerFile* tokenizer_file = FindFile(files, "tokenizer.json");
  if (tokenizer_file == nullptr) {
    return FailedPrecondition(
        "the model has no tokenizer.json, so text cannot be tokenized; send token-id prompts to "
        "/v1/completions or add tokenizer.json to the checkpoint");
  }
  auto out = std::make_shared<ModelText>();
  Result<std::unique_ptr<engine::Tokenizer>> tokenizer =
      engine::Tokenizer::FromJson(tokenizer_file->content());
  if (!tokenizer.ok()) return tokenizer.status().WithContext("tokenizer.json of the model");
  out->tokenizer = std::move(*tokenizer);
  out->files_key = FilesKey(files);

  const json config = ParseJsonFile(FindFile(files, "tokenizer_config.json"));
  SPARK_RETURN_IF_ERROR(PickTemplate(files, config, *out->tokenizer, out.get()));

  const json generation = ParseJsonFile(FindFile(files, "generation_config.json"));
  if (generation.is_object() && generation.contains("eos_token_id")) {
    const json& eos = generation["eos_token_id"];
    if (eos.is_number_integer()) AddId(&out->eos_token_ids, eos.get<int64_t>());
    if (eos.is_array()) {
      for (const json& id : eos) {
        if (id.is_number_integer()) AddId(&out->eos_token_ids, id.get<int64_t>());
      }
    }
  }
  if (config.is_object() && config.contains("eos_token")) {
    if (std::optional<std::string> eos = TokenText(config["eos_token"])) {
      if (std::optional<int32_t> id = out->tokenizer->TokenToId(*eos)) {
        AddId(&out->eos_token_ids, *id);
      }
    }
  }
  return std::shared_ptr<const ModelText>(std::move(out));
}

Result<std::shared_ptr<const ModelText>> ModelTextCache::Get(
    const std::string& deployment, const std::vector<spark::v1::TokenizerFile>& files) {
  const std::string key = FilesKey(files);
  std::shared_ptr<std::once_flag> once;
  std::shared_ptr<Result<std::shared_ptr<const ModelText>>> result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& entry = entries_[deployment];
    if (entry.files_key != key || !entry.once) {
      entry.files_key = key;
      entry.once = std::make_shared<std::once_flag>();
      entry.result = std::make_shared<Result<std::shared_ptr<const ModelText>>>(
          Internal("the model text was not built"));
    }
    once = entry.once;
    result = entry.result;
  }
  std::call_once(*once, [&] {
    *result = BuildModelText(files);
    if (result->ok()) {
      SPARK_LOG(INFO)
              .With("deployment", deployment)
              .With("chat_template", (**result)->template_source)
          << "tokenizer ready for the inference endpoints";
    } else {
      SPARK_LOG(WARN).With("deployment", deployment).With("error", result->status())
          << "cannot build the tokenizer of the model";
    }
  });
  return *result;
}

}  // namespace spark::controller
