// Fuzz body shared by the GLM-4.5 and GLM-4.7 tool-call parser targets: the streamed result
// equals Parse(), deltas are well formed (index order, id and name on the first delta only), and
// every call's arguments are a JSON object when the output is valid UTF-8.
#pragma once

#include <string>
#include <vector>

#include "engine/text/chat/tool_call_parser.h"
#include "engine/text/utf8.h"
#include "tests/engine/text/chat/fuzz/fuzz_util.h"

namespace spark::engine::chat::fuzz {

inline const std::vector<ChatTool>& FuzzTools() {
  static const std::vector<ChatTool> tools = [] {
    auto parsed = ParseChatTools(Json::parse(R"([
      {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                       "unit": {"enum": ["c", "f"]}}}}},
      {"type": "function", "function": {"name": "search", "parameters": {"type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"},
          "ratio": {"type": "number"}, "exact": {"type": "boolean"},
          "filters": {"type": "object"}, "tags": {"type": "array"},
          "cursor": {"type": ["string", "null"]}, "mode": {"$ref": "#/$defs/m"}},
        "$defs": {"m": {"anyOf": [{"type": "integer"}, {"type": "number"}]}}}}}
    ])"));
    return parsed.ok() ? *parsed : std::vector<ChatTool>();
  }();
  return tools;
}

inline ToolCallIdGenerator FuzzIds() {
  auto next = std::make_shared<int>(0);
  return [next] { return "call_" + std::to_string((*next)++); };
}

inline void FuzzToolParser(ToolCallFormat format, const uint8_t* data, size_t size) {
  const FuzzInput in = SplitFuzzInput(data, size);
  const ToolParseResult want = GlmToolParser::Parse(format, in.text, FuzzTools(), FuzzIds());

  GlmToolParser parser(format, FuzzTools(), FuzzIds());
  std::string text;
  std::vector<ParsedToolCall> calls;
  auto add = [&](const ToolParseDelta& d) {
    text += d.text;
    for (const ToolCallDelta& c : d.calls) {
      SPARK_FUZZ_CHECK(c.index >= 0 && static_cast<size_t>(c.index) <= calls.size(),
                       "delta index out of order");
      if (static_cast<size_t>(c.index) == calls.size()) {
        SPARK_FUZZ_CHECK(!c.id.empty() && !c.name.empty(), "first delta lacks id or name");
        calls.push_back({c.id, c.name, ""});
      } else {
        SPARK_FUZZ_CHECK(c.id.empty() && c.name.empty(), "id or name repeated");
      }
      calls[c.index].arguments += c.arguments;
    }
  };
  for (const std::string_view piece : in.pieces) add(parser.Feed(piece));
  add(parser.Finish());

  SPARK_FUZZ_CHECK(text == want.text, "streamed text differs from Parse");
  SPARK_FUZZ_CHECK(calls.size() == want.calls.size(), "streamed call count differs");
  const bool valid_utf8 = text::IsValidUtf8(in.text);
  for (size_t i = 0; i < calls.size(); ++i) {
    SPARK_FUZZ_CHECK(calls[i].id == want.calls[i].id, "id differs");
    SPARK_FUZZ_CHECK(calls[i].name == want.calls[i].name, "name differs");
    SPARK_FUZZ_CHECK(calls[i].arguments == want.calls[i].arguments, "arguments differ");
    if (valid_utf8) {
      const Json args = Json::parse(calls[i].arguments, nullptr, /*allow_exceptions=*/false);
      SPARK_FUZZ_CHECK(args.is_object(), "arguments are not a JSON object: " + calls[i].arguments);
    }
  }
}

}  // namespace spark::engine::chat::fuzz
