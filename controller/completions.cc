#include "controller/completions.h"

#include <limits>

namespace spark::controller {
namespace {

using nlohmann::json;

Result<std::vector<int32_t>> TokenIds(const json& value, const char* field) {
  std::vector<int32_t> ids;
  for (const json& item : value) {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 ||
        item.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument(std::string("\"") + field +
                             "\" must hold non-negative integer token ids, got " + item.dump());
    }
    ids.push_back(static_cast<int32_t>(item.get<int64_t>()));
  }
  return ids;
}

Result<double> Number(const json& body, const char* field, double low, double high) {
  const json& v = body.at(field);
  if (!v.is_number() || v.get<double>() < low || v.get<double>() > high) {
    return InvalidArgument(std::string("\"") + field + "\" must be a number between " +
                           std::to_string(low) + " and " + std::to_string(high) + ", got " +
                           v.dump());
  }
  return v.get<double>();
}

Result<CompletionRequest> Parse(const json& body) {
  if (!body.is_object()) return InvalidArgument("the request body must be a JSON object");
  CompletionRequest r;
  if (!body.contains("model") || !body["model"].is_string() || body["model"] == "") {
    return InvalidArgument("\"model\" is required: the name of a deployed model");
  }
  r.model = body["model"].get<std::string>();
  if (!body.contains("prompt")) return InvalidArgument("\"prompt\" is required");
  const json& prompt = body["prompt"];
  if (prompt.is_string() || (prompt.is_array() && !prompt.empty() && prompt[0].is_string())) {
    return InvalidArgument(
        "text prompts are not supported yet: send token ids, e.g. \"prompt\": [1, 2, 3]");
  }
  if (!prompt.is_array() || prompt.empty()) {
    return InvalidArgument("\"prompt\" must be a non-empty array of token ids");
  }
  if (prompt[0].is_array()) {
    if (prompt.size() != 1) {
      return InvalidArgument("only one prompt per request is supported; send one request each");
    }
    SPARK_ASSIGN_OR_RETURN(r.prompt, TokenIds(prompt[0], "prompt"));
  } else {
    SPARK_ASSIGN_OR_RETURN(r.prompt, TokenIds(prompt, "prompt"));
  }
  if (r.prompt.empty()) return InvalidArgument("\"prompt\" must hold at least one token id");
  if (body.contains("max_tokens") && !body["max_tokens"].is_null()) {
    const json& v = body["max_tokens"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 1'000'000) {
      return InvalidArgument("\"max_tokens\" must be an integer between 1 and 1000000, got " +
                             v.dump());
    }
    r.max_tokens = static_cast<uint32_t>(v.get<int64_t>());
  }
  if (body.contains("temperature") && !body["temperature"].is_null()) {
    SPARK_ASSIGN_OR_RETURN(double t, Number(body, "temperature", 0.0, 2.0));
    r.temperature = static_cast<float>(t);
  }
  if (body.contains("top_p") && !body["top_p"].is_null()) {
    SPARK_ASSIGN_OR_RETURN(double p, Number(body, "top_p", 0.0, 1.0));
    if (p <= 0.0) return InvalidArgument("\"top_p\" must be greater than 0");
    r.top_p = static_cast<float>(p);
  }
  if (body.contains("top_k") && !body["top_k"].is_null()) {
    const json& v = body["top_k"];
    if (!v.is_number_integer() || v.get<int64_t>() < -1 || v.get<int64_t>() > 1'000'000) {
      return InvalidArgument("\"top_k\" must be an integer >= 0 (-1 or 0: off), got " + v.dump());
    }
    r.top_k = std::max<int32_t>(0, static_cast<int32_t>(v.get<int64_t>()));
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    const json& v = body["seed"];
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return InvalidArgument("\"seed\" must be a non-negative integer, got " + v.dump());
    }
    r.seed = static_cast<uint64_t>(v.get<int64_t>());
  }
  if (body.contains("stop_token_ids") && !body["stop_token_ids"].is_null()) {
    if (!body["stop_token_ids"].is_array()) {
      return InvalidArgument("\"stop_token_ids\" must be an array of token ids");
    }
    SPARK_ASSIGN_OR_RETURN(r.stop_token_ids, TokenIds(body["stop_token_ids"], "stop_token_ids"));
  }
  if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {
    if (!body["ignore_eos"].is_boolean())
      return InvalidArgument("\"ignore_eos\" must be a boolean");
    r.ignore_eos = body["ignore_eos"].get<bool>();
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) return InvalidArgument("\"stream\" must be a boolean");
    r.stream = body["stream"].get<bool>();
  }
  return r;
}

}  // namespace

Result<CompletionRequest> ParseCompletionRequest(const json& body) {
  try {
    return Parse(body);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("bad completion request: ") + e.what());
  }
}

spark::v1::GenerateRequest ToGenerateRequest(const CompletionRequest& request,
                                             const std::string& request_id) {
  spark::v1::GenerateRequest g;
  g.set_request_id(request_id);
  for (int32_t id : request.prompt) g.add_prompt_token_ids(id);
  spark::v1::SamplingParams* s = g.mutable_sampling();
  s->set_temperature(request.temperature);
  s->set_top_p(request.top_p);
  s->set_top_k(request.top_k);
  s->set_min_p(0);
  if (request.seed) s->set_seed(*request.seed);
  s->set_repetition_penalty(1);
  s->set_presence_penalty(0);
  s->set_frequency_penalty(0);
  s->set_max_tokens(request.max_tokens);
  for (int32_t id : request.stop_token_ids) s->add_stop_token_ids(id);
  s->set_logprobs(false);
  s->set_top_logprobs(0);
  s->set_ignore_eos(request.ignore_eos);
  return g;
}

json FinishReasonJson(spark::v1::FinishReason reason) {
  switch (reason) {
    case spark::v1::FINISH_REASON_STOP:
      return "stop";
    case spark::v1::FINISH_REASON_LENGTH:
      return "length";
    case spark::v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    case spark::v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return nullptr;
  }
}

json CompletionJson(const std::string& id, const std::string& model, int64_t created_unix_s,
                    const std::vector<int32_t>& token_ids, spark::v1::FinishReason finish_reason,
                    const spark::v1::Usage* usage) {
  json choice = {{"index", 0},
                 {"text", ""},
                 {"token_ids", token_ids},
                 {"finish_reason", FinishReasonJson(finish_reason)},
                 {"logprobs", nullptr}};
  json out = {{"id", id},
              {"object", "text_completion"},
              {"created", created_unix_s},
              {"model", model},
              {"choices", json::array({choice})}};
  if (usage != nullptr) {
    out["usage"] = {{"prompt_tokens", usage->prompt_tokens()},
                    {"completion_tokens", usage->completion_tokens()},
                    {"total_tokens", usage->prompt_tokens() + usage->completion_tokens()}};
  }
  return out;
}

}  // namespace spark::controller
