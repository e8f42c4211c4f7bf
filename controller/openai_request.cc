#include "controller/openai_request.h"

#include <cmath>
#include <limits>

namespace spark::controller {
namespace {

using engine::chat::Json;
namespace chat = engine::chat;

std::string Shown(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

bool Present(const Json& body, const char* field) {
  return body.contains(field) && !body[field].is_null();
}

Result<double> Number(const Json& body, const char* field, double low, double high) {
  const Json& v = body[field];
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < low ||
      v.get<double>() > high) {
    char range[96];
    std::snprintf(range, sizeof(range), "%g and %g", low, high);
    return InvalidArgument(std::string(field) + ": expected a number between " + range + ", got " +
                           Shown(v));
  }
  return v.get<double>();
}

Result<int64_t> Integer(const Json& body, const char* field, int64_t low, int64_t high,
                        const std::string& hint = "") {
  const Json& v = body[field];
  if (!v.is_number_integer() &&
      !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())) {
    return InvalidArgument(std::string(field) + ": expected an integer, got " + Shown(v));
  }
  const double d = v.get<double>();
  if (d < static_cast<double>(low) || d > static_cast<double>(high)) {
    return InvalidArgument(std::string(field) + ": " + Shown(v) + " is out of range; expected " +
                           std::to_string(low) + " to " + std::to_string(high) + hint);
  }
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(d);
}

Result<bool> Bool(const Json& body, const char* field) {
  const Json& v = body[field];
  if (!v.is_boolean()) {
    return InvalidArgument(std::string(field) + ": expected true or false, got " + Shown(v));
  }
  return v.get<bool>();
}

Result<std::vector<int32_t>> TokenIds(const Json& value, const std::string& field,
                                      size_t max_count) {
  std::vector<int32_t> ids;
  if (value.size() > max_count) {
    return InvalidArgument(field + ": " + std::to_string(value.size()) +
                           " tokens exceed this server's limit of " + std::to_string(max_count));
  }
  ids.reserve(value.size());
  for (const Json& item : value) {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 ||
        item.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument(field + ": expected non-negative integer token ids, got " +
                             Shown(item));
    }
    ids.push_back(static_cast<int32_t>(item.get<int64_t>()));
  }
  return ids;
}

Status ParseModel(const Json& body, std::string* model) {
  if (!body.contains("model")) {
    return InvalidArgument("model: required; name a deployed model (GET /v1/models lists them)");
  }
  if (!body["model"].is_string() || body["model"].get_ref<const std::string&>().empty()) {
    return InvalidArgument("model: expected the name of a deployed model as a string, got " +
                           Shown(body["model"]));
  }
  *model = body["model"].get<std::string>();
  return Status::Ok();
}

Status ParseSampling(const Json& body, const OpenAiLimits& limits, bool chat, SamplingOptions* s) {
  s->max_tokens = chat ? limits.default_max_tokens : std::min<uint32_t>(16, limits.max_tokens);
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    if (!Present(body, field)) continue;
    if (!chat && std::string(field) == "max_completion_tokens") continue;
    SPARK_ASSIGN_OR_RETURN(int64_t v,
                           Integer(body, field, 1, limits.max_tokens,
                                   " (this server's ceiling; ask for fewer tokens or raise "
                                   "--max-tokens-limit)"));
    s->max_tokens = static_cast<uint32_t>(v);
  }
  if (Present(body, "temperature")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "temperature", 0.0, 2.0));
    s->temperature = static_cast<float>(v);
  }
  if (Present(body, "top_p")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "top_p", 0.0, 1.0));
    if (v <= 0.0) return InvalidArgument("top_p: must be greater than 0 (1 turns it off)");
    s->top_p = static_cast<float>(v);
  }
  if (Present(body, "top_k")) {
    SPARK_ASSIGN_OR_RETURN(int64_t v, Integer(body, "top_k", -1, 1'000'000'000));
    s->top_k = static_cast<int32_t>(std::max<int64_t>(0, v));
  }
  if (Present(body, "min_p")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "min_p", 0.0, 1.0));
    s->min_p = static_cast<float>(v);
  }
  if (Present(body, "seed")) {
    SPARK_ASSIGN_OR_RETURN(int64_t v, Integer(body, "seed", std::numeric_limits<int64_t>::min(),
                                              std::numeric_limits<int64_t>::max()));
    s->seed = v;
  }
  if (Present(body, "presence_penalty")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "presence_penalty", -2.0, 2.0));
    s->presence_penalty = static_cast<float>(v);
  }
  if (Present(body, "frequency_penalty")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "frequency_penalty", -2.0, 2.0));
    s->frequency_penalty = static_cast<float>(v);
  }
  if (Present(body, "repetition_penalty")) {
    SPARK_ASSIGN_OR_RETURN(double v, Number(body, "repetition_penalty", 0.0, 10.0));
    if (v <= 0.0) return InvalidArgument("repetition_penalty: must be greater than 0 (1: off)");
    s->repetition_penalty = static_cast<float>(v);
  }
  if (Present(body, "stop")) {
    const Json& stop = body["stop"];
    if (stop.is_string()) {
      s->stop.push_back(stop.get<std::string>());
    } else if (stop.is_array()) {
      if (stop.size() > limits.max_stop_strings) {
        return InvalidArgument("stop: " + std::to_string(stop.size()) +
                               " stop strings exceed this server's limit of " +
                               std::to_string(limits.max_stop_strings));
      }
      for (const Json& item : stop) {
        if (!item.is_string()) {
          return InvalidArgument("stop: expected a string or an array of strings, got an item " +
                                 Shown(item));
        }
        s->stop.push_back(item.get<std::string>());
      }
    } else {
      return InvalidArgument("stop: expected a string or an array of strings, got " + Shown(stop));
    }
  }
  if (Present(body, "stop_token_ids")) {
    if (!body["stop_token_ids"].is_array()) {
      return InvalidArgument("stop_token_ids: expected an array of token ids, got " +
                             Shown(body["stop_token_ids"]));
    }
    SPARK_ASSIGN_OR_RETURN(s->stop_token_ids,
                           TokenIds(body["stop_token_ids"], "stop_token_ids", 1024));
  }
  if (Present(body, "ignore_eos")) {
    SPARK_ASSIGN_OR_RETURN(s->ignore_eos, Bool(body, "ignore_eos"));
  }
  if (Present(body, "n")) {
    SPARK_ASSIGN_OR_RETURN(int64_t v, Integer(body, "n", 1, limits.max_n,
                                              " (this server's limit of choices per request)"));
    s->n = static_cast<uint32_t>(v);
  }
  if (Present(body, "stream")) {
    SPARK_ASSIGN_OR_RETURN(s->stream, Bool(body, "stream"));
  }
  if (Present(body, "stream_options")) {
    const Json& options = body["stream_options"];
    if (!options.is_object()) {
      return InvalidArgument(
          "stream_options: expected an object such as "
          "{\"include_usage\": true}, got " +
          Shown(options));
    }
    if (Present(options, "include_usage")) {
      if (!options["include_usage"].is_boolean()) {
        return InvalidArgument("stream_options.include_usage: expected true or false, got " +
                               Shown(options["include_usage"]));
      }
      s->include_usage = options["include_usage"].get<bool>();
    }
  }
  if (chat) {
    if (Present(body, "logprobs")) {
      SPARK_ASSIGN_OR_RETURN(s->logprobs, Bool(body, "logprobs"));
    }
    if (Present(body, "top_logprobs")) {
      SPARK_ASSIGN_OR_RETURN(int64_t v, Integer(body, "top_logprobs", 0, 20));
      if (v > 0 && !s->logprobs) {
        return InvalidArgument("top_logprobs: needs \"logprobs\": true");
      }
      s->top_logprobs = static_cast<uint32_t>(v);
    }
  } else if (Present(body, "logprobs")) {
    SPARK_ASSIGN_OR_RETURN(int64_t v, Integer(body, "logprobs", 0, 5));
    s->logprobs = true;
    s->top_logprobs = static_cast<uint32_t>(v);
  }
  return Status::Ok();
}

Status ParseToolChoice(const Json& body, ChatRequest* r) {
  if (!Present(body, "tool_choice")) {
    r->tool_choice = r->tools.empty() ? ToolChoice::kNone : ToolChoice::kAuto;
    return Status::Ok();
  }
  const Json& choice = body["tool_choice"];
  if (choice.is_string()) {
    const std::string& mode = choice.get_ref<const std::string&>();
    if (mode == "none") {
      r->tool_choice = ToolChoice::kNone;
    } else if (mode == "auto") {
      r->tool_choice = ToolChoice::kAuto;
    } else if (mode == "required") {
      r->tool_choice = ToolChoice::kRequired;
    } else {
      return InvalidArgument("tool_choice: \"" + mode +
                             "\" is not one of \"none\", \"auto\", \"required\" or "
                             "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
  } else if (choice.is_object()) {
    if (choice.contains("type") &&
        !(choice["type"].is_string() && choice["type"].get<std::string>() == "function")) {
      return InvalidArgument("tool_choice.type: only \"function\" is supported");
    }
    if (!choice.contains("function") || !choice["function"].is_object() ||
        !choice["function"].contains("name") || !choice["function"]["name"].is_string()) {
      return InvalidArgument(
          "tool_choice.function.name: expected {\"type\": \"function\", \"function\": "
          "{\"name\": \"<a tool of the request>\"}}");
    }
    r->tool_choice = ToolChoice::kNamed;
    r->tool_choice_name = choice["function"]["name"].get<std::string>();
  } else {
    return InvalidArgument("tool_choice: expected a string or an object, got " + Shown(choice));
  }
  if (r->tool_choice == ToolChoice::kAuto || r->tool_choice == ToolChoice::kNone) {
    return Status::Ok();
  }
  if (r->tools.empty()) {
    return InvalidArgument(
        "tool_choice: \"" +
        std::string(r->tool_choice == ToolChoice::kRequired ? "required" : "function") +
        "\" needs a non-empty \"tools\" list");
  }
  if (r->tool_choice == ToolChoice::kNamed &&
      chat::FindTool(r->tools, r->tool_choice_name) == nullptr) {
    return InvalidArgument("tool_choice.function.name: \"" + r->tool_choice_name +
                           "\" is not one of the request's tools");
  }
  return Status::Ok();
}

Result<ChatRequest> ParseChat(const Json& body, const OpenAiLimits& limits) {
  ChatRequest r;
  SPARK_RETURN_IF_ERROR(ParseModel(body, &r.model));
  if (!body.contains("messages")) {
    return InvalidArgument("messages: required; send an array of {\"role\", \"content\"}");
  }
  if (body["messages"].is_array() && body["messages"].size() > limits.max_messages) {
    return InvalidArgument("messages: " + std::to_string(body["messages"].size()) +
                           " messages exceed this server's limit of " +
                           std::to_string(limits.max_messages) + " per request");
  }
  SPARK_ASSIGN_OR_RETURN(r.messages, chat::ParseChatMessages(body["messages"]));
  SPARK_ASSIGN_OR_RETURN(r.tools,
                         chat::ParseChatTools(body.contains("tools") ? body["tools"] : Json()));
  SPARK_RETURN_IF_ERROR(ParseToolChoice(body, &r));
  if (Present(body, "response_format")) {
    const Json& format = body["response_format"];
    if (!format.is_object() || !format.contains("type") || !format["type"].is_string()) {
      return InvalidArgument(
          "response_format: expected {\"type\": \"text\"} or {\"type\": \"json_object\"}, got " +
          Shown(format));
    }
    const std::string& type = format["type"].get_ref<const std::string&>();
    if (type == "json_object") {
      r.json_object = true;
    } else if (type == "json_schema") {
      return InvalidArgument(
          "response_format.type: \"json_schema\" (constrained decoding) is not supported yet; "
          "use \"json_object\" or \"text\"");
    } else if (type != "text") {
      return InvalidArgument("response_format.type: \"" + type +
                             "\" is not one of \"text\", \"json_object\"");
    }
  }
  SPARK_ASSIGN_OR_RETURN(
      r.kwargs, chat::ParseChatTemplateKwargs(
                    body.contains("chat_template_kwargs") ? body["chat_template_kwargs"] : Json()));
  SPARK_RETURN_IF_ERROR(ParseSampling(body, limits, /*chat=*/true, &r.sampling));
  return r;
}

Result<TextCompletionRequest> ParseCompletion(const Json& body, const OpenAiLimits& limits) {
  TextCompletionRequest r;
  SPARK_RETURN_IF_ERROR(ParseModel(body, &r.model));
  if (!body.contains("prompt") || body["prompt"].is_null()) {
    return InvalidArgument("prompt: required; a string, an array of strings or token ids");
  }
  const Json& prompt = body["prompt"];
  if (prompt.is_string()) {
    r.prompts.push_back({prompt.get<std::string>(), {}});
  } else if (prompt.is_array() && !prompt.empty()) {
    if (prompt[0].is_string() || prompt[0].is_array()) {
      if (prompt.size() > limits.max_prompts) {
        return InvalidArgument("prompt: " + std::to_string(prompt.size()) +
                               " prompts exceed this server's limit of " +
                               std::to_string(limits.max_prompts));
      }
      for (size_t i = 0; i < prompt.size(); ++i) {
        const std::string where = "prompt[" + std::to_string(i) + "]";
        if (prompt[i].is_string() && prompt[0].is_string()) {
          r.prompts.push_back({prompt[i].get<std::string>(), {}});
        } else if (prompt[i].is_array() && prompt[0].is_array()) {
          if (prompt[i].empty()) return InvalidArgument(where + ": empty token-id prompt");
          CompletionPrompt p;
          SPARK_ASSIGN_OR_RETURN(p.token_ids, TokenIds(prompt[i], where, limits.max_prompt_tokens));
          r.prompts.push_back(std::move(p));
        } else {
          return InvalidArgument(where +
                                 ": every prompt of the array must have the same kind (all "
                                 "strings or all token-id arrays), got " +
                                 Shown(prompt[i]));
        }
      }
    } else {
      CompletionPrompt p;
      SPARK_ASSIGN_OR_RETURN(p.token_ids, TokenIds(prompt, "prompt", limits.max_prompt_tokens));
      r.prompts.push_back(std::move(p));
    }
  } else {
    return InvalidArgument(
        "prompt: expected a string, an array of strings, an array of token ids or an array of "
        "token-id arrays, got " +
        Shown(prompt));
  }
  if (Present(body, "suffix") &&
      !(body["suffix"].is_string() && body["suffix"].get_ref<const std::string&>().empty())) {
    return InvalidArgument("suffix: not supported yet; send the prompt without a suffix");
  }
  if (Present(body, "best_of")) {
    SPARK_ASSIGN_OR_RETURN(int64_t best_of, Integer(body, "best_of", 1, 1));
    (void)best_of;
  }
  if (Present(body, "echo")) {
    SPARK_ASSIGN_OR_RETURN(r.echo, Bool(body, "echo"));
  }
  SPARK_RETURN_IF_ERROR(ParseSampling(body, limits, /*chat=*/false, &r.sampling));
  if (r.prompts.size() * r.sampling.n > limits.max_n * 4 && r.prompts.size() > 1) {
    return InvalidArgument("n: " + std::to_string(r.prompts.size()) + " prompts times n = " +
                           std::to_string(r.sampling.n) + " are too many choices; send fewer");
  }
  return r;
}

}  // namespace

Result<Json> ParseRequestBody(const std::string& body) {
  if (body.empty()) return InvalidArgument("the request body is empty; send a JSON object");
  Json parsed;
  try {
    parsed = Json::parse(body);
  } catch (const Json::parse_error& e) {
    return InvalidArgument("the request body is not valid JSON (" + std::string(e.what()) +
                           "); send a JSON object");
  }
  if (!parsed.is_object()) {
    return InvalidArgument(std::string("the request body must be a JSON object, got ") +
                           parsed.type_name());
  }
  return parsed;
}

Result<ChatRequest> ParseChatRequest(const Json& body, const OpenAiLimits& limits) {
  try {
    return ParseChat(body, limits);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("bad chat completion request: ") + e.what());
  }
}

Result<TextCompletionRequest> ParseTextCompletionRequest(const Json& body,
                                                         const OpenAiLimits& limits) {
  try {
    return ParseCompletion(body, limits);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("bad completion request: ") + e.what());
  }
}

spark::v1::GenerateRequest MakeGenerateRequest(const std::string& request_id,
                                               const std::vector<int32_t>& prompt,
                                               const SamplingOptions& sampling,
                                               const std::vector<int32_t>& extra_stop_ids,
                                               uint32_t choice_index, bool echo) {
  spark::v1::GenerateRequest g;
  g.set_request_id(request_id);
  g.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
  g.set_echo(echo);
  spark::v1::SamplingParams* s = g.mutable_sampling();
  s->set_temperature(sampling.temperature);
  s->set_top_p(sampling.top_p);
  s->set_top_k(sampling.top_k);
  s->set_min_p(sampling.min_p);
  if (sampling.seed) s->set_seed(static_cast<uint64_t>(*sampling.seed) + choice_index);
  s->set_repetition_penalty(sampling.repetition_penalty);
  s->set_presence_penalty(sampling.presence_penalty);
  s->set_frequency_penalty(sampling.frequency_penalty);
  s->set_max_tokens(sampling.max_tokens);
  for (int32_t id : sampling.stop_token_ids) s->add_stop_token_ids(id);
  if (!sampling.ignore_eos) {
    for (int32_t id : extra_stop_ids) s->add_stop_token_ids(id);
  }
  s->set_logprobs(sampling.logprobs);
  s->set_top_logprobs(sampling.top_logprobs);
  s->set_ignore_eos(sampling.ignore_eos);
  return g;
}

}  // namespace spark::controller
