#include "engine/text/chat/chat_template.h"

#include <fstream>
#include <sstream>
#include <system_error>

#include "engine/text/chat/template_renderers.h"

namespace spark::engine::chat {
namespace {

bool Has(std::string_view text, std::string_view marker) {
  return text.find(marker) != std::string_view::npos;
}

Result<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path.string() + ": cannot open for reading");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return DataLoss(path.string() + ": read error");
  return buf.str();
}

}  // namespace

std::string_view ChatTemplateKindName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kGlm45:
      return "glm45";
    case ChatTemplateKind::kGlm47:
      return "glm47";
    case ChatTemplateKind::kChatMl:
      return "chatml";
    case ChatTemplateKind::kLlama3:
      return "llama3";
  }
  return "unknown";
}

ChatTemplate DefaultChatTemplate(ChatTemplateKind kind) {
  ChatTemplate t;
  t.kind = kind;
  t.source = "built-in " + std::string(ChatTemplateKindName(kind)) + " template";
  return t;
}

Result<ChatTemplate> DetectChatTemplate(std::string_view text, std::string_view source) {
  ChatTemplate t;
  t.source = std::string(source);
  if (Has(text, "[gMASK]<sop>") && Has(text, "<|assistant|>")) {
    if (Has(text, "{function-name}<arg_key>")) {
      t.kind = ChatTemplateKind::kGlm47;
      return t;
    }
    if (Has(text, "{function-name}\n<arg_key>")) {
      t.kind = ChatTemplateKind::kGlm45;
      return t;
    }
    return Unimplemented("chat template of " + std::string(source) +
                         " is a GLM template without the GLM-4.5/4.6/4.7 tool-call format; it is "
                         "not supported yet (supported: GLM-4.5, GLM-4.6, GLM-4.7)");
  }
  if (Has(text, "<|im_start|>")) {
    if (Has(text, "<tool_call>") && Has(text, "</think>") && Has(text, "multi_step_tool")) {
      t.kind = ChatTemplateKind::kChatMl;
      return t;
    }
    return Unimplemented("chat template of " + std::string(source) +
                         " is a ChatML template other than Qwen3's; it is not supported yet");
  }
  if (Has(text, "<|start_header_id|>") && Has(text, "<|eot_id|>")) {
    t.kind = ChatTemplateKind::kLlama3;
    t.llama_dated_system = Has(text, "Cutting Knowledge Date");
    t.llama_date_from_clock = t.llama_dated_system && Has(text, "strftime_now");
    t.llama_always_generation_prompt = !t.llama_dated_system && !Has(text, "add_generation_prompt");
    return t;
  }
  return Unimplemented("chat template of " + std::string(source) +
                       " is not supported yet (supported: GLM-4.5/4.6, GLM-4.7, Qwen3 ChatML, "
                       "Llama-3); serve the model with one of those templates");
}

Result<ChatTemplate> LoadChatTemplate(const std::filesystem::path& model_dir) {
  const std::filesystem::path jinja = model_dir / "chat_template.jinja";
  const std::filesystem::path config_path = model_dir / "tokenizer_config.json";
  std::error_code ec;
  Json config;
  if (std::filesystem::exists(config_path, ec)) {
    SPARK_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    config = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return DataLoss(config_path.string() + ": not a JSON object; re-download the checkpoint");
    }
  }
  std::string template_text;
  std::string source;
  if (std::filesystem::exists(jinja, ec)) {
    SPARK_ASSIGN_OR_RETURN(template_text, ReadFile(jinja));
    source = jinja.string();
  } else if (config.is_object() && config.contains("chat_template")) {
    const Json& ct = config["chat_template"];
    source = config_path.string() + " (chat_template)";
    if (ct.is_string()) {
      template_text = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const Json& entry : ct) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          template_text = entry["template"].get<std::string>();
        }
      }
      if (template_text.empty()) {
        return Unimplemented(source + ": a list of templates without one named \"default\"");
      }
    } else {
      return DataLoss(source + ": expected a string or a list of named templates");
    }
  } else {
    return NotFound(model_dir.string() +
                    ": no chat template (neither chat_template.jinja nor a chat_template in "
                    "tokenizer_config.json); add the model's chat_template.jinja to the directory");
  }
  SPARK_ASSIGN_OR_RETURN(ChatTemplate t, DetectChatTemplate(template_text, source));
  if (config.is_object() && config.contains("bos_token")) {
    const Json& bos = config["bos_token"];
    if (bos.is_string()) {
      t.bos_token = bos.get<std::string>();
    } else if (bos.is_object() && bos.contains("content") && bos["content"].is_string()) {
      t.bos_token = bos["content"].get<std::string>();
    }
  }
  return t;
}

Result<std::string> RenderChat(const ChatTemplate& chat_template,
                               const std::vector<ChatMessage>& messages,
                               const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                               bool add_generation_prompt) {
  switch (chat_template.kind) {
    case ChatTemplateKind::kGlm45:
      return internal::RenderGlm(/*glm47=*/false, messages, tools, kwargs, add_generation_prompt);
    case ChatTemplateKind::kGlm47:
      return internal::RenderGlm(/*glm47=*/true, messages, tools, kwargs, add_generation_prompt);
    case ChatTemplateKind::kChatMl:
      return internal::RenderQwen3(messages, tools, kwargs, add_generation_prompt);
    case ChatTemplateKind::kLlama3:
      return internal::RenderLlama3(chat_template, messages, tools, kwargs, add_generation_prompt);
  }
  return Internal("unknown chat template kind");
}

Result<std::string> RenderChat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                               const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                               bool add_generation_prompt) {
  return RenderChat(DefaultChatTemplate(kind), messages, tools, kwargs, add_generation_prompt);
}

}  // namespace spark::engine::chat
