#include "engine/text/chat/tool_schema.h"

#include <cmath>
#include <optional>
#include <set>
#include <string>

#include "engine/text/chat/tag_scan.h"

namespace spark::engine::chat {
namespace {

using TypeSet = std::set<std::string>;

constexpr int kMaxSchemaDepth = 32;  // guards against $ref cycles

std::string JsonTypeOf(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float: {
      const double d = v.get<double>();
      return std::isfinite(d) && std::floor(d) == d ? "integer" : "number";
    }
    case Json::value_t::string:
      return "string";
    case Json::value_t::array:
      return "array";
    case Json::value_t::object:
      return "object";
    default:
      return "null";
  }
}

void AddType(const std::string& t, TypeSet* set) {
  set->insert(t);
  if (t == "number") set->insert("integer");
}

const Json* ResolvePointer(const Json& root, const std::string& ref) {
  if (ref == "#") return &root;
  if (ref.rfind("#/", 0) != 0) return nullptr;
  const Json* node = &root;
  size_t pos = 2;
  while (pos <= ref.size()) {
    size_t next = ref.find('/', pos);
    if (next == std::string::npos) next = ref.size();
    std::string part = ref.substr(pos, next - pos);
    for (size_t i = 0; (i = part.find("~1", i)) != std::string::npos;) part.replace(i, 2, "/");
    for (size_t i = 0; (i = part.find("~0", i)) != std::string::npos;) part.replace(i, 2, "~");
    if (node->is_object()) {
      if (!node->contains(part)) return nullptr;
      node = &(*node)[part];
    } else if (node->is_array()) {
      if (part.empty() || part.find_first_not_of("0123456789") != std::string::npos) return nullptr;
      const size_t index = std::stoul(part);
      if (index >= node->size()) return nullptr;
      node = &(*node)[index];
    } else {
      return nullptr;
    }
    pos = next + 1;
  }
  return node;
}

std::optional<TypeSet> Intersect(const std::vector<TypeSet>& sets) {
  if (sets.empty()) return std::nullopt;
  TypeSet result = sets[0];
  for (size_t i = 1; i < sets.size(); ++i) {
    TypeSet next;
    for (const std::string& t : result) {
      if (sets[i].count(t) != 0) next.insert(t);
    }
    result = std::move(next);
  }
  return result;
}

std::optional<TypeSet> SchemaTypes(const Json& schema, const Json& root, int depth) {
  if (!schema.is_object() || depth > kMaxSchemaDepth) return std::nullopt;
  std::vector<TypeSet> constraints;
  if (schema.contains("$ref") && schema["$ref"].is_string()) {
    if (const Json* target = ResolvePointer(root, schema["$ref"].get<std::string>())) {
      if (auto types = SchemaTypes(*target, root, depth + 1)) constraints.push_back(*types);
    }
  }
  if (schema.contains("type")) {
    const Json& type = schema["type"];
    TypeSet set;
    if (type.is_string()) {
      AddType(type.get<std::string>(), &set);
    } else if (type.is_array()) {
      for (const Json& t : type) {
        if (t.is_string()) AddType(t.get<std::string>(), &set);
      }
    }
    if (!set.empty()) constraints.push_back(set);
  }
  const Json* values = nullptr;
  Json const_list;
  if (schema.contains("const")) {
    const_list = Json::array({schema["const"]});
    values = &const_list;
  } else if (schema.contains("enum") && schema["enum"].is_array()) {
    values = &schema["enum"];
  }
  if (values != nullptr && !values->empty()) {
    TypeSet set;
    for (const Json& v : *values) set.insert(JsonTypeOf(v));
    constraints.push_back(set);
  }
  for (const char* keyword : {"anyOf", "oneOf"}) {
    if (!schema.contains(keyword) || !schema[keyword].is_array() || schema[keyword].empty()) {
      continue;
    }
    TypeSet united;
    bool all_known = true;
    for (const Json& branch : schema[keyword]) {
      auto types = SchemaTypes(branch, root, depth + 1);
      if (!types) {
        all_known = false;
        break;
      }
      united.insert(types->begin(), types->end());
    }
    if (all_known) constraints.push_back(united);
  }
  if (schema.contains("allOf") && schema["allOf"].is_array()) {
    for (const Json& branch : schema["allOf"]) {
      if (auto types = SchemaTypes(branch, root, depth + 1)) constraints.push_back(*types);
    }
  }
  if (constraints.empty()) {
    if (schema.contains("properties")) return TypeSet{"object"};
    if (schema.contains("items")) return TypeSet{"array"};
  }
  return Intersect(constraints);
}

std::optional<Json> ParseJson(std::string_view text) {
  Json parsed = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return std::nullopt;
  return parsed;
}

std::string_view TrimAscii(std::string_view s) {
  const size_t start = s.find_first_not_of(internal::kAsciiSpace);
  if (start == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(internal::kAsciiSpace);
  return s.substr(start, end - start + 1);
}

Json AutoValue(std::string_view raw) {
  const std::string_view trimmed = TrimAscii(raw);
  if (auto parsed = ParseJson(trimmed)) return *parsed;
  if (trimmed == "True") return true;
  if (trimmed == "False") return false;
  if (trimmed == "None") return nullptr;
  return std::string(raw);
}

}  // namespace

ArgType ResolveArgumentType(const Json& parameters, std::string_view key) {
  if (!parameters.is_object()) return ArgType::kAuto;
  const Json* schema = &parameters;
  if (schema->contains("$ref") && (*schema)["$ref"].is_string() &&
      !schema->contains("properties")) {
    if (const Json* target = ResolvePointer(parameters, (*schema)["$ref"].get<std::string>())) {
      schema = target;
    }
  }
  if (!schema->contains("properties") || !(*schema)["properties"].is_object())
    return ArgType::kAuto;
  const Json& properties = (*schema)["properties"];
  const std::string key_string(key);
  if (!properties.contains(key_string)) return ArgType::kAuto;
  const std::optional<TypeSet> types = SchemaTypes(properties[key_string], parameters, 0);
  if (!types || types->empty()) return ArgType::kAuto;
  if (*types == TypeSet{"number", "integer"}) return ArgType::kNumber;
  if (types->size() != 1) return ArgType::kAuto;
  const std::string& t = *types->begin();
  if (t == "string") return ArgType::kString;
  if (t == "integer") return ArgType::kInteger;
  if (t == "number") return ArgType::kNumber;
  if (t == "boolean") return ArgType::kBoolean;
  if (t == "object") return ArgType::kObject;
  if (t == "array") return ArgType::kArray;
  return ArgType::kAuto;
}

Json TypeArgumentValue(std::string_view raw, ArgType type) {
  const std::string_view trimmed = TrimAscii(raw);
  switch (type) {
    case ArgType::kInteger:
    case ArgType::kNumber: {
      if (auto parsed = ParseJson(trimmed)) {
        if (parsed->is_number()) return *parsed;
        if (parsed->is_string()) {
          auto inner = ParseJson(TrimAscii(parsed->get<std::string>()));
          if (inner && inner->is_number()) return *inner;
        }
      }
      return AutoValue(raw);
    }
    case ArgType::kBoolean:
      if (trimmed == "true" || trimmed == "True") return true;
      if (trimmed == "false" || trimmed == "False") return false;
      return AutoValue(raw);
    case ArgType::kObject:
    case ArgType::kArray:
    case ArgType::kAuto:
    case ArgType::kString:
      return AutoValue(raw);
  }
  return AutoValue(raw);
}

}  // namespace spark::engine::chat
