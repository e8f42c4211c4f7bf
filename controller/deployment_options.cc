#include "controller/deployment_options.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

namespace spark::controller {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxSpeculativeSteps = 32;
constexpr uint64_t kMaxSpeculativeTopk = 16;
constexpr uint64_t kMaxSpeculativeDraftTokens = 64;

constexpr std::string_view kUnsignedKeys[] = {
    "max_batch", "max_seq_len",           "kv_cache_bytes",  "shared_memory_cap_bytes",
    "seed",      "rendezvous_timeout_ms", "load_timeout_ms", "first_generation_timeout_ms"};

bool IsUnsignedKey(std::string_view key) {
  for (std::string_view k : kUnsignedKeys) {
    if (k == key) return true;
  }
  return false;
}

std::string KnownKeys() {
  std::string keys;
  for (std::string_view k : kUnsignedKeys) keys += std::string(k) + ", ";
  return keys + "kv_cache_fraction, load_format, dtype, speculative, extra";
}

// Flat aliases of the speculative object's fields.
constexpr std::pair<std::string_view, std::string_view> kSpeculativeAliases[] = {
    {"speculative_steps", "steps"},
    {"speculative_topk", "topk"},
    {"speculative_draft_tokens", "draft_tokens"}};

std::string_view SpeculativeAliasField(std::string_view key) {
  for (const auto& [alias, field] : kSpeculativeAliases) {
    if (alias == key) return field;
  }
  return {};
}

Result<uint64_t> UnsignedValue(const std::string& key, const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());
  }
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    uint64_t parsed = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), parsed);
    if (ec == std::errc() && end == s.data() + s.size() && !s.empty()) return parsed;
  }
  return InvalidArgument("option \"" + key + "\" must be a non-negative integer, got " +
                         value.dump());
}

Result<double> NumberValue(const std::string& key, const json& value) {
  if (value.is_number()) return value.get<double>();
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    try {
      size_t used = 0;
      double d = std::stod(s, &used);
      if (used == s.size()) return d;
    } catch (const std::exception&) {
    }
  }
  return InvalidArgument("option \"" + key + "\" must be a number, got " + value.dump());
}

// Validates the speculative object (fields given as `given`, values already typed) and returns
// its normalized form, or null when speculation is off (steps 0 or absent with nothing else).
Result<json> NormalizeSpeculative(const json& given) {
  // 0 counts as not given (the wire default).
  auto field = [&](const char* name) -> std::optional<uint64_t> {
    if (!given.contains(name) || given.at(name).get<uint64_t>() == 0) return std::nullopt;
    return given.at(name).get<uint64_t>();
  };
  const std::optional<uint64_t> steps = field("steps");
  const std::optional<uint64_t> topk = field("topk");
  const std::optional<uint64_t> draft_tokens = field("draft_tokens");
  if (!steps) {
    if (topk || draft_tokens) {
      return InvalidArgument(
          "option \"speculative\": topk and draft_tokens need steps >= 1 (draft steps per "
          "verify); give steps, or \"off\" to deploy without speculative decoding");
    }
    return json(nullptr);
  }
  if (*steps > kMaxSpeculativeSteps) {
    return InvalidArgument("option \"speculative.steps\" must be in [1, " +
                           std::to_string(kMaxSpeculativeSteps) + "], got " +
                           std::to_string(*steps));
  }
  const uint64_t k = topk.value_or(1);
  if (k < 1 || k > kMaxSpeculativeTopk) {
    return InvalidArgument("option \"speculative.topk\" must be in [1, " +
                           std::to_string(kMaxSpeculativeTopk) + "] (1 = a chain of drafts), got " +
                           std::to_string(k));
  }
  uint64_t draft = 0;
  if (k == 1) {
    draft = *steps + 1;
    if (draft_tokens && *draft_tokens != draft) {
      return InvalidArgument(
          "option \"speculative.draft_tokens\" must be steps + 1 = " + std::to_string(draft) +
          " with topk 1 (a chain verifies every draft plus the bonus token), got " +
          std::to_string(*draft_tokens) + "; leave it out or raise topk for a tree");
    }
  } else {
    // The root plus at most topk + (steps - 1) * topk^2 candidates, and at most
    // kMaxSpeculativeDraftTokens (the engine's verification tree limit).
    const uint64_t most =
        std::min<uint64_t>(1 + k + (*steps - 1) * k * k, kMaxSpeculativeDraftTokens);
    if (!draft_tokens) {
      return InvalidArgument("option \"speculative.draft_tokens\" is required with topk " +
                             std::to_string(k) + ": the tree size verified per step, in [2, " +
                             std::to_string(most) + "]");
    }
    draft = *draft_tokens;
    if (draft < 2 || draft > most) {
      return InvalidArgument("option \"speculative.draft_tokens\" must be in [2, " +
                             std::to_string(most) + "] (1 + topk + (steps - 1) * topk^2, at most " +
                             std::to_string(kMaxSpeculativeDraftTokens) + ") with steps " +
                             std::to_string(*steps) + " and topk " + std::to_string(k) + ", got " +
                             std::to_string(draft));
    }
  }
  return json{{"steps", *steps}, {"topk", k}, {"draft_tokens", draft}};
}

Result<json> NormalizeImpl(const json& options) {
  if (options.is_null()) return json::object();
  if (!options.is_object()) {
    return InvalidArgument("\"options\" must be a JSON object of engine options, got " +
                           options.dump());
  }
  json out = json::object();
  json speculative = json::object();  // typed fields, from the object or the flat aliases
  std::string speculative_source;     // the key that gave them first
  for (auto it = options.begin(); it != options.end(); ++it) {
    const std::string& key = it.key();
    const json& value = it.value();
    if (key == "speculative" || !SpeculativeAliasField(key).empty()) {
      if (!speculative_source.empty() &&
          (key == "speculative" || speculative_source == "speculative")) {
        return InvalidArgument(
            "give either the \"speculative\" object or the flat speculative_* options, not "
            "both");
      }
      if (key == "speculative" && (value.is_null() || value == "auto")) continue;  // the default
      speculative_source = key;
      if (key == "speculative") {
        if (value == "off") continue;  // given, without steps: off (below)
        if (!value.is_object()) {
          return InvalidArgument(
              "option \"speculative\" must be \"auto\" (the default: on for the CUDA backend when "
              "the checkpoint has its MTP layer), \"off\", or an object {\"steps\": N, \"topk\": "
              "K, \"draft_tokens\": D}, got " +
              value.dump());
        }
        for (auto f = value.begin(); f != value.end(); ++f) {
          if (f.key() != "steps" && f.key() != "topk" && f.key() != "draft_tokens") {
            return InvalidArgument("unknown field \"" + f.key() +
                                   "\" of option \"speculative\"; fields: steps, topk, "
                                   "draft_tokens");
          }
          SPARK_ASSIGN_OR_RETURN(uint64_t v, UnsignedValue("speculative." + f.key(), f.value()));
          speculative[f.key()] = v;
        }
      } else {
        SPARK_ASSIGN_OR_RETURN(uint64_t v, UnsignedValue(key, value));
        speculative[std::string(SpeculativeAliasField(key))] = v;
      }
      continue;
    }
    if (IsUnsignedKey(key)) {
      SPARK_ASSIGN_OR_RETURN(uint64_t v, UnsignedValue(key, value));
      if (key != "kv_cache_bytes" && key != "shared_memory_cap_bytes" && key != "seed" &&
          v > std::numeric_limits<uint32_t>::max()) {
        return InvalidArgument("option \"" + key + "\" is too large: " + value.dump());
      }
      out[key] = v;
    } else if (key == "kv_cache_fraction") {
      SPARK_ASSIGN_OR_RETURN(double v, NumberValue(key, value));
      if (!(v > 0.0 && v <= 1.0)) {
        return InvalidArgument("option \"kv_cache_fraction\" must be in (0, 1], got " +
                               value.dump());
      }
      out[key] = v;
    } else if (key == "load_format") {
      if (!value.is_string() || (value != "auto" && value != "dummy")) {
        return InvalidArgument("option \"load_format\" must be \"auto\" or \"dummy\", got " +
                               value.dump());
      }
      out[key] = value;
    } else if (key == "dtype") {
      if (!value.is_string()) {
        return InvalidArgument("option \"dtype\" must be a string such as \"bfloat16\", got " +
                               value.dump());
      }
      out[key] = value;
    } else if (key == "extra") {
      if (!value.is_object()) {
        return InvalidArgument("option \"extra\" must be an object of string values");
      }
      json extra = json::object();
      for (auto e = value.begin(); e != value.end(); ++e) {
        extra[e.key()] = e.value().is_string() ? e.value().get<std::string>() : e.value().dump();
      }
      out[key] = extra;
    } else {
      return InvalidArgument("unknown option \"" + key + "\"; known options: " + KnownKeys());
    }
  }
  // Absent (or "auto"): no key, the shard decides. Given without steps (or steps 0): off.
  SPARK_ASSIGN_OR_RETURN(json normalized, NormalizeSpeculative(speculative));
  if (!normalized.is_null()) {
    out["speculative"] = std::move(normalized);
  } else if (!speculative_source.empty()) {
    out["speculative"] = "off";
  }
  return out;
}

}  // namespace

Result<json> NormalizeDeploymentOptions(const json& options) {
  try {
    return NormalizeImpl(options);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("bad options: ") + e.what());
  }
}

Result<DeploymentOptions> ParseDeploymentOptions(const json& raw, int tp) {
  SPARK_ASSIGN_OR_RETURN(json options, NormalizeDeploymentOptions(raw));
  DeploymentOptions out;
  spark::v1::EngineOptions& e = out.engine;
  e.set_tp(static_cast<uint32_t>(tp));
  e.set_load_format(spark::v1::LOAD_FORMAT_AUTO);
  try {
    auto u = [&](const char* key) { return options.at(key).get<uint64_t>(); };
    if (options.contains("max_batch")) e.set_max_batch(static_cast<uint32_t>(u("max_batch")));
    if (options.contains("max_seq_len")) {
      e.set_max_seq_len(static_cast<uint32_t>(u("max_seq_len")));
    }
    if (options.contains("kv_cache_fraction")) {
      e.set_kv_cache_fraction(options.at("kv_cache_fraction").get<double>());
    }
    if (options.contains("kv_cache_bytes")) e.set_kv_cache_bytes(u("kv_cache_bytes"));
    if (options.contains("shared_memory_cap_bytes")) {
      e.set_shared_memory_cap_bytes(u("shared_memory_cap_bytes"));
    }
    if (options.contains("load_format") && options.at("load_format") == "dummy") {
      e.set_load_format(spark::v1::LOAD_FORMAT_DUMMY);
    }
    if (options.contains("dtype")) e.set_dtype(options.at("dtype").get<std::string>());
    if (options.contains("seed")) e.set_seed(u("seed"));
    if (options.contains("speculative")) {
      const json& spec = options.at("speculative");
      spark::v1::SpeculativeOptions* s = e.mutable_speculative();
      if (spec == "off") {
        s->set_mode(spark::v1::SPECULATIVE_MODE_OFF);
      } else {
        s->set_steps(static_cast<uint32_t>(spec.at("steps").get<uint64_t>()));
        s->set_topk(static_cast<uint32_t>(spec.at("topk").get<uint64_t>()));
        s->set_draft_tokens(static_cast<uint32_t>(spec.at("draft_tokens").get<uint64_t>()));
      }
    }
    if (options.contains("extra")) {
      for (auto it = options.at("extra").begin(); it != options.at("extra").end(); ++it) {
        (*e.mutable_extra())[it.key()] = it.value().get<std::string>();
      }
    }
    auto ms = [&](const char* key) -> std::optional<std::chrono::milliseconds> {
      if (!options.contains(key)) return std::nullopt;
      return std::chrono::milliseconds(static_cast<int64_t>(u(key)));
    };
    out.rendezvous_timeout = ms("rendezvous_timeout_ms");
    out.load_timeout = ms("load_timeout_ms");
    out.first_generation_timeout = ms("first_generation_timeout_ms");
  } catch (const std::exception& ex) {
    return InvalidArgument(std::string("bad options: ") + ex.what());
  }
  return out;
}

Result<DeploymentOptions> ParseDeploymentOptionsJson(const std::string& options_json, int tp) {
  json parsed = json::parse(options_json, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return DataLoss("stored deployment options are not valid JSON: " + options_json);
  }
  return ParseDeploymentOptions(parsed, tp);
}

}  // namespace spark::controller
