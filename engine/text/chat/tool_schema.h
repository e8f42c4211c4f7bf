// Typing of tool-call argument values by the tool's JSON schema, for the GLM tool-call parsers:
// GLM writes every argument value as raw text (<arg_value>北京</arg_value>,
// <arg_value>5</arg_value>), and the schema says whether that text is a string or JSON.
//
// ResolveArgumentType looks the key up in parameters.properties and resolves "type" (a string or
// a list), "$ref" (local "#/..." pointers), "anyOf"/"oneOf" (union of the branches), "allOf"
// (intersection), "enum"/"const" (the types of the allowed values), "properties" (object) and
// "items" (array). One resulting type gives that type ({number, integer} gives number); no
// schema, an unknown key, or several possible types give kAuto.
//
// TypeArgumentValue turns the raw text of a non-string value into JSON:
//   integer/number  the JSON number (a quoted number is unquoted); otherwise as kAuto
//   boolean         true/false (also Python's True/False); otherwise as kAuto
//   object/array    the parsed JSON; otherwise as kAuto
//   auto            the parsed JSON when the (whitespace-trimmed) text is JSON, Python's
//                   True/False/None as true/false/null, else the raw text as a string
// String-typed values are never interpreted: the raw text is the string, even when it looks like
// JSON.
//
// Thread safety: pure functions.
#pragma once

#include <string_view>

#include "engine/text/chat/py_json.h"

namespace spark::engine::chat {

enum class ArgType { kString, kInteger, kNumber, kBoolean, kObject, kArray, kAuto };

// `parameters` is the tool's "parameters" schema (may be null or empty).
ArgType ResolveArgumentType(const Json& parameters, std::string_view key);

// The JSON value of a non-string argument (see above). `type` must not be kString.
Json TypeArgumentValue(std::string_view raw, ArgType type);

}  // namespace spark::engine::chat
